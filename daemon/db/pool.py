"""asyncpg pools and connections, with the codecs every caller expects.

JSONB comes and goes as Python values; a stored value the fast decoder refuses comes
back marked, never as an error that would fail the whole statement (daemon.jsonvalues).
Connection failures become the daemon's own errors with the password masked, since
asyncpg sometimes echoes the DSN.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import anyio
import asyncpg
import asyncpg.pool
import orjson

from daemon import jsonvalues
from daemon.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    TransientDatabaseError,
    map_db_errors,
)
from daemon.logs import redact

# What the store and the runner accept: a plain connection or one borrowed from a pool.
# (A string: asyncpg's classes are generic only in its stubs.)
AnyConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"
PoolConnection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[Any]"


def _encode_json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


# A flush of a few thousand events is a message of about a megabyte. With the usual
# socket send buffer (208 KiB) only its first part goes out at once; the rest waits for
# the event loop to find the socket writable again, which can take tens of milliseconds
# while the loop wakes thousands of acknowledged submitters, and the server sits idle
# meanwhile. The kernel caps the request at net.core.wmem_max.
SEND_BUFFER_BYTES = 4 * 1024 * 1024


def widen_send_buffer(conn: asyncpg.Connection[Any]) -> None:
    """Let a whole batch message fit in the connection's socket send buffer."""
    # asyncpg exposes no socket; its transport (an attribute it has long had) does.
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


async def init_connection(conn: asyncpg.Connection[Any]) -> None:
    widen_send_buffer(conn)
    # orjson: decoding conversation histories is most of the work of loading states. Its
    # refusals (1e400 stored by another tool) fall back to a slower, marked decode.
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name, encoder=_encode_json, decoder=jsonvalues.decode, schema="pg_catalog"
        )


def describe(dsn: str) -> str:
    """Where a DSN points, without credentials: host:port/dbname or the socket dir."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if not host:
        for pair in parts.query.split("&"):
            if pair.startswith("host="):
                host = pair[5:]
    port = f":{parts.port}" if parts.port else ""
    database = parts.path.lstrip("/") or "postgres"
    return f"{host}{port}/{database}"


# Session settings every connection of the daemon asks for. synchronous_commit: an
# acknowledged event is a committed one, flushed to disk; a server (or database, or
# role) configured with synchronous_commit = off would otherwise acknowledge commits it
# can still lose in a crash. `on` also waits for synchronous standbys where there are.
# Given at connection start, so a pool's RESET ALL keeps it.
SERVER_SETTINGS: dict[str, str] = {"synchronous_commit": "on"}


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, connect_timeout: float = 10.0
) -> asyncpg.Pool[Any]:
    """Open a pool. A server that cannot be reached now (refused, timed out, starting)
    is a DatabaseUnavailableError; a malformed URL or a refusal that will not change
    (bad password, no such database) is a ConfigError (exit 78)."""
    with _connect_errors(dsn):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            init=init_connection,
            command_timeout=None,
            server_settings=SERVER_SETTINGS,
        )
    if pool is None:  # asyncpg types it Optional; it never is after awaiting
        raise ConfigError(f"cannot open a pool to {describe(dsn)}")
    return pool


async def connect(dsn: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection[Any]:
    """One connection with the standard codecs (migrations, LISTEN, the CLI)."""
    with _connect_errors(dsn):
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            dsn, timeout=connect_timeout, server_settings=SERVER_SETTINGS
        )
        # Setting the codecs asks the server: a server gone since the connect is the
        # same error as one that refused it, and the half-open connection is cut.
        try:
            await init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
    return conn


# The longest a close may wait for the server's goodbye (or, for a pool, for its
# connections to come back) before the sockets are cut: the server ends the sessions
# either way, so nothing is left behind.
CLOSE_S = 5.0


async def close(closable: asyncpg.Connection[Any] | asyncpg.Pool[Any]) -> None:
    """Close a connection or a pool, even when the caller is being cancelled: a close a
    cancellation skipped would leave the sessions, and whatever they hold, to the
    server's timeouts. Within CLOSE_S, or the sockets are cut."""
    # An error closing is no news: the connection goes all the same (below).
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(CLOSE_S),
        contextlib.suppress(DatabaseError),
        map_db_errors(),
    ):
        await closable.close()
    closable.terminate()  # nothing when closed already


async def release(pool: asyncpg.Pool[Any], conn: PoolConnection) -> None:
    """Give a connection back to its pool, even when the caller is being cancelled.
    The pool resets it first, a round trip: a server that does not answer within
    CLOSE_S has the connection cut instead (asyncpg terminates it on the timeout)."""
    with (
        anyio.CancelScope(shield=True),
        contextlib.suppress(TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError, OSError),
    ):
        await pool.release(conn, timeout=CLOSE_S)


@contextlib.contextmanager
def _connect_errors(dsn: str) -> Iterator[None]:
    try:
        with map_db_errors():
            yield
    except TransientDatabaseError as exc:
        raise DatabaseUnavailableError(
            f"cannot reach the database at {describe(dsn)}: {redact(str(exc))}"
        ) from None
    except (DatabaseError, ValueError) as exc:
        raise ConfigError(
            f"cannot connect to the database at {describe(dsn)}: {redact(str(exc))}"
        ) from None
