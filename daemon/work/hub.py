"""Wakes supervisors waiting for answers and task results.

The database is the source of truth: a waiter checks it, then sleeps until a
notification on its channel (LISTEN supervisor_answers / supervisor_tasks) or the
polling interval, whichever comes first, and checks again. A check that meets a
database outage is retried until the database is back: a waiter waits through it. A
lost listener connection is reconnected with backoff, cut short by the first call that
gets through after an outage; meanwhile polling alone keeps every waiter moving, so an
answer still arrives within the polling interval.
"""

from __future__ import annotations

import uuid

import anyio

from daemon.db import outage
from daemon.db.outage import through_outage
from daemon.errors import DaemonError
from daemon.logs import get_logger
from daemon.models import FINISHED_TASK_STATES
from daemon.store import WorkStore

log = get_logger()
CHANNELS = ("supervisor_answers", "supervisor_tasks")


class Hub:
    def __init__(self, store: WorkStore, *, poll_s: float = 1.0, reconnect_s: float = 0.5) -> None:
        """`store` answers the checks and listens (it needs its DSN for that)."""
        self._store = store
        self._poll_s = poll_s
        self._reconnect_s = reconnect_s  # the first wait before reconnecting; doubles
        self._changed = {channel: anyio.Event() for channel in CHANNELS}
        self.listening = False

    def _notified(self, channel: str, _payload: str) -> None:
        event = self._changed[channel]
        self._changed[channel] = anyio.Event()
        event.set()

    async def _wait(self, channel: str) -> None:
        with anyio.move_on_after(self._poll_s):
            await self._changed[channel].wait()

    async def wait_answer(self, question_id: uuid.UUID) -> tuple[str, str | None]:
        """The answer to a question (and who gave it), once there is one."""
        while True:
            row = await through_outage(
                lambda: self._store.get_answer(question_id),
                what="an answer", question_id=str(question_id),
            )  # fmt: skip
            if row is not None:
                return str(row["answer"]), row["answered_by"]
            await self._wait("supervisor_answers")

    async def answer_of(self, question_id: uuid.UUID) -> tuple[str, str | None, uuid.UUID] | None:
        """The answer recorded for a question (text, who, its supervisor), or None."""
        row = await through_outage(
            lambda: self._store.get_answer(question_id),
            what="an answer", question_id=str(question_id),
        )  # fmt: skip
        if row is None:
            return None
        return str(row["answer"]), row["answered_by"], row["supervisor_id"]

    async def wait_tasks(self, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The statuses of `task_ids` once every one has finished."""
        while True:
            statuses = await through_outage(
                lambda: self._store.task_statuses(task_ids), what="task statuses"
            )
            if all(statuses.get(t) in FINISHED_TASK_STATES for t in task_ids if t in statuses):
                return statuses
            await self._wait("supervisor_tasks")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep a LISTEN connection open, reconnecting with backoff when it drops."""
        task_status.started()
        backoff = self._reconnect_s
        while True:
            try:
                async with self._store.listen(CHANNELS, self._notified) as listener:
                    self.listening = True
                    log.info("listener.connected", channels=list(CHANNELS))
                    backoff = self._reconnect_s
                    while listener.alive:
                        await anyio.sleep(self._poll_s * 5)
                        await listener.check()
            except DaemonError as exc:
                log.warning("listener.lost", error=str(exc), retry_in_s=backoff)
            finally:
                self.listening = False
            # Back off, but only until a call gets through again (daemon.db.outage):
            # meanwhile the waiters poll, each check a statement.
            outage.failed()
            await outage.sleep_out(backoff)
            backoff = min(backoff * 2, max(10.0, self._reconnect_s))
