"""The daemons table: registration, the lock on a daemon's id, leases, release.

One of the store's rooms, with the same rules (one named statement per method,
driver errors translated). Kept apart because a running daemon uses it over the one
connection it holds for the life of its process (a `DaemonSession`, which
daemon/runtime/lease.py keeps), where the rest of the store works over the pool.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from daemon.db.pool import close, connect
from daemon.db.queries import queries
from daemon.errors import map_db_errors


class DaemonRegistry:
    """Named operations on the daemons table (registration and leases).

    Over a pool, or (a `DaemonSession`) over the one connection a running daemon keeps
    for the life of its process. `dsn` is where `session()` opens that connection:
    needed only by a daemon keeping its lease.
    """

    def __init__(
        self, db: asyncpg.Pool[Any] | asyncpg.Connection[Any], *, dsn: str | None = None
    ) -> None:
        self._db = db
        self._dsn = dsn

    async def session(self) -> DaemonSession:
        """These operations over a new connection of their own (close it when done)."""
        if self._dsn is None:
            raise ValueError("this DaemonRegistry was made without a DSN: it opens no session")
        return DaemonSession(await connect(self._dsn))

    async def lock_id(self, daemon_id: str) -> bool:
        """Hold `daemon_id` for this session; False when another session holds it."""
        with map_db_errors():
            return bool(await self._db.fetchval(queries["lock_daemon_id"], daemon_id))

    async def id_holders(self, daemon_id: str) -> list[dict[str, Any]]:
        """The backends holding `daemon_id`'s lock: pid, client_addr, backend_start."""
        with map_db_errors():
            rows = await self._db.fetch(queries["daemon_id_holders"], daemon_id)
        return [dict(row) for row in rows]

    async def terminate_backend(self, pid: int) -> bool:
        with map_db_errors():
            return bool(await self._db.fetchval(queries["terminate_backend"], pid))

    async def register(
        self,
        daemon_id: str,
        *,
        hostname: str,
        pid: int,
        version: str,
        lease_s: float,
        capacity: int | None = None,
        token: uuid.UUID | None = None,
    ) -> float:
        """A fresh lease; the seconds it lasts by the database's clock."""
        with map_db_errors():
            left = await self._db.fetchval(
                queries["register_daemon"], daemon_id, hostname, pid, version, lease_s,
                capacity, token,
            )  # fmt: skip
        return float(left)

    async def renew_lease(
        self, daemon_id: str, lease_s: float, token: uuid.UUID | None = None
    ) -> float | None:
        """The seconds the renewed lease lasts; None when it was refused: expired
        already, marked stopped (by a clean stop or by a daemon that found it expired),
        or registered by another process."""
        with map_db_errors():
            left = await self._db.fetchval(queries["renew_daemon_lease"], daemon_id, token, lease_s)
        return None if left is None else float(left)

    async def release(self, daemon_id: str, token: uuid.UUID | None = None) -> int | None:
        """End the lease now and fence the daemon's unfinished supervisors, for others
        to claim; how many, or None when the id belongs to another process now."""
        with map_db_errors():
            row = await self._db.fetchrow(queries["release_daemon"], daemon_id, token)
        return None if row is None else int(row["released"])

    async def mark_stopped(self, daemon_id: str) -> None:
        with map_db_errors():
            await self._db.execute(queries["mark_daemon_stopped"], daemon_id)

    async def list(self) -> list[dict[str, Any]]:
        with map_db_errors():
            rows = await self._db.fetch(queries["list_daemons"])
        return [dict(row) for row in rows]


class DaemonSession(DaemonRegistry):
    """The registry over one connection of its own, which a running daemon keeps for
    the life of its process: that connection holds the advisory lock on the daemon's
    id, so the lease it renews is the lease of the process that holds the id. Ending
    the session ends the lock."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        super().__init__(conn)
        self._conn = conn

    @property
    def server_pid(self) -> int:
        """The server process of this session (the one pg_locks names as the holder)."""
        return self._conn.get_server_pid()

    def is_closed(self) -> bool:
        return self._conn.is_closed()

    def terminate(self) -> None:
        """End the session now, without waiting for the server (a connection that may be
        in any state, or one the network dropped)."""
        self._conn.terminate()

    async def close(self) -> None:
        """End the session in order, cancelled or not (daemon.db.pool.close)."""
        await close(self._conn)
