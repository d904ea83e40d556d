"""Every named persistence operation, and the only caller of SQL at run time.

Each method is one operation of the original system (same names), runs one statement
from daemon/db/sql by name, and returns records from daemon.models. Driver errors leave
here as TransientDatabaseError / PermanentDatabaseError; a missing row is NotFoundError.
The store never retries: the persistence queue decides that.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from daemon.db.queries import queries
from daemon.errors import NotFoundError, map_db_errors
from daemon.models import (
    HistoryMessage,
    PendingQuestion,
    RestorationSource,
    SupervisorState,
    SupervisorStateKind,
    SupervisorTask,
    UpdateSupervisorStateRequest,
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

    async def _require(self, name: str, supervisor_id: uuid.UUID, *args: Any) -> asyncpg.Record:
        row = await self._fetchrow(name, supervisor_id, *args)
        if row is None:
            raise NotFoundError(f"supervisor {supervisor_id} does not exist")
        return row

    # -- whole states ---------------------------------------------------------------

    async def save_supervisor_state_full(self, state: SupervisorState) -> SupervisorState:
        """UPSERT every state column of `state` (ownership columns are left alone).

        Its history and spawned task ids are made those of `state`: what extends the
        stored ones is inserted as rows, anything else replaces them. One transaction.
        """
        with map_db_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.fetchrow(
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
                await conn.execute(
                    queries["set_supervisor_history_and_tasks"],
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

    # -- partial updates ------------------------------------------------------------

    async def update_supervisor_detailed_state(
        self, supervisor_id: uuid.UUID, request: UpdateSupervisorStateRequest
    ) -> SupervisorState:
        row = await self._require(
            "update_supervisor_detailed_state",
            supervisor_id,
            request.state.value if request.state else None,
            request.current_activity,
            request.progress,
            request.error_message,
        )
        return SupervisorState.from_row(row)

    async def add_supervisor_spawned_task(
        self, supervisor_id: uuid.UUID, task_id: uuid.UUID, *, await_task: bool = True
    ) -> None:
        """Record `task_id` as spawned (and awaited, unless told otherwise). Idempotent;
        atomic under concurrent writers (the supervisor's row is locked first)."""
        with map_db_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                found = await conn.fetchval(
                    queries["add_supervisor_spawned_task"], supervisor_id, task_id
                )
                if found:
                    await conn.execute(
                        queries["await_supervisor_task"], supervisor_id, task_id, await_task
                    )
        if not found:
            raise NotFoundError(f"supervisor {supervisor_id} does not exist")

    async def add_supervisor_pending_question(
        self, supervisor_id: uuid.UUID, question: PendingQuestion
    ) -> None:
        """Append `question` (once per id); the supervisor now waits for its user."""
        await self._require(
            "add_supervisor_pending_question",
            supervisor_id,
            question.to_json(),
            str(question.id),
        )

    async def remove_supervisor_pending_question(
        self, supervisor_id: uuid.UUID, question_id: uuid.UUID
    ) -> None:
        """Drop a pending question; NotFoundError when it is not pending there."""
        row = await self._fetchrow(
            "remove_supervisor_pending_question", supervisor_id, str(question_id)
        )
        if row is None:
            if await self.get_supervisor(supervisor_id) is None:
                raise NotFoundError(f"supervisor {supervisor_id} does not exist")
            raise NotFoundError(
                f"question {question_id} is not pending on supervisor {supervisor_id}"
            )

    async def mark_supervisor_restored(
        self, supervisor_id: uuid.UUID, source: RestorationSource
    ) -> int:
        """Count one more restoration; return the new restoration_count."""
        row = await self._require("mark_supervisor_restored", supervisor_id, source.value)
        return int(row["restoration_count"])

    async def update_supervisor_phase(
        self, supervisor_id: uuid.UUID, phase: str
    ) -> SupervisorState:
        row = await self._require("update_supervisor_phase", supervisor_id, phase)
        return SupervisorState.from_row(row)

    async def update_supervisor_heartbeat_state(
        self,
        supervisor_id: uuid.UUID,
        *,
        state: SupervisorStateKind | None = None,
        current_activity: str | None = None,
        progress: int | None = None,
    ) -> None:
        await self._require(
            "update_supervisor_heartbeat_state",
            supervisor_id,
            state.value if state else None,
            current_activity,
            progress,
        )

    # -- tasks and checkpoints ------------------------------------------------------

    async def validate_spawned_tasks(self, supervisor_id: uuid.UUID) -> SpawnedTasksCheck:
        rows = await self._fetch("validate_spawned_tasks", supervisor_id)
        return SpawnedTasksCheck(
            found=tuple(row["task_id"] for row in rows if row["task_exists"]),
            missing=tuple(row["task_id"] for row in rows if not row["task_exists"]),
        )

    async def create_task(
        self, supervisor_id: uuid.UUID, *, task_id: uuid.UUID | None = None, spec: Any = None
    ) -> SupervisorTask:
        row = await self._fetchrow("create_task", task_id or uuid.uuid4(), supervisor_id, spec)
        if row is None:  # INSERT ... RETURNING always yields its row
            raise NotFoundError(f"task for supervisor {supervisor_id} was not created")
        return SupervisorTask.from_row(row)

    async def get_task(self, task_id: uuid.UUID) -> SupervisorTask | None:
        row = await self._fetchrow("get_task", task_id)
        return None if row is None else SupervisorTask.from_row(row)

    async def list_tasks_for_supervisor(self, supervisor_id: uuid.UUID) -> Sequence[SupervisorTask]:
        rows = await self._fetch("list_tasks_for_supervisor", supervisor_id)
        return [SupervisorTask.from_row(row) for row in rows]

    async def save_checkpoint(self, supervisor_id: uuid.UUID) -> int:
        """Snapshot the supervisor's current row; return the checkpoint id."""
        row = await self._require("save_checkpoint", supervisor_id)
        return int(row["id"])

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
