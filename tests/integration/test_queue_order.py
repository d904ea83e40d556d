"""Progress and activity never move backwards, on real PostgreSQL.

A coalesced report (progress, activity) is newer than the events queued before it and
older than the ones after. When a batch is capped at its size, or split to isolate a
refused event, the report must still be written after the older events and before
the newer ones: the last value written is the newest reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.models import SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.queue import EventRejectedError, PersistenceQueue
from daemon.store import EventStore, Store
from tests.factories import new_state
from tests.queues import running, spawn


async def _activity(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> tuple[str, int]:
    row = await pool.fetchrow(
        "SELECT current_activity, progress FROM supervisor_states WHERE id = $1", sid
    )
    assert row is not None
    return row["current_activity"], row["progress"]


async def _by_lane(store: Store, in_zero: int, in_one: int) -> tuple[list[uuid.UUID], ...]:
    """New supervisors for a two-lane queue (a supervisor's lane is its id modulo 2)."""
    by_lane: dict[int, list[uuid.UUID]] = {0: [], 1: []}
    while len(by_lane[0]) < in_zero or len(by_lane[1]) < in_one:
        sid = (await store.save_supervisor_state_full(new_state())).id
        by_lane[sid.int % 2].append(sid)
    return by_lane[0][:in_zero], by_lane[1][:in_one]


@contextlib.asynccontextmanager
async def _row_locked(
    pool: asyncpg.Pool[Any], sid: uuid.UUID
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """`sid`'s row locked by another session (a batch writing it waits) until the
    yielded `release` is awaited, or the block ends."""
    locker = await pool.acquire()
    held = locker.transaction()
    await held.start()
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await held.rollback()

    try:
        await locker.execute("SELECT 1 FROM supervisors WHERE id = $1 FOR UPDATE", sid)
        yield release
    finally:
        await release()
        await pool.release(locker)


async def _under_way(queue: PersistenceQueue) -> None:
    with anyio.fail_after(5):
        while queue.longest_call_s() == 0:
            await asyncio.sleep(0.001)


async def test_a_report_queued_after_a_capped_batch_is_not_overwritten_by_older_events(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    sid = (await store.save_supervisor_state_full(new_state())).id
    queue = PersistenceQueue(EventStore(pool), lanes=1, batch_size=2)
    async with running(queue):
        # Queued in one go, before the flusher runs: three activities, then a report
        # newer than all three. With two events a batch, the third goes in a batch
        # of its own, after the report's.
        submits = [
            asyncio.ensure_future(queue.submit(events.activity_reported(sid, f"old {n}")))
            for n in range(3)
        ]
        await asyncio.sleep(0)  # each submit queues its event and waits
        queue.submit_nowait(events.progress_reported(sid, 50, activity="newest"))
        await asyncio.gather(*submits)
    assert await _activity(pool, sid) == ("newest", 50)


async def test_a_report_is_not_lost_nor_overtaken_when_a_batch_is_split(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    sid = (await store.save_supervisor_state_full(new_state())).id
    taken = uuid.uuid4()
    await spawn(pool, sid, taken)
    queue = PersistenceQueue(EventStore(pool), lanes=1)
    async with running(queue):
        # A refused event (its task id exists) first, an activity after it, then a
        # report newer than both: the batch is split to isolate the refused event.
        bad = asyncio.ensure_future(queue.submit(events.task_spawned(sid, taken)))
        older = asyncio.ensure_future(queue.submit(events.activity_reported(sid, "older")))
        await asyncio.sleep(0)
        queue.submit_nowait(events.progress_reported(sid, 70, activity="newest"))
        with pytest.raises(EventRejectedError):
            await bad
        await older
    assert await _activity(pool, sid) == ("newest", 70)


async def test_a_lane_taken_along_keeps_its_reports_after_its_events(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    (x, z), (y,) = await _by_lane(store, 2, 1)
    # Lane 1 waits for lane 0's batch as long as the test holds it.
    queue = PersistenceQueue(EventStore(pool), lanes=2, share_wait_s=30)
    # x's row locked elsewhere: lane 0's first batch stays under way until released.
    async with _row_locked(pool, x) as release, running(queue):
        first = asyncio.ensure_future(queue.submit(events.activity_reported(x, "x")))
        await _under_way(queue)
        # While it is: an event in lane 0, one in lane 1, and a report newer than the
        # latter. A lane with a few events waits for the batch under way; the next
        # batch takes both lanes' events, the report still after y's state change.
        later = [
            asyncio.ensure_future(queue.submit(events.activity_reported(z, "z"))),
            asyncio.ensure_future(
                queue.submit(events.state_changed(y, SupervisorStateKind.WORKING, progress=10))
            ),
        ]
        await asyncio.sleep(0)
        queue.submit_nowait(events.progress_reported(y, 50, activity="newest"))
        with anyio.fail_after(5):
            while queue.queued < 2:
                await asyncio.sleep(0.001)
        await release()
        await asyncio.gather(first, *later)
    assert queue.counters.batches == 2
    assert queue.counters.batch_events_max == 2
    assert await _activity(pool, y) == ("newest", 50)
    assert (await _activity(pool, z))[0] == "z"


async def test_a_lane_waits_for_a_batch_that_hangs_only_briefly(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    # x in lane 0, y in lane 1. x's row is locked elsewhere, so lane 0's batch hangs as a
    # batch on a connection the network lost would; y's event must not wait for it.
    (x,), (y,) = await _by_lane(store, 1, 1)
    queue = PersistenceQueue(EventStore(pool), lanes=2)
    async with _row_locked(pool, x) as release, running(queue):
        hung = asyncio.ensure_future(queue.submit(events.activity_reported(x, "x")))
        await _under_way(queue)
        with anyio.fail_after(10):
            await queue.submit(events.activity_reported(y, "y"))
        assert not hung.done()
        assert (await _activity(pool, y))[0] == "y"
        await release()
        await hung
    assert (await _activity(pool, x))[0] == "x"
