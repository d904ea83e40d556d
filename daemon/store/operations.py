"""A supervisor's reads, and its creation: the original system's named operations that
remain.

Each method keeps its original name, runs one statement from daemon/db/sql by name, and
returns records from daemon.models. Driver errors leave here as TransientDatabaseError
/ PermanentDatabaseError; a missing row is NotFoundError. The store never retries: the
persistence queue decides that.

Nothing here changes a supervisor that exists: that goes through its events (the
persistence queue, daemon/persistence/), fenced by its owner's epoch and journaled, or
through restoration and claims (daemon/store/restore.py); the original partial updates
(update_supervisor_phase, add_supervisor_pending_question, ...) wrote around both and
are gone. tests/unit/test_write_path.py holds the statements that may write.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from daemon.db.queries import queries
from daemon.errors import ConflictError, NotFoundError, map_db_errors
from daemon.models import (
    HistoryMessage,
    SupervisorState,
    SupervisorStateKind,
    SupervisorTask,
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SpawnedTasksCheck:
    """Which of a supervisor's spawned task ids have a task row, and which do not."""

    found: tuple[uuid.UUID, ...]
    missing: tuple[uuid.UUID, ...]

    @property
    def all_exist(self) -> bool:
        return not self.missing


def _state(row: asyncpg.Record | None, supervisor_id: uuid.UUID) -> SupervisorState:
    if row is None:
        raise NotFoundError(f"supervisor {supervisor_id} does not exist")
    return SupervisorState.from_row(row)


class Store:
    """Named operations over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        with map_db_errors():
            return await self._pool.fetchrow(queries[name], *args)

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        with map_db_errors():
            return await self._pool.fetch(queries[name], *args)

    # -- whole states ---------------------------------------------------------------

    async def save_supervisor_state_full(self, state: SupervisorState) -> SupervisorState:
        """Create a supervisor with the whole state `state`: a new row, unowned (its
        ownership columns are the claims' to set), with its history and spawned task ids
        as rows. One transaction. ConflictError when a supervisor with its id exists:
        an existing supervisor's state changes only through its events (the persistence
        queue's apply_batch, fenced by its owner's epoch and journaled), restoration and
        claims; this never overwrites it.
        """
        with map_db_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                created = await conn.fetchval(
                    queries["save_supervisor_state_full"],
                    state.id,
                    state.contract_id,
                    state.task_id,
                    list(state.pending_task_ids),
                    state.phase,
                    state.last_activity,
                    state.state.value,
                    state.current_activity,
                    state.progress,
                    state.error_message,
                    [q.to_json() for q in state.pending_questions],
                    state.restoration_count,
                    state.last_restored_at,
                    state.restoration_source.value if state.restoration_source else None,
                    state.agent,
                )
                if created is None:
                    raise ConflictError(f"supervisor {state.id} exists already")
                await conn.execute(
                    queries["set_new_supervisor_history_and_tasks"],
                    state.id,
                    list(state.conversation_history),
                    list(state.spawned_task_ids),
                )
                row = await conn.fetchrow(queries["get_supervisor"], state.id)
        return _state(row, state.id)

    async def get_supervisor(self, supervisor_id: uuid.UUID) -> SupervisorState | None:
        row = await self._fetchrow("get_supervisor", supervisor_id)
        return None if row is None else SupervisorState.from_row(row)

    async def get_supervisor_state_for_restoration(
        self, supervisor_id: uuid.UUID
    ) -> SupervisorState | None:
        """The stored state, or None when there is none (restoration starts fresh)."""
        row = await self._fetchrow("get_supervisor_state_for_restoration", supervisor_id)
        return None if row is None else SupervisorState.from_row(row)

    async def list_supervisors(
        self, *, state: SupervisorStateKind | None = None, limit: int = 1000
    ) -> list[SupervisorState]:
        rows = await self._fetch("list_supervisors", state.value if state else None, limit)
        return [SupervisorState.from_row(row) for row in rows]

    async def list_supervisor_summaries(
        self, *, state: SupervisorStateKind | None = None, limit: int = 1000
    ) -> list[SupervisorState]:
        """`list_supervisors` without the histories and task ids (their numbers only):
        what a listing needs, as cheap for old supervisors as for new ones."""
        rows = await self._fetch("list_supervisor_summaries", state.value if state else None, limit)
        return [SupervisorState.from_row(row) for row in rows]

    async def get_supervisor_summary(self, supervisor_id: uuid.UUID) -> SupervisorState | None:
        """One supervisor without its history and task ids (their numbers only)."""
        row = await self._fetchrow("get_supervisor_summary", supervisor_id)
        return None if row is None else SupervisorState.from_row(row)

    async def get_supervisors_with_pending_questions(self) -> list[SupervisorState]:
        rows = await self._fetch("get_supervisors_with_pending_questions")
        return [SupervisorState.from_row(row) for row in rows]

    # -- tasks and checkpoints ------------------------------------------------------

    async def validate_spawned_tasks(self, supervisor_id: uuid.UUID) -> SpawnedTasksCheck:
        rows = await self._fetch("validate_spawned_tasks", supervisor_id)
        return SpawnedTasksCheck(
            found=tuple(row["task_id"] for row in rows if row["task_exists"]),
            missing=tuple(row["task_id"] for row in rows if not row["task_exists"]),
        )

    async def get_task(self, task_id: uuid.UUID) -> SupervisorTask | None:
        row = await self._fetchrow("get_task", task_id)
        return None if row is None else SupervisorTask.from_row(row)

    async def list_tasks_for_supervisor(self, supervisor_id: uuid.UUID) -> Sequence[SupervisorTask]:
        rows = await self._fetch("list_tasks_for_supervisor", supervisor_id)
        return [SupervisorTask.from_row(row) for row in rows]

    async def latest_checkpoint(self, supervisor_id: uuid.UUID) -> dict[str, Any] | None:
        row = await self._fetchrow("latest_checkpoint", supervisor_id)
        return None if row is None else dict(row)

    # -- the conversation -------------------------------------------------------------

    async def read_history(
        self, supervisor_id: uuid.UUID, *, before: int | None = None, limit: int = 50
    ) -> list[HistoryMessage]:
        """The newest `limit` messages before sequence number `before` (of all, when
        None), oldest first: one backward step through the primary key, whatever the
        history's length."""
        rows = await self._fetch("list_supervisor_messages", supervisor_id, before, limit)
        return [HistoryMessage.from_row(row) for row in rows]

    async def spawned_task_ids(self, supervisor_id: uuid.UUID) -> list[uuid.UUID]:
        """Every task id it spawned, in order (those without a task row last)."""
        rows = await self._fetch("validate_spawned_tasks", supervisor_id)
        return [row["task_id"] for row in rows]

    async def read_history_after(
        self, supervisor_id: uuid.UUID, *, after: int = 0, limit: int = 1000
    ) -> list[HistoryMessage]:
        """The first `limit` messages after sequence number `after`, oldest first."""
        rows = await self._fetch("list_supervisor_messages_after", supervisor_id, after, limit)
        return [HistoryMessage.from_row(row) for row in rows]
