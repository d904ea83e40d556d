"""Set-based loads and writes for restoring many supervisors at once, and retention's
deletes of the rows of supervisors finished long ago.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from daemon.db.queries import queries
from daemon.errors import map_db_errors
from daemon.store.work import QUESTIONS_CHANNEL


class RestorationStore:
    """Set-based loads and writes for restoring many supervisors at once."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def claim(
        self,
        daemon_id: str,
        capacity: int,
        *,
        include_own: bool = True,
        token: uuid.UUID | None = None,
    ) -> list[asyncpg.Record]:
        """Mark daemons whose lease expired stopped, then claim: one transaction, so a
        renewal racing the expiry waits and then finds its daemon stopped."""
        with map_db_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(queries["reap_expired_daemons"])
                dead = await conn.fetchval(queries["dead_daemons"], daemon_id)
                await conn.execute(queries["claim_custom_plans"])
                return await conn.fetch(
                    queries["claim_supervisors"], daemon_id, capacity, include_own, token, dead
                )

    async def release_for_manual_restore(self, supervisor_id: uuid.UUID) -> asyncpg.Record | None:
        """Take a supervisor from its owner (new epoch, no owner): None when it does
        not exist."""
        with map_db_errors():
            return await self._pool.fetchrow(queries["release_for_manual_restore"], supervisor_id)

    async def load(
        self, ids: list[uuid.UUID], history_tail: int
    ) -> dict[str, list[asyncpg.Record]]:
        """Rows (each with the newest `history_tail` messages), the tasks restoration
        checks, and unapplied answers of `ids`: three statements."""
        with map_db_errors():
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    queries["load_supervisors_for_restoration"], ids, history_tail
                )
                tasks = await conn.fetch(queries["load_tasks_of_supervisors"], ids)
                answers = await conn.fetch(queries["load_unapplied_answers"], ids)
        return {"rows": rows, "tasks": tasks, "answers": answers}

    async def checkpoints(
        self, ids: list[uuid.UUID]
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """The checkpoints of `ids` (newest first) and every task row of theirs."""
        with map_db_errors():
            async with self._pool.acquire() as conn:
                checkpoints = await conn.fetch(queries["load_checkpoints_of_supervisors"], ids)
                tasks = await conn.fetch(queries["load_all_tasks_of_supervisors"], ids)
        return checkpoints, tasks

    async def history_tails_at(
        self, positions: dict[uuid.UUID, int], history_tail: int
    ) -> dict[uuid.UUID, list[Any]]:
        """For each supervisor, the newest `history_tail` messages up to its position."""
        with map_db_errors():
            rows = await self._pool.fetch(
                queries["load_history_tails_at"],
                list(positions),
                list(positions.values()),
                history_tail,
            )
        return {row["supervisor_id"]: row["history_tail"] or [] for row in rows}

    async def write(
        self, rows: list[dict[str, Any]], applied_answers: list[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Apply restorations and mark answers applied: one transaction.

        Returns the supervisors actually written (a row whose epoch moved is skipped).
        """
        dumps = orjson.dumps
        with map_db_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                written = await conn.fetch(
                    queries["apply_restorations"], dumps(rows, default=str).decode()
                )
                done = {row["id"] for row in written}
                # Checkpoints written before positions carry copies: a rare fallback.
                copies = [
                    {"id": row["id"], "hist": row.get("hist"), "sp": row.get("sp")}
                    for row in rows
                    if row["id"] in done
                    and (row.get("hist") is not None or row.get("sp") is not None)
                ]
                if copies:
                    await conn.execute(
                        queries["restore_copied_histories"], dumps(copies, default=str).decode()
                    )
                if applied_answers:
                    await conn.execute(queries["mark_answers_applied"], applied_answers)
        return done

    async def notify_questions(self, bodies: list[str]) -> None:
        """Redeliver questions on the questions channel, one NOTIFY each (their JSON
        bodies, each under PostgreSQL's 8,000 bytes). Sent after the restorations
        committed, on their own: a NOTIFY that fails cannot undo a restoration."""
        with map_db_errors():
            await self._pool.fetchval(queries["notify_questions"], QUESTIONS_CHANNEL, bodies)


class RetentionStore:
    """Deleting the rows of finished supervisors, in small statements (for
    daemon/runtime/retention.py)."""

    TABLES = ("messages", "journal", "tasks", "checkpoints")

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def prunable(self, older_than_s: float, limit: int) -> list[uuid.UUID]:
        with map_db_errors():
            rows = await self._pool.fetch(queries["prunable_supervisors"], older_than_s, limit)
        return [row["id"] for row in rows]

    async def delete_batch(
        self, table: str, ids: list[uuid.UUID], older_than_s: float, limit: int
    ) -> tuple[int, int]:
        """Delete up to `limit` rows of `table` (one of TABLES) of `ids`: one statement,
        its own transaction. Returns (rows, journal events they held)."""
        with map_db_errors():
            row = await self._pool.fetchrow(queries[f"prune_{table}"], ids, older_than_s, limit)
        return (0, 0) if row is None else (int(row["rows"]), int(row["events"]))

    async def mark_pruned(self, ids: list[uuid.UUID], older_than_s: float) -> int:
        with map_db_errors():
            status = await self._pool.execute(queries["mark_pruned"], ids, older_than_s)
        return int(status.split()[-1])

    async def count(self, older_than_s: float) -> dict[str, int]:
        with map_db_errors():
            row = await self._pool.fetchrow(queries["count_prunable"], older_than_s)
        return {} if row is None else {key: int(value) for key, value in row.items()}
