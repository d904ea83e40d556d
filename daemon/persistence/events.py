"""Save-point events: what a running supervisor asks the persistence queue to write.

An event is a small slotted object: its own id, the supervisor it belongs to, a kind,
and a dict of data (which is also the journal payload). Constructors validate at the
edge (daemon.limits: types, ranges, sizes in bytes), so that a bad value is refused with
an InvalidInputError before it is queued, and a constraint violation in the database is
the exception, not the rule.
Heartbeat and progress are not critical: they are acknowledged at once and coalesced;
every other kind is acknowledged only once committed.
"""

from __future__ import annotations

import enum
import itertools
import os
import uuid
from collections.abc import Sequence
from typing import Any

from daemon import limits
from daemon.errors import InvalidInputError
from daemon.models import PHASES, PendingQuestion, SupervisorStateKind


class EventKind(enum.StrEnum):
    TASK_SPAWNED = "task_spawned"
    QUESTION_ASKED = "question_asked"
    QUESTION_ANSWERED = "question_answered"
    PHASE_CHANGED = "phase_changed"
    ACTIVITY_REPORTED = "activity_reported"
    STATE_CHANGED = "state_changed"
    MESSAGE_APPENDED = "message_appended"
    TASKS_COLLECTED = "tasks_collected"
    HEARTBEAT = "heartbeat"
    PROGRESS_REPORTED = "progress_reported"


COALESCED_KINDS = frozenset({EventKind.HEARTBEAT, EventKind.PROGRESS_REPORTED})
# A state given as a member or as its text -> its text (a dict lookup: cheaper than
# building the enum member on every state change).
_STATE_VALUES: dict[str, str] = {str(k.value): str(k.value) for k in SupervisorStateKind}
_STATES_WITH_REASON = frozenset(
    {SupervisorStateKind.FAILED.value, SupervisorStateKind.BLOCKED.value}
)
_PHASES = frozenset(PHASES)
_MAX_TEXT = limits.MAX_TEXT_BYTES

# Event ids are UUID strings: 80 random bits chosen once per process, then a 48-bit
# counter. Unique across processes with overwhelming probability, and about ten times
# cheaper than str(uuid4()) per event, which matters at 100,000 events per second.
_PREFIX_HEX = os.urandom(10).hex()
_ID_PREFIX = f"{_PREFIX_HEX[:8]}-{_PREFIX_HEX[8:12]}-{_PREFIX_HEX[12:16]}-{_PREFIX_HEX[16:20]}-"
_ids = itertools.count(1)
# The counter's 12 hex digits: the high 9 change once per 4,096 ids and are formatted
# then; the low 3 come from a table. Half the cost of formatting all 12 every time.
_LOW_HEX = tuple(f"{n:03x}" for n in range(4096))
_block: tuple[int, str] = (0, f"{_ID_PREFIX}{0:09x}")


def new_event_id() -> str:
    global _block  # noqa: PLW0603 - a cache; a tuple, so a reader never sees it half made
    n = next(_ids)
    high, text = _block
    if high != n >> 12:
        text = f"{_ID_PREFIX}{n >> 12:09x}"
        _block = (n >> 12, text)
    return text + _LOW_HEX[n & 0xFFF]


# Task and question ids made by the daemon come from the same cheap generator.
new_id = new_event_id


class Event:
    """One save point. `data` is the journal payload (JSON-serialisable)."""

    __slots__ = ("critical", "data", "epoch", "id", "kind", "supervisor_id")

    def __init__(
        self,
        kind: EventKind,
        supervisor_id: uuid.UUID,
        data: dict[str, Any],
        *,
        epoch: int | None = None,
    ) -> None:
        critical = kind not in COALESCED_KINDS
        # Heartbeat and progress are never journaled: they need no id.
        self.id = new_event_id() if critical else ""
        self.kind = kind
        # One exact type for every id (asyncpg hands out its own UUID class): the
        # queue groups events by supervisor id, and mixed types must not split a group.
        self.supervisor_id = (
            supervisor_id if type(supervisor_id) is uuid.UUID else uuid.UUID(str(supervisor_id))
        )
        self.data = data
        self.epoch = epoch
        self.critical = critical

    def __repr__(self) -> str:
        return f"Event({self.kind.value}, supervisor={self.supervisor_id}, id={self.id})"


def _text(name: str, value: str | None, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise InvalidInputError(f"{name} is required")
        return None
    return limits.text(name, value)


def _progress(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidInputError(f"progress must be an integer from 0 to 100, not {value!r}")
    return value


def task_spawned(
    supervisor_id: uuid.UUID,
    task_id: uuid.UUID | str,
    *,
    spec: Any = None,
    awaited: bool = True,
    epoch: int | None = None,
) -> Event:
    """A task was spawned: its row is created and its id recorded (and awaited). A spec
    that names a command must be one the runner can run (daemon.limits.command_spec)."""
    return Event(
        EventKind.TASK_SPAWNED,
        supervisor_id,
        {"taskId": task_id, "spec": limits.task_spec(spec), "awaited": bool(awaited)},
        epoch=epoch,
    )


def question_asked(
    supervisor_id: uuid.UUID, question: PendingQuestion, *, epoch: int | None = None
) -> Event:
    limits.question(question)
    return Event(EventKind.QUESTION_ASKED, supervisor_id, question.to_json(), epoch=epoch)


def question_answered(
    supervisor_id: uuid.UUID,
    question_id: uuid.UUID,
    answer: str,
    *,
    answered_by: str | None = None,
    epoch: int | None = None,
) -> Event:
    _text("answer", answer, required=True)
    return Event(
        EventKind.QUESTION_ANSWERED,
        supervisor_id,
        {"questionId": str(question_id), "answer": answer, "answeredBy": answered_by},
        epoch=epoch,
    )


def phase_changed(supervisor_id: uuid.UUID, phase: str, *, epoch: int | None = None) -> Event:
    if phase not in _PHASES:
        raise InvalidInputError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
    return Event(EventKind.PHASE_CHANGED, supervisor_id, {"phase": phase}, epoch=epoch)


def activity_reported(
    supervisor_id: uuid.UUID, activity: str, *, epoch: int | None = None
) -> Event:
    # The common case inline: short ASCII text (its size in bytes is its length).
    if (
        type(activity) is not str
        or not activity.isascii()
        or len(activity) > _MAX_TEXT
        or "\x00" in activity
    ):
        _text("activity", activity, required=True)
    return Event(EventKind.ACTIVITY_REPORTED, supervisor_id, {"activity": activity}, epoch=epoch)


def state_changed(
    supervisor_id: uuid.UUID,
    state: SupervisorStateKind | str,
    *,
    activity: str | None = None,
    error_message: str | None = None,
    progress: int | None = None,
    epoch: int | None = None,
) -> Event:
    """A state change; `failed` and `blocked` need an error message saying why."""
    value = _STATE_VALUES.get(state)
    if value is None:
        raise InvalidInputError(f"unknown state {state!r}")
    if value in _STATES_WITH_REASON and not error_message:
        raise InvalidInputError(f"state {value} needs an error message")
    data: dict[str, Any] = {"state": value, "errorMessage": _text("errorMessage", error_message)}
    if activity is not None:
        data["activity"] = _text("activity", activity)
    if progress is not None:
        data["progress"] = _progress(progress)
    return Event(EventKind.STATE_CHANGED, supervisor_id, data, epoch=epoch)


def completed(supervisor_id: uuid.UUID, *, epoch: int | None = None) -> Event:
    return state_changed(supervisor_id, SupervisorStateKind.COMPLETED, progress=100, epoch=epoch)


def failed(supervisor_id: uuid.UUID, error_message: str, *, epoch: int | None = None) -> Event:
    return state_changed(
        supervisor_id, SupervisorStateKind.FAILED, error_message=error_message, epoch=epoch
    )


def message_appended(supervisor_id: uuid.UUID, message: Any, *, epoch: int | None = None) -> Event:
    """One message appended to the conversation history."""
    return Event(
        EventKind.MESSAGE_APPENDED,
        supervisor_id,
        {"message": limits.json_value("message", message, limit=limits.MAX_MESSAGE_BYTES)},
        epoch=epoch,
    )


def tasks_collected(
    supervisor_id: uuid.UUID, task_ids: Sequence[uuid.UUID | str], *, epoch: int | None = None
) -> Event:
    """The supervisor stopped waiting for these (finished) tasks."""
    return Event(
        EventKind.TASKS_COLLECTED,
        supervisor_id,
        {"taskIds": [str(t) for t in task_ids]},
        epoch=epoch,
    )


def heartbeat(supervisor_id: uuid.UUID, *, epoch: int | None = None) -> Event:
    return Event(EventKind.HEARTBEAT, supervisor_id, {}, epoch=epoch)


def progress_reported(
    supervisor_id: uuid.UUID,
    progress: int,
    *,
    activity: str | None = None,
    epoch: int | None = None,
) -> Event:
    data: dict[str, Any] = {"progress": _progress(progress)}
    if activity is not None:
        data["activity"] = _text("activity", activity)
    return Event(EventKind.PROGRESS_REPORTED, supervisor_id, data, epoch=epoch)
