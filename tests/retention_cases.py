"""Supervisors in every case retention must tell apart, and the rows each one has."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from daemon.models import SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore, Store
from tests.factories import new_question, new_state
from tests.queues import ask, running

RETAINED_ROWS = {
    "messages": "supervisor_messages",
    "journal": "supervisor_events",
    "tasks": "supervisor_tasks",
    "checkpoints": "supervisor_checkpoints",
}


async def row_counts(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> dict[str, int]:
    return {
        name: await pool.fetchval(f"SELECT count(*) FROM {table} WHERE supervisor_id = $1", sid)
        for name, table in RETAINED_ROWS.items()
    }


async def finished_supervisor(
    pool: asyncpg.Pool[Any], store: Store, final: str | None, *, days_ago: float
) -> uuid.UUID:
    """A supervisor with 7 messages, 3 tasks, 1 checkpoint and a journal, ended in
    `final` (None: still working), last changed `days_ago` days ago."""
    sid = (await store.save_supervisor_state_full(new_state(conversation_history=()))).id
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(events.state_changed(sid, SupervisorStateKind.WORKING))
        for n in range(7):
            await queue.submit(events.message_appended(sid, {"n": n}))
        for _ in range(3):
            await queue.submit(events.task_spawned(sid, uuid.uuid4(), awaited=False))
        await queue.submit(events.phase_changed(sid, "implement"))
        if final == "completed":
            await queue.submit(events.completed(sid))
        elif final == "failed":
            await queue.submit(events.failed(sid, "gave up"))
    await pool.execute(
        "UPDATE supervisors SET updated_at = now() - make_interval(days => $2) WHERE id = $1",
        sid,
        days_ago,
    )
    return sid


async def retention_population(pool: asyncpg.Pool[Any], store: Store) -> dict[str, uuid.UUID]:
    """Two supervisors finished long ago, one finished recently, one still running and
    long idle, and one failed long ago with a question still pending."""
    found = {
        "completed_long_ago": await finished_supervisor(pool, store, "completed", days_ago=40),
        "failed_long_ago": await finished_supervisor(pool, store, "failed", days_ago=31),
        "completed_recently": await finished_supervisor(pool, store, "completed", days_ago=5),
        "running_long_idle": await finished_supervisor(pool, store, None, days_ago=90),
        "failed_with_a_question": await finished_supervisor(pool, store, "failed", days_ago=60),
    }
    asking = found["failed_with_a_question"]
    await ask(pool, asking, new_question())
    await pool.execute(
        "UPDATE supervisors SET state = 'failed', updated_at = now() - interval '60 days'"
        " WHERE id = $1",
        asking,
    )
    return found
