"""Validating a stored supervisor state (pure): every problem named, so that
restoration can decide (daemon/restoration/plan.py) and people can read why.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from daemon.jsonvalues import JsonTail, issue_of
from daemon.models import (
    PHASES,
    PendingQuestion,
    SupervisorStateKind,
    TaskStatus,
)

STATES = frozenset(SupervisorStateKind)
_PHASES = frozenset(PHASES)
LIVE = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})
_NEEDS_ERROR = frozenset({SupervisorStateKind.FAILED, SupervisorStateKind.BLOCKED})
_JSON_COLUMNS = ("conversation_history", "pending_questions")


def uuid_list(value: Any, name: str, issues: list[str]) -> list[uuid.UUID]:
    if not isinstance(value, list | tuple):
        issues.append(f"{name} is not an array")
        return []
    out: list[uuid.UUID] = []
    for item in value:
        try:
            out.append(item if isinstance(item, uuid.UUID) else uuid.UUID(str(item)))
        except ValueError:
            issues.append(f"{name} holds {item!r}, not a task id")
    return out


def _questions(value: Any, issues: list[str]) -> list[PendingQuestion]:
    if not isinstance(value, list):
        issues.append(f"pending_questions is not a JSON array ({type(value).__name__})")
        return []
    parsed = []
    for n, item in enumerate(value):
        try:
            parsed.append(PendingQuestion.from_json(item))
        except (ValueError, TypeError) as exc:
            issues.append(f"pending question {n} does not parse: {exc}")
    return parsed


def unreadable(row: Mapping[str, Any]) -> list[str]:
    """The JSON columns of a row the decoder refused, each with what it refused."""
    return [
        f"{column} holds {issue}"
        for column in _JSON_COLUMNS
        if (issue := issue_of(row.get(column))) is not None
    ]


def validate(row: Mapping[str, Any], tasks: Mapping[uuid.UUID, str]) -> list[str]:
    """Every problem with a stored state, named; empty when the state is valid."""
    issues = unreadable(row)
    state = row.get("state")
    if state not in STATES:
        issues.append(f"unknown state {state!r}")
    phase = row.get("phase")
    if phase not in _PHASES:
        issues.append(f"unknown phase {phase!r}")
    progress = row.get("progress")
    if isinstance(progress, bool) or not isinstance(progress, int) or not 0 <= progress <= 100:
        issues.append(f"progress {progress!r} is outside 0-100")
    if state in _NEEDS_ERROR and not row.get("error_message"):
        issues.append(f"state {state} has no error message")
    questions = _questions(row.get("pending_questions"), issues)
    if state == SupervisorStateKind.WAITING_FOR_USER and not questions:
        issues.append("waiting_for_user with no pending question")
    if not isinstance(row.get("conversation_history"), list | JsonTail):
        issues.append("conversation_history is not a JSON array")
    spawned = uuid_list(row.get("spawned_task_ids"), "spawned_task_ids", issues)
    awaited = uuid_list(row.get("pending_task_ids"), "pending_task_ids", issues)
    spawned_set = set(spawned)
    not_spawned = [t for t in awaited if t not in spawned_set]
    if not_spawned:
        issues.append(f"awaited tasks not spawned: {', '.join(map(str, not_spawned[:5]))}")
    missing = [t for t in spawned if t not in tasks]
    if missing:
        issues.append(f"spawned tasks that do not exist: {', '.join(map(str, missing[:5]))}")
    return issues


# -- the decision ---------------------------------------------------------------------
