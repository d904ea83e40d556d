"""A commit still running on the server when the retry starts is applied once.

The queue writes through a loopback proxy to PostgreSQL. Another connection holds the
supervisor's row, so the batch waits on the server; the proxy then resets the queue's
connection (the server goes on) and the queue retries on a new one, which waits too.
When the row is let go, the first attempt commits and the retry must find it applied:
the event is acknowledged, in the journal once, and the row it inserts (a task, a
message) exists once.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore, Store
from tests.factories import new_state
from tests.pg import until_lock_waiters
from tests.proxy import ResettingProxy
from tests.queues import running


@pytest.mark.parametrize("kind", ["task", "message"])
async def test_retry_of_a_commit_still_running_on_the_server_applies_it_once(
    dsn: str, pool: asyncpg.Pool[Any], store: Store, kind: str
) -> None:
    sid = (await store.save_supervisor_state_full(new_state())).id  # one message already
    task_id = uuid.uuid4()
    event = (
        events.task_spawned(sid, task_id, spec={"kind": "review"})
        if kind == "task"
        else events.message_appended(sid, {"role": "assistant", "content": "once"})
    )
    outcome: dict[str, Any] = {}
    watcher = await asyncpg.connect(dsn)
    locker = await asyncpg.connect(dsn)
    async with ResettingProxy(dsn) as proxy:
        qpool = await proxy.pool()
        queue = PersistenceQueue(EventStore(qpool), lanes=1, retry_initial_s=0.01)
        try:
            async with running(queue):
                hold = locker.transaction()
                await hold.start()
                await locker.execute(
                    "SELECT 1 FROM supervisor_states WHERE id = $1 FOR UPDATE", sid
                )

                async def submit() -> None:
                    try:
                        await queue.submit(event)
                        outcome["acknowledged"] = True
                    except Exception as exc:  # noqa: BLE001 - the test reports it
                        outcome["error"] = exc

                async with anyio.create_task_group() as tg:
                    tg.start_soon(submit)
                    await until_lock_waiters(watcher, 1)  # the batch waits for the row
                    assert proxy.reset_clients() >= 1
                    await until_lock_waiters(watcher, 2)  # ... and so does the retry
                    await hold.commit()  # the first attempt commits, then the retry runs
        finally:
            await qpool.close()
            await locker.close()
            await watcher.close()

    assert outcome == {"acknowledged": True}
    assert queue.counters.retries >= 1
    journal = await EventStore(pool).list_events(sid)
    assert [str(e["event_id"]) for e in journal] == [event.id]
    assert (
        await pool.fetchval("SELECT last_event_seq FROM supervisor_states WHERE id = $1", sid) == 1
    )
    counts = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM supervisor_tasks WHERE supervisor_id = $1) AS tasks,"
        " (SELECT count(*) FROM supervisor_messages WHERE supervisor_id = $1) AS messages,"
        " task_seq, message_seq FROM supervisors WHERE id = $1",
        sid,
    )
    assert counts is not None
    expected = (1, 1, 1, 1) if kind == "task" else (0, 2, 0, 2)
    assert tuple(counts.values()) == expected
