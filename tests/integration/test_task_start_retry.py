"""A task start whose commit the daemon never saw is its own on the retry.

The task's start (pending -> running under the owner's epoch) waits on the server for a
row another connection holds; a loopback proxy resets the daemon's connection while the
server goes on; the retry waits too. When the row is let go, the first attempt commits
and the retry must find the task started by itself, not by someone else: otherwise the
task never runs and its supervisor waits for it forever.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import asyncpg

from daemon.db.outage import through_outage
from daemon.store import Store, TaskChange, WorkStore
from tests.factories import new_state
from tests.pg import until_lock_waiters
from tests.proxy import ResettingProxy
from tests.queues import spawn


async def test_a_start_retried_after_a_lost_reply_is_the_callers_own(
    dsn: str, pool: asyncpg.Pool[Any], store: Store
) -> None:
    sid = (await store.save_supervisor_state_full(new_state())).id
    task_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO daemons (id, hostname, pid, version, lease_expires_at)"
        " VALUES ('d1', 'h', 1, 'v', now() + interval '1 hour')"
    )
    await pool.execute(
        "UPDATE supervisors SET owner_daemon_id = 'd1', owner_epoch = 7 WHERE id = $1", sid
    )
    await spawn(pool, sid, task_id, spec={"command": "true"})
    outcome: list[TaskChange] = []
    watcher = await asyncpg.connect(dsn)
    locker = await asyncpg.connect(dsn)
    async with ResettingProxy(dsn) as proxy:
        qpool = await proxy.pool()
        work = WorkStore(qpool)
        try:
            hold = locker.transaction()
            await hold.start()
            await locker.execute("SELECT 1 FROM supervisor_tasks WHERE id = $1 FOR UPDATE", task_id)

            async def start() -> None:
                change = await through_outage(
                    lambda: work.start_task(task_id, supervisor_id=sid, daemon_id="d1", epoch=7),
                    what="a task's start", initial_s=0.01,
                )  # fmt: skip
                outcome.append(change)

            async with anyio.create_task_group() as tg:
                tg.start_soon(start)
                await until_lock_waiters(watcher, 1)  # the start waits for the task's row
                assert proxy.reset_clients() >= 1
                await until_lock_waiters(watcher, 2)  # ... and so does its retry
                await hold.commit()
        finally:
            await qpool.close()
            await locker.close()
            await watcher.close()

    assert outcome == [TaskChange(owned=True, changed=True)]
    row = await pool.fetchrow("SELECT status, runs FROM supervisor_tasks WHERE id = $1", task_id)
    assert row is not None
    assert (row["status"], row["runs"]) == ("running", 1)
