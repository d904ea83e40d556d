"""Records and enums: immutable values that cross module boundaries.

Every record is a frozen dataclass; a change makes a new record (`evolve`). JSON on the
wire is camelCase, like the original system's API; `to_json` / `from_json` convert, and
`from_row` builds a record from a database row. Nothing here performs I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

from daemon.jsonvalues import JsonTail

if TYPE_CHECKING:
    import asyncpg

    Row = Mapping[str, Any] | asyncpg.Record

T = TypeVar("T")


class SupervisorStateKind(enum.StrEnum):
    INITIALIZING = "initializing"
    IDLE = "idle"
    WORKING = "working"
    WAITING_FOR_USER = "waiting_for_user"
    WAITING_FOR_TASKS = "waiting_for_tasks"
    COMPLETED = "completed"
    FAILED = "failed"
    BLOCKED = "blocked"


TERMINAL_STATES = frozenset({SupervisorStateKind.COMPLETED, SupervisorStateKind.FAILED})


class RestorationSource(enum.StrEnum):
    DAEMON_RESTART = "daemon_restart"
    TASK_REASSIGNMENT = "task_reassignment"
    MANUAL = "manual"


class QuestionType(enum.StrEnum):
    GENERAL = "general"
    PHASE_CONFIRMATION = "phase_confirmation"
    CONTRACT_COMPLETE = "contract_complete"


class StateRecoveryAction(enum.StrEnum):
    PROCEED = "proceed"
    USE_CHECKPOINT = "use_checkpoint"
    START_FRESH = "start_fresh"
    MANUAL_INTERVENTION = "manual_intervention"


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_TASK_STATES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


# The phases a contract moves through, in order. A phase outside this list is invalid
# state (restoration falls back to a checkpoint).
PHASES = ("research", "plan", "implement", "review", "done")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _Json:
    """camelCase JSON conversion for frozen dataclasses, driven by their type hints."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return {
            camel(field.name): _encode(getattr(self, field.name))
            for field in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return _from_json(cls, data)

    def evolve(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


J = TypeVar("J", bound="_Json")


def _from_json(cls: type[J], data: Mapping[str, Any]) -> J:
    """The strict, hint-driven decoder behind every record's `from_json`."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} must be a JSON object, not {type(data).__name__}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = camel(field.name)
        if key not in data:
            if field.default is dataclasses.MISSING and (
                field.default_factory is dataclasses.MISSING
            ):
                raise ValueError(f"{cls.__name__}: missing {key!r}")
            continue
        try:
            values[field.name] = _decode(hints[field.name], data[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cls.__name__}.{key}: {exc}") from None
    return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    # Resolving string annotations is slow; a class's hints never change.
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _encode(value: Any) -> Any:
    if isinstance(value, _Json):
        return value.to_json()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list | JsonTail):
        return [_encode(item) for item in value]
    return value


def _decode(hint: Any, value: Any) -> Any:  # noqa: PLR0911, PLR0912 - one branch per type
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _decode(inner, value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError("must be an array")
        (item_hint, _) = typing.get_args(hint)
        return tuple(_decode(item_hint, item) for item in value)
    if origin is Sequence:  # read from JSON as a tuple
        if not isinstance(value, list | tuple):
            raise ValueError("must be an array")
        (item_hint,) = typing.get_args(hint)
        return tuple(_decode(item_hint, item) for item in value)
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, _Json):
        return hint.from_json(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if hint is uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        if not isinstance(value, str):
            raise ValueError("must be a UUID string")
        return uuid.UUID(value)
    if hint is datetime:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("must be an ISO-8601 string")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("must carry a time zone")
        return parsed
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("must be a boolean")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise TypeError(f"no JSON decoder for {hint!r}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PendingQuestion(_Json):
    """A question a supervisor asked a person and still waits on."""

    id: uuid.UUID
    question: str
    choices: tuple[str, ...] = ()
    context: str | None = None
    question_type: QuestionType = QuestionType.GENERAL
    asked_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        # Written out by hand (restoring 10,000 supervisors parses their questions);
        # anything unusual goes through the generic, strict decoder for its message.
        try:
            choices = data.get("choices", ())
            asked_at = data["askedAt"]
            question_type = data.get("questionType", "general")
            if (
                isinstance(data["question"], str)
                and isinstance(choices, list | tuple)
                and all(isinstance(c, str) for c in choices)
                and isinstance(asked_at, str)
                and isinstance(data.get("context"), str | None)
            ):
                when = datetime.fromisoformat(asked_at)
                if when.tzinfo is not None:
                    return cls(
                        id=uuid.UUID(data["id"]), question=data["question"],
                        choices=tuple(choices), context=data.get("context"),
                        question_type=QuestionType(question_type), asked_at=when,
                    )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        # (Not super(): slots=True dataclasses are rebuilt, which breaks its closure.)
        return _from_json(cls, data)

    def to_json(self) -> dict[str, Any]:
        # Written out by hand: questions are encoded on every ask, in the hot path.
        return {
            "id": str(self.id),
            "question": self.question,
            "choices": list(self.choices),
            "context": self.context,
            "questionType": self.question_type.value,
            "askedAt": self.asked_at.isoformat(),
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorState(_Json):
    """One row of supervisor_states, decoded and typed.

    `conversation_history` and `spawned_task_ids` hold what was loaded with the state:
    everything when it is read whole (`Store.get_supervisor`, through the
    supervisor_states view), nothing in a running supervisor or a list, which carry
    only the lengths (`history_length`, `spawned_task_count`). Those are always the
    whole: at least the length of what is held.
    """

    id: uuid.UUID
    contract_id: uuid.UUID
    task_id: uuid.UUID
    conversation_history: tuple[Any, ...] = ()
    pending_task_ids: tuple[uuid.UUID, ...] = ()
    phase: str
    last_activity: datetime
    created_at: datetime
    updated_at: datetime
    state: SupervisorStateKind = SupervisorStateKind.INITIALIZING
    current_activity: str | None = None
    progress: int = 0
    error_message: str | None = None
    spawned_task_ids: tuple[uuid.UUID, ...] = ()
    pending_questions: tuple[PendingQuestion, ...] = ()
    restoration_count: int = 0
    last_restored_at: datetime | None = None
    restoration_source: RestorationSource | None = None
    # Daemon-side data: who runs it, under which fencing epoch, with which agent.
    owner_daemon_id: str | None = None
    owner_epoch: int = 0
    agent: str | None = None
    # How many messages its history holds and how many tasks it spawned, in all.
    history_length: int = 0
    spawned_task_count: int = 0

    def __post_init__(self) -> None:
        # A state built with its whole history (a test, a full save) counts it.
        if self.history_length < len(self.conversation_history):
            object.__setattr__(self, "history_length", len(self.conversation_history))
        if self.spawned_task_count < len(self.spawned_task_ids):
            object.__setattr__(self, "spawned_task_count", len(self.spawned_task_ids))

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """Decode a supervisor_states row; raises ValueError naming the bad column."""
        data = {camel(key): row[key] for key in _STATE_COLUMNS if key in row}
        return cls.from_json(data)


_STATE_COLUMNS = tuple(field.name for field in dataclasses.fields(SupervisorState))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StateValidationResult(_Json):
    """What validation found in a stored state, and what restoration should do."""

    is_valid: bool
    issues: tuple[str, ...] = ()
    recovery_action: StateRecoveryAction


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorRestorationContext(_Json):
    """The outcome of restoring one supervisor, handed to its agent."""

    success: bool
    previous_state: SupervisorStateKind | None = None
    # The newest messages (at most SUPERVISOR_DAEMON_HISTORY_TAIL), oldest first, and the
    # length of the whole history; `read_history` pages the rest. (A JsonTail when
    # restoration loaded them: decoded when first read.)
    conversation_history: Sequence[Any] = ()
    history_length: int = 0
    pending_questions: tuple[PendingQuestion, ...] = ()
    awaited_task_ids: tuple[uuid.UUID, ...] = ()
    spawned_task_count: int = 0
    restoration_count: int = 0
    restoration_context_message: str = ""
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HistoryMessage(_Json):
    """One message of a supervisor's conversation, with its place (1, 2, ...)."""

    seq: int
    message: Any
    created_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> Self:
        return cls(seq=row["seq"], message=row["message"], created_at=row["created_at"])


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorTask(_Json):
    """A task a supervisor spawned."""

    id: uuid.UUID
    supervisor_id: uuid.UUID
    status: TaskStatus = TaskStatus.PENDING
    spec: Any = None
    result: Any = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> Self:
        return cls.from_json({camel(key): row[key] for key in row.keys()})  # noqa: SIM118
