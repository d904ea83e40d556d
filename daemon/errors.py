"""The daemon's own small exception family.

Driver and OS errors are translated here, at the boundary, into two kinds that the rest
of the code can act on without knowing asyncpg: transient (retry later, the event waits)
and permanent (this operation is wrong and will stay wrong). Nothing above the store
ever catches an asyncpg exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

EX_UNAVAILABLE = 69  # sysexits.h: a service is unavailable (the database, for now)
EX_CONFIG = 78  # sysexits.h: configuration error; systemd does not restart on it
EX_SOFTWARE = 70  # sysexits.h: internal software error (a background job crashed)


class DaemonError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(DaemonError):
    """Settings are missing, malformed, or point at something unusable."""


class DatabaseUnavailableError(DaemonError):
    """The database cannot be reached now (refused, timed out, starting up): unlike a
    configuration error, trying again later can help."""


class DatabaseError(DaemonError):
    """A database operation failed."""


class TransientDatabaseError(DatabaseError):
    """Worth retrying: the connection dropped, the server restarts, a lock conflict."""


class PermanentDatabaseError(DatabaseError):
    """Retrying cannot help: a constraint, a type, a bad value."""


class NotFoundError(DaemonError):
    """The named supervisor, task or question does not exist."""


class ConflictError(DaemonError):
    """The operation contradicts what is already recorded (answering twice, ...)."""


class InvalidInputError(DaemonError, ValueError):
    """A request or value refused at the boundary (wrong type, out of range, too large);
    the message says which field and why. Nothing was recorded."""


class BadChoiceError(DaemonError):
    """An answer that is not among the question's choices (nor the number of one)."""

    def __init__(self, message: str, choices: tuple[str, ...]) -> None:
        super().__init__(message)
        self.choices = choices


class AmbiguousIdError(DaemonError):
    """A typed id prefix that names more than one supervisor, question or task."""

    def __init__(self, message: str, candidates: tuple[str, ...]) -> None:
        super().__init__(message)
        self.candidates = candidates


class DaemonIdInUseError(ConfigError):
    """Another running process holds this daemon id: two processes must never share
    one (they would share a lease and its supervisors). A configuration error: exit 78."""


class DaemonCrashedError(DaemonError):
    """A background job of the running daemon failed; the daemon stops."""


class MigrationError(DaemonError):
    """The database schema cannot be brought to what this code expects."""


# SQLSTATE classes and codes that mean "try again": connection exceptions (08),
# insufficient resources such as disk full, out of memory or too many connections
# (53000-53300), system and I/O errors (58), a query cancelled or the server shutting
# down or starting (57014, 57P01-57P05), a read-only transaction after a failover to a
# standby (25006), serialization failure and deadlock (40001, 40P01), and a lock wait
# that timed out (55P03). Each is a state of the server, not of the event: retrying
# waits for an operator or a failover instead of refusing every event meanwhile.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "58")
_TRANSIENT_SQLSTATES = frozenset({
    "53000", "53100", "53200", "53300", "57014", "57P01", "57P02", "57P03", "57P05",
    "25006", "40001", "40P01", "55P03",
})  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is a failure that a later retry may not meet."""
    if isinstance(exc, TransientDatabaseError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES) or (
            sqlstate in _TRANSIENT_SQLSTATES
        )
    # A value the driver cannot encode or a client setting that cannot work is wrong now
    # and at every retry: asyncpg raises those as InterfaceErrors that are also
    # ValueErrors (its client-side DataError, ClientConfigurationError).
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return False
    # A closed or broken connection surfaces as InterfaceError, an OS-level error, or
    # (when the server cut it mid-operation) asyncpg's InternalClientError.
    return isinstance(
        exc,
        asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | ConnectionError
        | OSError
        | TimeoutError,
    ) and not isinstance(exc, UNSUPPORTED)


# Features one side lacks: no retry adds them.
UNSUPPORTED = (
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)


def translate(exc: BaseException) -> DatabaseError:
    """The daemon's error for a driver or OS error."""
    if isinstance(exc, DatabaseError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if is_transient(exc):
        return TransientDatabaseError(message)
    return PermanentDatabaseError(message)


@contextlib.contextmanager
def map_db_errors() -> Iterator[None]:
    """Re-raise asyncpg and OS errors as TransientDatabaseError / PermanentDatabaseError."""
    try:
        yield
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    ) as exc:
        raise translate(exc) from exc
