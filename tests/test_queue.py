"""The persistence queue on real PostgreSQL: durability, order, isolation, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from daemon import events
from daemon.models import SupervisorStateKind
from daemon.queue import EventRejectedError, PersistenceQueue, QueueClosedError
from daemon.store import EventStore, Store
from tests.factories import new_question, new_state


@contextlib.asynccontextmanager
async def running(q: PersistenceQueue) -> AsyncIterator[PersistenceQueue]:
    """The flusher in a task of its own; drained (and awaited, so errors surface) after."""
    flusher = asyncio.create_task(q.run())
    try:
        yield q
    finally:
        await q.drain()
        await flusher


@pytest.fixture
async def queue(pool: asyncpg.Pool[Any]) -> AsyncIterator[PersistenceQueue]:
    # Async fixtures run setup and teardown in different tasks, so the flusher cannot
    # live in a task group opened here; `running` watches it instead.
    async with running(PersistenceQueue(EventStore(pool), drain_timeout_s=10)) as q:
        yield q


async def _supervisors(store: Store, count: int) -> list[uuid.UUID]:
    ids = []
    for _ in range(count):
        state = await store.save_supervisor_state_full(new_state())
        ids.append(state.id)
    return ids


async def test_every_kind_is_written_and_journaled(
    queue: PersistenceQueue, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    (sid,) = await _supervisors(store, 1)
    task_id = uuid.uuid4()
    question = new_question()
    await queue.submit(events.state_changed(sid, SupervisorStateKind.WORKING, activity="go"))
    await queue.submit(events.task_spawned(sid, task_id, spec={"command": "true"}))
    await queue.submit(events.question_asked(sid, question))
    loaded = await store.get_supervisor(sid)
    assert loaded is not None
    assert loaded.state is SupervisorStateKind.WAITING_FOR_USER
    assert loaded.pending_questions == (question,)
    assert loaded.spawned_task_ids == (task_id,)
    assert loaded.pending_task_ids == (task_id,)
    task = await store.get_task(task_id)
    assert task is not None
    assert task.spec == {"command": "true"}

    await queue.submit(events.question_answered(sid, question.id, "yes", answered_by="op"))
    await queue.submit(events.phase_changed(sid, "implement"))
    await queue.submit(events.message_appended(sid, {"role": "assistant", "content": "hi"}))
    await queue.submit(events.activity_reported(sid, "coding"))
    await queue.submit(events.completed(sid))
    loaded = await store.get_supervisor(sid)
    assert loaded is not None
    assert loaded.pending_questions == ()
    assert loaded.state is SupervisorStateKind.COMPLETED
    assert loaded.progress == 100
    assert loaded.phase == "implement"
    assert loaded.current_activity == "coding"
    assert loaded.conversation_history[-1] == {"role": "assistant", "content": "hi"}

    journal = await EventStore(pool).list_events(sid)
    assert [e["seq"] for e in journal] == list(range(1, 9))
    assert [e["kind"] for e in journal] == [
        "state_changed",
        "task_spawned",
        "question_asked",
        "question_answered",
        "phase_changed",
        "message_appended",
        "activity_reported",
        "state_changed",
    ]
    checkpoint = await store.latest_checkpoint(sid)
    assert checkpoint is not None
    assert checkpoint["phase"] == "implement"
    assert checkpoint["snapshot"]["phase"] == "implement"
    answer = await pool.fetchrow(
        "SELECT * FROM question_answers WHERE question_id = $1", question.id
    )
    assert answer is not None
    assert answer["answer"] == "yes"
    assert answer["applied_at"] is not None
