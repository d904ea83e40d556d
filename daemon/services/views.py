"""What people's commands return: immutable records with their JSON form.

The CLI prints them, the web page renders them, the JSON API sends `to_json()`. JSON
is camelCase like every record in daemon.models. Nothing here performs I/O.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from daemon.models import PendingQuestion, SupervisorState, SupervisorTask, camel


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A plain row (a daemon, a journal entry) as camelCase JSON."""
    return {camel(key): _plain(value) for key, value in row.items()}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InboxQuestion:
    """A pending question with what a person needs to answer it."""

    supervisor_id: uuid.UUID
    contract_id: uuid.UUID
    phase: str
    supervisor_state: str
    owner_daemon_id: str | None
    question: PendingQuestion
    # An answer recorded but not applied yet (the owning daemon applies it soon, or
    # at the supervisor's next restoration when no daemon runs).
    answer: str | None = None
    answered_by: str | None = None
    answered_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "supervisorId": str(self.supervisor_id),
            **self.question.to_json(),
            "contractId": str(self.contract_id),
            "phase": self.phase,
            "supervisorState": self.supervisor_state,
            "ownerDaemonId": self.owner_daemon_id,
            "answer": self.answer,
            "answeredBy": self.answered_by,
            "answeredAt": _plain(self.answered_at),
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AnswerReceipt:
    question_id: uuid.UUID
    supervisor_id: uuid.UUID
    answer: str
    answered_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "questionId": str(self.question_id),
            "supervisorId": str(self.supervisor_id),
            "answer": self.answer,
            "answeredBy": self.answered_by,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JournalPage:
    """Journal entries newest first; `older` is the cursor for the page before, if any."""

    entries: tuple[dict[str, Any], ...]
    length: int
    older: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [row_json(entry) for entry in self.entries],
            "length": self.length,
            "older": self.older,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConversationPage:
    """Messages newest first as (position, message), positions counted from 1."""

    messages: tuple[tuple[int, Any], ...]
    length: int
    older: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": [{"position": pos, "message": msg} for pos, msg in self.messages],
            "length": self.length,
            "older": self.older,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorPage:
    """One supervisor as people see it: its state (without the conversation, which is
    paged apart), tasks, pending questions and the newest journal entries."""

    state: SupervisorState
    tasks: tuple[SupervisorTask, ...]
    questions: tuple[InboxQuestion, ...]
    journal: JournalPage
    conversation_length: int

    def to_json(self) -> dict[str, Any]:
        state = self.state.to_json()
        del state["conversationHistory"]  # paged apart: it can be long
        return {
            **state,
            "conversationLength": self.conversation_length,
            "tasks": [task.to_json() for task in self.tasks],
            "questions": [question.to_json() for question in self.questions],
            "journal": self.journal.to_json(),
        }
