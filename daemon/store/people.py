"""The named reads people's commands need (the CLI, the web page and its JSON API).

One of the store's rooms, with the same rules: one statement from daemon/db/sql
(people.sql) per method, driver errors translated, records or plain rows returned. It
reads only; people's writes go through the other rooms of the store. Kept apart so
that what the page shows (lists without conversations, pages of history, id prefixes)
does not grow the module the daemon runs on. Nothing here decides a rule: that is
daemon/services.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from daemon.db.queries import queries
from daemon.errors import map_db_errors
from daemon.models import SupervisorState, SupervisorStateKind


class PeopleStore:
    """Reads over an asyncpg pool for people's commands."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        with map_db_errors():
            return await self._pool.fetch(queries[name], *args)

    # -- ids people type --------------------------------------------------------------

    async def supervisor_ids(self, low: str, high: str, limit: int) -> list[str]:
        rows = await self._fetch("supervisor_ids_in_range", uuid.UUID(low), uuid.UUID(high), limit)
        return [str(row["id"]) for row in rows]

    async def task_ids(self, low: str, high: str, limit: int) -> list[str]:
        rows = await self._fetch("task_ids_in_range", uuid.UUID(low), uuid.UUID(high), limit)
        return [str(row["id"]) for row in rows]

    async def question_ids(self, low: str, high: str, limit: int) -> list[str]:
        rows = await self._fetch("question_ids_in_range", low, high, limit)
        return [str(row["id"]) for row in rows]

    # -- supervisors ------------------------------------------------------------------

    async def list_supervisors(
        self,
        *,
        state: SupervisorStateKind | None,
        phase: str | None,
        daemon_id: str | None,
        limit: int,
    ) -> list[SupervisorState]:
        """Newest first, without their conversations (a list never shows them)."""
        rows = await self._fetch(
            "list_supervisors_for_people", state.value if state else None, phase, daemon_id, limit
        )
        return [SupervisorState.from_row(row) for row in rows]

    async def count_by_state(self, *, phase: str | None, daemon_id: str | None) -> dict[str, int]:
        rows = await self._fetch("count_supervisors_by_state", phase, daemon_id)
        return {row["state"]: int(row["supervisors"]) for row in rows}

    async def supervisor(self, supervisor_id: uuid.UUID) -> tuple[SupervisorState, int, int] | None:
        """The state (without its conversation), its conversation's length and its
        journal's length, or None."""
        rows = await self._fetch("supervisor_for_people", supervisor_id)
        if not rows:
            return None
        row = rows[0]
        return (
            SupervisorState.from_row(row),
            int(row["conversation_length"]),
            int(row["last_event_seq"]),
        )

    async def conversation(
        self, supervisor_id: uuid.UUID, *, before: int, limit: int
    ) -> list[tuple[int, Any]]:
        """(position, message) pairs before `before` (1-based), newest first."""
        rows = await self._fetch("conversation_page", supervisor_id, before, limit)
        return [(int(row["position"]), row["message"]) for row in rows]

    async def pending_questions(self, supervisor_id: uuid.UUID | None) -> list[asyncpg.Record]:
        return await self._fetch("pending_questions_for_people", supervisor_id)

    # -- daemons ----------------------------------------------------------------------

    async def daemons(self) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("daemons_for_people")]
