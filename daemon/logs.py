"""structlog, configured once: JSON lines by default, a console renderer on a terminal.

Every line carries `event`, `level`, an ISO-8601 UTC `timestamp` and the `daemon_id`.
Logs go to stderr so that CLI output on stdout stays machine-readable; journald takes
both. Secrets (database passwords) are registered here and masked in every value of
every line, exceptions included, just before rendering: on the values themselves, since
a renderer escapes what it prints (JSON turns `"` into `\\"`) and a secret holding such a
character would no longer be found in the rendered line.
"""

from __future__ import annotations

import datetime
import enum
import logging
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any, TextIO, TypeAlias

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

# What `get_logger` returns (and `bind` on it): the filtering logger `configure` makes.
Logger: TypeAlias = FilteringBoundLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_MASK = "***"
# The password part of a URL: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)", re.IGNORECASE
)
# libpq key=value form: password=SECRET
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'[^']*'|\S+)", re.IGNORECASE)

# Values that cannot hold a secret, rendered as they are.
_PLAIN = (
    int, float, type(None), enum.Enum, uuid.UUID, datetime.date, datetime.time,
    datetime.timedelta,
)  # fmt: skip

_secrets: tuple[str, ...] = ()  # longest first, so a longer secret is masked whole
_daemon_id: str | None = None
# event name -> what to call with each line logged under it (see `on_event`).
_listeners: dict[str, Callable[[EventDict], None]] = {}


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears in a log line from now on."""
    global _secrets  # noqa: PLW0603 - set on the rare registration, read on every line
    if value and value not in _secrets:
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def _may_hold_secret(text: str) -> bool:
    # The fast path: most text holds neither a URL, nor the word password, nor a
    # registered secret. Plain `in` tests beat one regular expression here.
    return "://" in text or "password" in text.lower() or any(s in text for s in _secrets)


def holds_secret(text: str) -> bool:
    """Whether `text` contains a registered secret."""
    return any(secret in text for secret in _secrets)


def set_daemon_id(daemon_id: str) -> None:
    global _daemon_id  # noqa: PLW0603 - one process, one daemon id, set once at start
    _daemon_id = daemon_id


def on_event(event: str, listener: Callable[[EventDict], None] | None) -> None:
    """Call `listener` with every line logged as `event` at or above the configured
    level (None removes it): how a metric counts what only a log line reports."""
    if listener is None:
        _listeners.pop(event, None)
    else:
        _listeners[event] = listener


def _notify_listeners(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    if _listeners:  # a dict lookup per line only while someone listens
        listener = _listeners.get(event_dict.get("event", ""))
        if listener is not None:
            listener(event_dict)
    return event_dict


def redact(text: str) -> str:
    """`text` with URL passwords, password=... pairs and registered secrets masked."""
    if not _may_hold_secret(text):
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + (_MASK if m["secret"] else ""), text)
    text = _KV_PASSWORD.sub(lambda m: m["head"] + _MASK, text)
    for secret in _secrets:
        text = text.replace(secret, _MASK)
    return text


def _redact_value(value: Any) -> Any:
    """`value` with every string in it redacted, through dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    # Anything else is printed through str() by the JSON renderer (repr() by the
    # console's): its text is what could hold a secret, so the text is what goes on.
    return redact(str(value))


def _add_daemon_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    if _daemon_id is not None:
        event_dict.setdefault("daemon_id", _daemon_id)
    return event_dict


def _redact_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # One test over all the line's strings at once (a line is a few short strings):
    # cheaper than one per value, and a value that holds a secret holds it in the join.
    strings: list[str] = []
    for value in event_dict.values():
        if type(value) is str:
            strings.append(value)
        elif not isinstance(value, _PLAIN):
            break  # a nested or unusual value: the thorough path
    else:
        if not _may_hold_secret("\0".join(strings)):
            return event_dict
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
    return event_dict


def _dumps(value: Any, **_: Any) -> str:
    # orjson: a restoring daemon writes a line per supervisor, thousands a second.
    return orjson.dumps(value, default=str).decode()


def configure(
    *, log_format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process. Safe to call more than once."""
    out = stream or sys.stderr
    use_console = log_format == "console" or (log_format == "auto" and out.isatty())
    shared: list[Processor] = [
        _notify_listeners,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_daemon_id,
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    # Exceptions are rendered to text first, so that a password inside an exception
    # message is masked too; masking comes last before the renderer.
    processors: list[Processor] = [
        *shared,
        structlog.processors.format_exc_info,
        _redact_values,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Logger:
    """A structlog logger with `bound` values on every line.

    Lazy: it reads the configuration when it first logs, so module-level loggers follow
    `configure()` (and `structlog.testing.capture_logs`) made after import.
    """
    logger: Logger = structlog.get_logger(**bound)
    return logger
