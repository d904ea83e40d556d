"""What an agent or a task spec may send: the limits, and the checks at the boundary.

Every value an agent hands the daemon (in process through the Supervisor API, or as a
JSON line from a command agent) is checked here before anything is recorded, so a bad
request fails alone with an InvalidInputError naming the field and the limit; it never
reaches the persistence queue, the task runner or PostgreSQL. The checks are pure and
cheap: they run on the hot path of every save point.

Sizes are bytes of UTF-8, as PostgreSQL stores text and as its NOTIFY counts a payload,
never characters: a character takes one to four bytes depending on its script. Text
must also be storable at all: PostgreSQL's text and jsonb cannot hold the NUL character,
and a lone surrogate has no UTF-8 encoding.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Any

import orjson

from daemon.errors import InvalidInputError
from daemon.models import PendingQuestion, QuestionType

MAX_TEXT_BYTES = 64 * 1024  # a question, its context, an activity, an error message, an answer
MAX_CHOICES = 50  # choices of one question
MAX_CHOICE_BYTES = 4 * 1024  # one choice
MAX_MESSAGE_BYTES = 256 * 1024  # one conversation message, encoded as JSON
MAX_SPEC_BYTES = 64 * 1024  # one task spec, encoded as JSON
MAX_COMMAND_BYTES = 32 * 1024  # a command task's shell command (Linux allows 128 KiB per argument)
MAX_DEPTH = 64  # nesting of arrays and objects in a message or a spec
MAX_TASK_TIMEOUT_S = 7 * 24 * 3600  # a command task's timeoutS
MAX_TASK_IDS = 10_000  # task ids named in one wait_for_tasks

_QUESTION_TYPES = ", ".join(t.value for t in QuestionType)


def _shown(value: Any) -> str:
    """A short rendering of a refused value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def utf8_size(name: str, value: str) -> int:
    """The size of `value` in bytes of UTF-8; refused when it has no UTF-8 encoding."""
    if value.isascii():  # a flag CPython keeps: no scan
        return len(value)
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"{name} is not valid Unicode text (it holds a lone surrogate)"
        ) from None


def text(name: str, value: Any, *, limit: int = MAX_TEXT_BYTES) -> str:
    """`value` when it is a string PostgreSQL can store, of at most `limit` bytes."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, not {type(value).__name__}")
    size = utf8_size(name, value)
    if size > limit:
        raise InvalidInputError(f"{name} is {size:,} bytes of UTF-8; at most {limit:,} are allowed")
    if "\x00" in value:
        raise _nul(name)
    return value


def optional_text(name: str, value: Any, *, limit: int = MAX_TEXT_BYTES) -> str | None:
    return None if value is None else text(name, value, limit=limit)


def _nonempty(name: str, value: str) -> str:
    if not value.strip():
        raise InvalidInputError(f"{name} is empty")
    return value


def question_type(value: Any) -> QuestionType:
    try:
        return QuestionType(value)
    except ValueError:
        raise InvalidInputError(
            f"unknown questionType {_shown(value)}; types are {_QUESTION_TYPES}"
        ) from None


def choices(value: Any) -> tuple[str, ...]:
    """A question's choices: a list of at most MAX_CHOICES non-empty strings."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InvalidInputError(f"choices must be a list of strings, not {type(value).__name__}")
    if len(value) > MAX_CHOICES:
        raise InvalidInputError(
            f"choices has {len(value)} entries; at most {MAX_CHOICES} are allowed"
        )
    for n, choice in enumerate(value):
        _nonempty(f"choices[{n}]", text(f"choices[{n}]", choice, limit=MAX_CHOICE_BYTES))
    return tuple(value)


def question(asked: PendingQuestion) -> PendingQuestion:
    """A question as an agent asks it: its text, choices, context and type."""
    _nonempty("question", text("question", asked.question))
    choices(asked.choices)
    optional_text("context", asked.context)
    question_type(asked.question_type)
    return asked


def json_value(name: str, value: Any, *, limit: int) -> Any:
    """`value` when PostgreSQL can store it as jsonb and it is at most `limit` bytes as
    JSON: arrays and objects nested at most MAX_DEPTH deep, finite numbers, no NUL."""
    _walk(name, value)
    try:
        size = len(orjson.dumps(value))
    except TypeError as exc:
        raise InvalidInputError(f"{name} is not JSON-serialisable: {exc}") from None
    if size > limit:
        raise InvalidInputError(f"{name} is {size:,} bytes of JSON; at most {limit:,} are allowed")
    return value


def _nul(name: str) -> InvalidInputError:
    return InvalidInputError(f"{name} holds a NUL character, which PostgreSQL cannot store")


def _scalar(name: str, value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise _nul(name)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{name} holds {value!r}, which JSON cannot carry")


def _walk(name: str, value: Any, depth: int = 0) -> None:
    """Refuse what orjson would write silently (NaN and infinity as null), what
    PostgreSQL would refuse (NUL), and nesting deeper than MAX_DEPTH. Recursive (the
    depth bounds it): about four times faster than an explicit stack, which matters on
    every appended message. Strings and integers, most of a message, are checked inline."""
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and "\x00" in key:
                raise _nul(name)
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        _scalar(name, value)
        return
    if depth >= MAX_DEPTH:
        raise InvalidInputError(
            f"{name} is nested too deep: more than {MAX_DEPTH} levels of arrays and objects"
        )
    for item in items:
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                raise _nul(name)
        elif kind is not int and kind is not bool and item is not None:
            _walk(name, item, depth + 1)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CommandSpec:
    """A command task, as the runner runs it (docs/agent-protocol.md, `spawn_task`)."""

    command: str
    timeout_s: float | None = None  # None: the daemon's default (SUPERVISOR_DAEMON_TASK_TIMEOUT_S)
    idempotent: bool = False


def command_spec(spec: Any) -> CommandSpec | None:
    """The command task `spec` describes; None when it is not one (no "command": a task
    finished from outside). InvalidInputError when it names a command the runner could
    not run as written."""
    if not isinstance(spec, dict) or "command" not in spec:
        return None
    command = _nonempty(
        "spec.command", text("spec.command", spec["command"], limit=MAX_COMMAND_BYTES)
    )
    timeout = spec.get("timeoutS")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidInputError(
                f"spec.timeoutS must be a number of seconds, not {_shown(timeout)}"
            )
        # Compared, not converted: an integer too large for a float is refused too.
        if not 0 < timeout <= MAX_TASK_TIMEOUT_S:
            raise InvalidInputError(
                f"spec.timeoutS must be more than 0 and at most {MAX_TASK_TIMEOUT_S} seconds,"
                f" not {_shown(timeout)}"
            )
    idempotent = spec.get("idempotent")
    if idempotent is not None and not isinstance(idempotent, bool):
        raise InvalidInputError(f"spec.idempotent must be true or false, not {_shown(idempotent)}")
    return CommandSpec(
        command=command,
        timeout_s=None if timeout is None else float(timeout),
        idempotent=bool(idempotent),
    )


def task_spec(spec: Any) -> Any:
    """A spec an agent spawns a task with: any JSON value within the limits, and a valid
    command task when it names a command."""
    command_spec(spec)  # first: its messages name the field
    json_value("spec", spec, limit=MAX_SPEC_BYTES)
    return spec


def task_ids(value: Any) -> list[uuid.UUID]:
    """Task ids named in one request: at most MAX_TASK_IDS UUIDs."""
    if not isinstance(value, list | tuple):
        raise InvalidInputError(f"taskIds must be a list of task ids, not {type(value).__name__}")
    if len(value) > MAX_TASK_IDS:
        raise InvalidInputError(
            f"taskIds has {len(value):,} entries; at most {MAX_TASK_IDS:,} are allowed"
        )
    ids = []
    for item in value:
        try:
            ids.append(item if isinstance(item, uuid.UUID) else uuid.UUID(str(item)))
        except ValueError:
            raise InvalidInputError(f"taskIds holds {_shown(item)}, not a task id") from None
    return ids
