"""What restoration takes in and gives out, per supervisor, and the crash-loop guard."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from daemon.models import (
    PendingQuestion,
    RestorationSource,
    StateRecoveryAction,
    StateValidationResult,
    SupervisorRestorationContext,
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CrashLoopGuard:
    """More than `max_restorations` automatic restorations within `window` parks one."""

    max_restorations: int = 5
    window: timedelta = timedelta(minutes=10)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RestorationInput:
    """Everything loaded for one supervisor.

    `row` is its supervisors row with `conversation_history` (the newest messages, or
    the non-array value an older writer left), `history_length`, and
    `spawned_task_ids` (those of the loaded task rows that are spawned, then the ids
    listed without a task row). The task rows loaded are the awaited and unrecorded
    ones; every one of them for a supervisor whose state is invalid (a fallback needs
    them all).
    """

    row: Mapping[str, Any]
    tasks: Mapping[uuid.UUID, str]  # task rows of this supervisor: id -> status
    spawn_seqs: Mapping[uuid.UUID, int] = dataclasses.field(default_factory=dict)  # their places
    # Checkpoints, newest first: {"snapshot", "message_seq", "task_seq"} (positions NULL
    # in one written before positions: its snapshot holds copies).
    checkpoints: Sequence[Mapping[str, Any]] = ()
    answers: Sequence[Mapping[str, Any]] = ()  # question_answers not yet applied
    source: RestorationSource
    now: datetime
    manual: bool = False
    issues: list[str] | None = None  # validate(row, tasks) when already computed
    history_tail: int = 50  # how many of the newest messages a context carries


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RestorationOutcome:
    supervisor_id: uuid.UUID
    outcome: str  # restored | new (never ran: started, not restored) | blocked | failed
    action: StateRecoveryAction
    validation: StateValidationResult
    context: SupervisorRestorationContext
    redeliver: tuple[PendingQuestion, ...]
    applied_answers: tuple[uuid.UUID, ...]
    write: dict[str, Any]  # the row for apply_restorations (see restoration.sql)
    contract_id: uuid.UUID | None = None  # for the log lines about this supervisor
