"""Every named persistence operation, and the only caller of SQL at run time.

Each method is one operation of the original system (same names), runs one statement
from daemon/db/sql by name, and returns records from daemon.models. Driver errors leave
here as TransientDatabaseError / PermanentDatabaseError; a missing row is NotFoundError.
The store never retries: the persistence queue decides that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import asyncpg
import orjson

from daemon.batch import Batch
from daemon.db.queries import queries
from daemon.errors import NotFoundError, map_db_errors
from daemon.models import (
    HistoryMessage,
    PendingQuestion,
    RestorationSource,
    SupervisorState,
    SupervisorStateKind,
    SupervisorTask,
    TaskStatus,
    UpdateSupervisorStateRequest,
)
from daemon.store_daemons import DaemonRegistry

# DaemonRegistry lives in daemon/store_daemons.py and is named here too, as before.
__all__ = ["QUESTIONS_CHANNEL", "DaemonRegistry", "EventStore", "MetricsStore",
           "RestorationStore", "SpawnedTasksCheck", "Store", "TaskChange", "WorkStore",
           "notify_question", "question_feed"]  # fmt: skip


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskChange:
    """What a fenced task write found: whether the supervisor is still owned under the
    epoch the writer holds (`owned`), and whether the task changed (`changed`)."""

    owned: bool
    changed: bool


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
        self._idle: list[Any] = []  # held connections between batches

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

    async def _keep(self, conn: Any) -> None:
        try:
            closed = conn.is_closed()
        except asyncpg.InterfaceError:
            return  # the connection was lost and the pool has taken it back already
        if closed:
            await self._release(conn)
        else:
            self._idle.append(conn)

    async def _release(self, conn: Any) -> None:
        # Shielded: a connection taken from the pool goes back even when cancelled.
        with anyio.CancelScope(shield=True):
            await self._pool.release(conn)

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


class WorkStore:
    """Tasks and answers: what a running daemon and its CLI change from outside."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def set_task_status(
        self, task_id: uuid.UUID, status: TaskStatus, result: Any = None
    ) -> bool:
        """False when the task does not exist or has already finished."""
        with map_db_errors():
            row = await self._pool.fetchrow(
                queries["set_task_status"], task_id, status.value, result
            )
        return row is not None

    async def _task_change(self, name: str, *args: Any) -> TaskChange:
        with map_db_errors():
            row = await self._pool.fetchrow(queries[name], *args)
        if row is None:  # a SELECT of aggregates always returns its row
            return TaskChange(owned=False, changed=False)
        return TaskChange(owned=bool(row[0]), changed=bool(row[1]))

    async def start_task(
        self,
        task_id: uuid.UUID,
        *,
        supervisor_id: uuid.UUID,
        daemon_id: str,
        epoch: int,
        rerun: bool = False,
    ) -> TaskChange:
        """pending -> running under `epoch` (see start_task in tasks.sql)."""
        return await self._task_change(
            "start_task", task_id, supervisor_id, daemon_id, epoch, rerun
        )

    async def finish_task(
        self,
        task_id: uuid.UUID,
        status: TaskStatus,
        result: Any,
        *,
        supervisor_id: uuid.UUID,
        daemon_id: str,
        epoch: int,
        never_started: bool = False,
    ) -> TaskChange:
        """A task's outcome, written only under the epoch it runs under."""
        return await self._task_change(
            "finish_task", task_id, supervisor_id, daemon_id, epoch, status.value, result,
            never_started,
        )  # fmt: skip

    async def interrupt_task(
        self,
        task_id: uuid.UUID,
        result: Any,
        *,
        supervisor_id: uuid.UUID,
        daemon_id: str,
        epoch: int,
    ) -> TaskChange:
        """Fail a task an earlier owner left running (its process went with it): the
        outcome of a task that never ran under this epoch."""
        return await self.finish_task(
            task_id, TaskStatus.FAILED, result, supervisor_id=supervisor_id,
            daemon_id=daemon_id, epoch=epoch, never_started=True,
        )  # fmt: skip

    async def task_statuses(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        with map_db_errors():
            rows = await self._pool.fetch(queries["task_statuses"], list(task_ids))
        return {row["id"]: row["status"] for row in rows}

    async def runnable_tasks(self, daemon_id: str) -> list[asyncpg.Record]:
        with map_db_errors():
            return await self._pool.fetch(queries["runnable_tasks_of_owner"], daemon_id)

    async def find_pending_question(self, question_id: uuid.UUID) -> asyncpg.Record | None:
        with map_db_errors():
            return await self._pool.fetchrow(queries["find_pending_question"], str(question_id))

    async def get_answer(self, question_id: uuid.UUID) -> asyncpg.Record | None:
        with map_db_errors():
            return await self._pool.fetchrow(queries["get_answer"], question_id)

    async def record_answer(
        self, question_id: uuid.UUID, supervisor_id: uuid.UUID, answer: str, by: str | None
    ) -> bool:
        """False when an answer was already recorded for this question."""
        with map_db_errors():
            row = await self._pool.fetchrow(
                queries["record_answer"], question_id, supervisor_id, answer, by
            )
        return row is not None

    async def unapplied_answers(self, daemon_id: str) -> list[asyncpg.Record]:
        with map_db_errors():
            return await self._pool.fetch(queries["unapplied_answers_of_owner"], daemon_id)

    async def owned_supervisors(
        self, daemon_id: str, ids: Sequence[uuid.UUID] | None = None
    ) -> list[SupervisorState]:
        with map_db_errors():
            rows = await self._pool.fetch(
                queries["owned_supervisors"], daemon_id, None if ids is None else list(ids)
            )
        return [SupervisorState.from_row(row) for row in rows]


class RetentionStore:
    """Deleting the rows of finished supervisors, in small statements (daemon/retention.py)."""

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


# The channel the daemons NOTIFY on when they deliver a question (daemon/runtime/delivery.py)
# and redeliver it on a restoration (RestorationStore.notify_questions).
QUESTIONS_CHANNEL = "supervisor_questions"


async def notify_question(pool: asyncpg.Pool[Any], body: str) -> None:
    """Deliver one question (its JSON body) to whoever listens on the channel."""
    with map_db_errors():
        await pool.execute(queries["notify_question"], QUESTIONS_CHANNEL, body)


@contextlib.asynccontextmanager
async def question_feed(
    pool: asyncpg.Pool[Any], *, buffer: int = 1000
) -> AsyncIterator[anyio.abc.ObjectReceiveStream[dict[str, Any]]]:
    """Questions as daemons deliver them, for as long as the context lasts.

    One held connection LISTENs on the questions channel; each notification's JSON body
    arrives on the stream. The stream ends when that connection is lost. A reader that
    falls `buffer` questions behind loses the newest ones rather than stalling asyncpg.
    """
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)

    def notified(_conn: Any, _pid: int, _channel: str, body: object) -> None:
        try:
            question = orjson.loads(str(body))
        except orjson.JSONDecodeError:
            return  # not one of ours
        if isinstance(question, dict):
            with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
                send.send_nowait(question)

    def lost(_conn: Any) -> None:
        send.close()

    with map_db_errors():
        conn = await pool.acquire()
    try:
        conn.add_termination_listener(lost)
        with map_db_errors():
            await conn.add_listener(QUESTIONS_CHANNEL, notified)
        async with receive:
            yield receive
    finally:
        send.close()
        # A lost connection is already out of the pool's hands: nothing to undo.
        with (
            anyio.CancelScope(shield=True),
            contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError),
        ):
            await conn.remove_listener(QUESTIONS_CHANNEL, notified)
            await pool.release(conn)
