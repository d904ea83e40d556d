"""Tasks and answers, what a running daemon and people change from outside: fenced task
writes, answers recorded once, the questions channel (NOTIFY and LISTEN), and the
connection of its own on which the hub LISTENs for answers and task results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import asyncpg
import orjson

from daemon.db.pool import CLOSE_S, close, connect, release
from daemon.db.queries import queries
from daemon.errors import map_db_errors
from daemon.models import (
    SupervisorState,
    TaskStatus,
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskChange:
    """What a fenced task write found: whether the supervisor is still owned under the
    epoch the writer holds (`owned`), and whether the task changed (`changed`)."""

    owned: bool
    changed: bool


class WorkStore:
    """Tasks and answers: what a running daemon and its CLI change from outside.

    `dsn` is where `listen` opens its connection of its own: needed only by those who
    listen (the hub), so a store made without it refuses to.
    """

    def __init__(self, pool: asyncpg.Pool[Any], *, dsn: str | None = None) -> None:
        self._pool = pool
        self._dsn = dsn

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

    async def notify_question(self, body: str) -> None:
        """Deliver one question (its JSON body) to whoever listens on the channel."""
        with map_db_errors():
            await self._pool.execute(queries["notify_question"], QUESTIONS_CHANNEL, body)

    @contextlib.asynccontextmanager
    async def question_feed(
        self, *, buffer: int = 1000
    ) -> AsyncIterator[anyio.abc.ObjectReceiveStream[dict[str, Any]]]:
        """Questions as daemons deliver them, for as long as the context lasts.

        One held connection LISTENs on the questions channel; each notification's JSON
        body arrives on the stream. The stream ends when that connection is lost. A
        reader that falls `buffer` questions behind loses the newest ones rather than
        stalling asyncpg.
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

        pool = self._pool
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
                anyio.move_on_after(CLOSE_S),
                contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError),
            ):
                await conn.remove_listener(QUESTIONS_CHANNEL, notified)
            await release(pool, conn)

    @contextlib.asynccontextmanager
    async def listen(
        self, channels: Sequence[str], notified: Callable[[str, str], None]
    ) -> AsyncIterator[Listener]:
        """LISTEN on `channels` over a connection of its own (not one of the pool's,
        which it would hold for good) for as long as the context lasts; each
        notification calls `notified(channel, payload)`. The connection is closed on
        the way out, cancelled or not."""
        if self._dsn is None:
            raise ValueError("this WorkStore was made without a DSN: it cannot listen")

        def relay(_conn: Any, _pid: int, channel: str, payload: object) -> None:
            notified(channel, str(payload))

        conn = await connect(self._dsn)
        try:
            with map_db_errors():
                for channel in channels:
                    await conn.add_listener(channel, relay)
            yield Listener(conn)
        finally:
            await close(conn)


class Listener:
    """The connection `WorkStore.listen` holds, as its holder sees it."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self._conn = conn

    @property
    def alive(self) -> bool:
        return not self._conn.is_closed()

    async def check(self) -> None:
        """One round trip: a connection the network dropped fails it (no notification
        would ever say so)."""
        with map_db_errors():
            await self._conn.execute(queries["ping"])


# The channel the daemons NOTIFY on when they deliver a question (daemon/work/delivery.py)
# and redeliver it on a restoration (RestorationStore.notify_questions).
QUESTIONS_CHANNEL = "supervisor_questions"
