"""Progress and activity never move backwards, on real PostgreSQL.

A coalesced report (progress, activity) is newer than the events queued before it and
older than the ones after. When a batch is capped at its size, or split to isolate a
refused event, the report must still be written after the older events and before
the newer ones: the last value written is the newest reported.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

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
