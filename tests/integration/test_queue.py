"""The persistence queue on real PostgreSQL: durability, order, isolation, backpressure."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.models import SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.queue import EventRejectedError, PersistenceQueue, QueueClosedError
from daemon.store import EventStore, Store
from tests.factories import new_question, new_state
from tests.queues import running, submit_together


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
    assert journal[4]["payload"] == {"phase": "implement"}
    assert len({e["event_id"] for e in journal}) == 8
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


async def _journal(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> list[dict[str, Any]]:
    return await EventStore(pool).list_events(sid, limit=1_000_000)


async def test_bad_event_fails_alone(
    queue: PersistenceQueue, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    ids = await _supervisors(store, 3)
    # Passes no validation on purpose: the database's CHECK constraint refuses it.
    bad = events.Event(
        events.EventKind.STATE_CHANGED, ids[1], {"state": "dancing", "errorMessage": None}
    )
    good = [events.activity_reported(sid, f"fine {n}") for n, sid in enumerate(ids)]
    results = await submit_together(queue, [good[0], bad, good[1], good[2]])
    assert isinstance(results[bad.id], EventRejectedError)
    assert "supervisor_states_state_check" in str(results[bad.id])
    assert all(results[e.id] is None for e in good)
    for n, sid in enumerate(ids):
        loaded = await store.get_supervisor(sid)
        assert loaded is not None
        assert loaded.current_activity == f"fine {n}"
        assert loaded.state is SupervisorStateKind.INITIALIZING
    assert queue.counters.rejected == 1


async def test_a_task_id_already_taken_fails_its_event_alone(
    queue: PersistenceQueue, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    ids = await _supervisors(store, 2)
    taken = uuid.uuid4()
    await queue.submit(events.task_spawned(ids[0], taken))
    reuse = events.task_spawned(ids[1], taken)
    fine = events.task_spawned(ids[1], uuid.uuid4())
    outcomes = await submit_together(queue, [reuse, fine])
    assert isinstance(outcomes[reuse.id], EventRejectedError)
    assert "supervisor_tasks_pkey" in str(outcomes[reuse.id])
    assert outcomes[fine.id] is None
    owner = await pool.fetchval("SELECT supervisor_id FROM supervisor_tasks WHERE id = $1", taken)
    assert owner == ids[0]
    loaded = await store.get_supervisor(ids[1])
    assert loaded is not None
    assert taken not in loaded.spawned_task_ids
    assert len(loaded.spawned_task_ids) == 1


async def test_unknown_supervisor_fails_alone(queue: PersistenceQueue, store: Store) -> None:
    (sid,) = await _supervisors(store, 1)
    ghost = uuid.uuid4()
    outcome: list[str] = []

    async def send(event: events.Event, name: str) -> None:
        try:
            await queue.submit(event)
            outcome.append(f"{name} ok")
        except EventRejectedError:
            outcome.append(f"{name} rejected")

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, events.activity_reported(ghost, "nobody"), "ghost")
        tg.start_soon(send, events.activity_reported(sid, "somebody"), "real")
    assert sorted(outcome) == ["ghost rejected", "real ok"]


async def test_order_per_supervisor_holds_under_concurrency(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    ids = await _supervisors(store, 20)
    submitted: dict[uuid.UUID, list[str]] = {sid: [] for sid in ids}
    async with running(PersistenceQueue(EventStore(pool), lanes=3, batch_size=37)) as queue:

        async def writer(sid: uuid.UUID, stream: int) -> None:
            for n in range(25):
                event = events.activity_reported(sid, f"{stream}-{n}")
                submitted[sid].append(event.id)  # submission order, before awaiting
                await queue.submit(event)

        async with anyio.create_task_group() as tg:
            for sid in ids:
                for stream in range(4):  # four concurrent writers per supervisor
                    tg.start_soon(writer, sid, stream)
    for sid in ids:
        journal = await _journal(pool, sid)
        assert [str(e["event_id"]) for e in journal] == submitted[sid]
        assert [e["seq"] for e in journal] == list(range(1, 101))
        loaded = await store.get_supervisor(sid)
        assert loaded is not None
        last = next(e for e in reversed(journal))
        assert loaded.current_activity == last["payload"]["activity"]


async def test_full_queue_makes_submitters_wait(pool: asyncpg.Pool[Any], store: Store) -> None:
    (sid,) = await _supervisors(store, 1)
    queue = PersistenceQueue(EventStore(pool), max_events=5)
    done = 0

    async def send(n: int) -> None:
        nonlocal done
        await queue.submit(events.activity_reported(sid, f"a{n}"))
        done += 1

    async with anyio.create_task_group() as tg:
        for n in range(12):
            tg.start_soon(send, n)
        # No flusher yet: five are accepted, the rest wait for room.
        with anyio.fail_after(5):
            while queue.counters.backpressure_waits < 7:
                await anyio.sleep(0.001)
        assert queue.queued == 5
        assert done == 0
        flusher = asyncio.create_task(queue.run())
    assert done == 12
    await queue.drain()
    await flusher
    assert len(await _journal(pool, sid)) == 12


async def test_drain_writes_every_accepted_event(pool: asyncpg.Pool[Any], store: Store) -> None:
    ids = await _supervisors(store, 10)
    queue = PersistenceQueue(EventStore(pool), batch_size=50)
    flusher = asyncio.create_task(queue.run())
    submitters = [
        asyncio.create_task(queue.submit(events.activity_reported(sid, f"n{n}")))
        for sid in ids
        for n in range(30)
    ]
    await asyncio.sleep(0)  # every submitter has queued its event
    assert queue.queued + queue.counters.written == 300
    report = await queue.drain()
    await flusher
    assert report.abandoned == 0
    await asyncio.gather(*submitters)  # all acknowledged
    for sid in ids:
        assert len(await _journal(pool, sid)) == 30
    with pytest.raises(QueueClosedError):
        await queue.submit(events.activity_reported(ids[0], "late"))


async def test_heartbeats_of_many_supervisors_cost_one_statement(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    ids = await _supervisors(store, 300)
    queue = PersistenceQueue(EventStore(pool), lanes=1)
    for sid in ids:
        queue.submit_nowait(events.heartbeat(sid))
        queue.submit_nowait(events.progress_reported(sid, 10))
        queue.submit_nowait(events.progress_reported(sid, 20))  # only the newest counts
    async with running(queue):
        pass
    assert queue.counters.batches == 1
    rows = await pool.fetch("SELECT progress FROM supervisor_states WHERE id = ANY($1)", ids)
    assert {row["progress"] for row in rows} == {20}
    assert await pool.fetchval("SELECT count(*) FROM supervisor_events") == 0


async def test_progress_older_than_a_state_change_does_not_win(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    (sid,) = await _supervisors(store, 1)
    queue = PersistenceQueue(EventStore(pool), lanes=1)
    queue.submit_nowait(events.progress_reported(sid, 40))  # before the completion
    completion = asyncio.create_task(queue.submit(events.completed(sid)))
    await asyncio.sleep(0)
    async with running(queue):
        await completion
    loaded = await store.get_supervisor(sid)
    assert loaded is not None
    assert (loaded.state, loaded.progress) == (SupervisorStateKind.COMPLETED, 100)


async def test_a_stale_epoch_cannot_write(
    queue: PersistenceQueue, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    """Fencing: a daemon that lost a supervisor (its epoch moved on) writes nothing."""
    (sid,) = await _supervisors(store, 1)
    await pool.execute("UPDATE supervisor_states SET owner_epoch = 7 WHERE id = $1", sid)
    with pytest.raises(EventRejectedError, match="epoch"):
        await queue.submit(events.activity_reported(sid, "old owner", epoch=6))
    await queue.submit(events.activity_reported(sid, "new owner", epoch=7))
    loaded = await store.get_supervisor(sid)
    assert loaded is not None
    assert loaded.current_activity == "new owner"
    assert [e["payload"]["activity"] for e in await _journal(pool, sid)] == ["new owner"]
