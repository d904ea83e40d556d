"""The persistence queue's operations: set-based batch writes (a Batch is what one
apply_batch statement reads) and the journal; and the numbers behind the metrics'
gauges. The only SQL callers on the save path.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import asyncpg
import orjson

from daemon.db.pool import PoolConnection, release
from daemon.db.queries import queries
from daemon.errors import map_db_errors


@dataclasses.dataclass(slots=True)
class Batch:
    """What one apply_batch statement writes."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Each row's journal segment, [[id, kind, payload], ...], None for a row of
    # heartbeat/progress only. (Entries are arrays: a tuple is cheaper to make than a
    # dict and orjson writes it faster; segments written before were
    # {"e": id, "k": kind, "p": payload}, and `history` reads both.)
    segments: list[list[tuple[str, str, dict[str, Any]]] | None] = dataclasses.field(
        default_factory=list
    )
    # For the retry check: the last critical event of each supervisor in this batch.
    last_event: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)

    def parameters(self) -> tuple[str, list[uuid.UUID], list[str | None]]:
        """The document, the supervisor ids (for the primary-key lookup) and the
        journal segments as JSON texts, in the order of the rows."""
        # default=str: asyncpg hands out its own UUID subclass, which orjson does not
        # know by exact type; anything else was checked when its event was made.
        dumps = orjson.dumps
        return (
            dumps(self.rows, default=str).decode(),
            [row["i"] for row in self.rows],
            [None if s is None else dumps(s).decode() for s in self.segments],
        )


class MetricsStore:
    """The whole database's numbers behind the metrics' gauges, read on an interval."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def supervisors_by_state(self) -> dict[str, int]:
        with map_db_errors():
            rows = await self._pool.fetch(queries["count_supervisors_by_state"], None, None)
        return {row["state"]: row["supervisors"] for row in rows}

    async def pending_questions(self) -> tuple[int, float]:
        """How many questions wait for an answer, and the oldest one's age in seconds."""
        with map_db_errors():
            row = await self._pool.fetchrow(queries["summarize_pending_questions"])
        if row is None:  # an aggregate without GROUP BY always returns its row
            return 0, 0.0
        return row["pending"], row["oldest_age_s"]


class EventStore:
    """The persistence queue's operations: set-based batch writes and the journal.

    Batch writes keep their connections between batches instead of returning them to
    the pool: asyncpg resets a connection on its way back (one more round trip per
    batch), which at a few events per batch was a tenth of the daemon's CPU. The queue
    holds at most one per lane and gives them back with `close()`.
    """

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool
        self._idle: list[PoolConnection] = []  # held connections between batches

    async def apply_batch(self, batch: Batch) -> list[uuid.UUID]:
        """Write a folded batch in one statement; return supervisors left untouched."""
        parameters = batch.parameters()
        with map_db_errors():
            conn = self._idle.pop() if self._idle else await self._pool.acquire()
            try:
                missing = await conn.fetchval(queries["apply_batch"], *parameters)
            except asyncpg.PostgresError:
                # The server answered: the connection is in a known state, unless the
                # server closed it on the way (shutting down).
                await self._keep(conn)
                raise
            except BaseException:
                # Cut mid-statement, or cancelled: the connection may be in any state.
                # Closing it makes the pool open a fresh one instead.
                conn.terminate()
                await self._release(conn)
                raise
            self._idle.append(conn)
        return list(missing or ())

    async def _keep(self, conn: PoolConnection) -> None:
        try:
            closed = conn.is_closed()
        except asyncpg.InterfaceError:
            return  # the connection was lost and the pool has taken it back already
        if closed:
            await self._release(conn)
        else:
            self._idle.append(conn)

    async def _release(self, conn: PoolConnection) -> None:
        # Shielded and bounded: the connection goes back even when cancelled, and a
        # server that does not answer the reset has it cut.
        await release(self._pool, conn)

    async def close(self) -> None:
        """Give the connections held for batch writes back to the pool."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._release(conn)

    async def supervisors_not_at_event(self, last_events: dict[uuid.UUID, str]) -> set[uuid.UUID]:
        """Of `last_events` (supervisor -> event id), the supervisors whose newest applied
        event is not that one."""
        with map_db_errors():
            rows = await self._pool.fetch(
                queries["supervisors_not_at_event"], list(last_events), list(last_events.values())
            )
        return {row[0] for row in rows}

    async def list_events(
        self, supervisor_id: uuid.UUID, *, after_seq: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        with map_db_errors():
            rows = await self._pool.fetch(
                queries["list_supervisor_events"], supervisor_id, after_seq, limit
            )
        return [dict(row) for row in rows]
