"""What grows with a supervisor's age is rows: messages, spawned tasks, checkpoint
positions; the supervisor_states view still reads (and writes) by the original names."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.agents.command import CommandAgent, Session
from daemon.agents.supervisor import Supervisor
from daemon.persistence import events
from daemon.persistence.queue import EventRejectedError, PersistenceQueue
from daemon.restoration.run import restore_manually
from daemon.store import EventStore, RestorationStore, Store
from tests.factories import new_message, new_state
from tests.queues import running, spawn, submit_together


async def _messages(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> list[tuple[int, Any]]:
    rows = await pool.fetch(
        "SELECT seq, message FROM supervisor_messages WHERE supervisor_id = $1 ORDER BY seq", sid
    )
    return [(row["seq"], row["message"]) for row in rows]


async def _spawned(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> list[tuple[int, uuid.UUID]]:
    rows = await pool.fetch(
        "SELECT spawn_seq, id FROM supervisor_tasks"
        " WHERE supervisor_id = $1 AND spawn_seq IS NOT NULL ORDER BY spawn_seq",
        sid,
    )
    return [(row["spawn_seq"], row["id"]) for row in rows]


async def test_appends_are_numbered_rows_in_order_within_and_across_batches(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    sid = (await store.save_supervisor_state_full(new_state(conversation_history=()))).id
    tasks = [uuid.uuid4() for _ in range(4)]
    async with running(PersistenceQueue(EventStore(pool), lanes=1)) as queue:
        # One batch: messages and tasks interleaved, folded into one row.
        first = [events.message_appended(sid, new_message(n)) for n in range(3)]
        first.insert(1, events.task_spawned(sid, tasks[0]))
        first.insert(3, events.task_spawned(sid, tasks[1], awaited=False))
        outcomes = await submit_together(queue, first)
        assert set(outcomes.values()) == {None}
        # Then one event per batch.
        for n in range(3, 5):
            await queue.submit(events.message_appended(sid, new_message(n)))
        for task_id in tasks[2:]:
            await queue.submit(events.task_spawned(sid, task_id))

    assert await _messages(pool, sid) == [(n + 1, new_message(n)) for n in range(5)]
    assert await _spawned(pool, sid) == [(n + 1, t) for n, t in enumerate(tasks)]
    counters = await pool.fetchrow(
        "SELECT message_seq, task_seq FROM supervisors WHERE id = $1", sid
    )
    assert counters is not None
    assert tuple(counters.values()) == (5, 4)
    whole = await store.get_supervisor(sid)
    assert whole is not None
    assert whole.conversation_history == tuple(new_message(n) for n in range(5))
    assert whole.spawned_task_ids == tuple(tasks)
    assert whole.pending_task_ids == (tasks[0], tasks[2], tasks[3])
    assert (whole.history_length, whole.spawned_task_count) == (5, 4)


async def test_a_fenced_event_inserts_no_rows(pool: asyncpg.Pool[Any], store: Store) -> None:
    sid = (await store.save_supervisor_state_full(new_state(conversation_history=()))).id
    await pool.execute("UPDATE supervisors SET owner_epoch = 7 WHERE id = $1", sid)
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        stale = [
            events.message_appended(sid, new_message(0), epoch=6),
            events.task_spawned(sid, uuid.uuid4(), epoch=6),
        ]
        outcomes = await submit_together(queue, stale)
        assert all(isinstance(exc, EventRejectedError) for exc in outcomes.values())
        await queue.submit(events.message_appended(sid, new_message(1), epoch=7))
    assert await _messages(pool, sid) == [(1, new_message(1))]
    assert await _spawned(pool, sid) == []


async def test_a_phase_change_checkpoints_positions_not_copies(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    sid = (await store.save_supervisor_state_full(new_state())).id  # one message
    task_id = uuid.uuid4()
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(events.message_appended(sid, new_message(1)))
        await queue.submit(events.task_spawned(sid, task_id))
        await queue.submit(events.phase_changed(sid, "implement"))
    checkpoint = await store.latest_checkpoint(sid)
    assert checkpoint is not None
    assert (checkpoint["message_seq"], checkpoint["task_seq"]) == (2, 1)
    assert "conversation_history" not in checkpoint["snapshot"]
    assert "spawned_task_ids" not in checkpoint["snapshot"]


async def test_a_fallback_rewinds_to_the_checkpoint_position(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    """Messages after the position are deleted (the journal keeps them); tasks spawned
    after it stay as rows but are no longer the supervisor's spawned tasks."""
    sid = (await store.save_supervisor_state_full(new_state(conversation_history=()))).id
    before, after = uuid.uuid4(), uuid.uuid4()
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        for n in range(60):
            await queue.submit(events.message_appended(sid, new_message(n)))
        await queue.submit(events.task_spawned(sid, before))
        await queue.submit(events.phase_changed(sid, "implement"))  # checkpoint: 60, 1
        for n in range(60, 70):
            await queue.submit(events.message_appended(sid, new_message(n)))
        await queue.submit(events.task_spawned(sid, after))
    # Another tool writing a bad value (fault injection), not a write the daemon makes.
    await pool.execute("UPDATE supervisors SET state = 'waiting_for_user' WHERE id = $1", sid)

    outcome = await restore_manually(RestorationStore(pool), sid, history_tail=5)
    assert outcome is not None
    assert outcome.action.value == "use_checkpoint"
    assert outcome.context.history_length == 60
    assert outcome.context.conversation_history == tuple(new_message(n) for n in range(55, 60))
    assert outcome.context.spawned_task_count == 1
    assert await _messages(pool, sid) == [(n + 1, new_message(n)) for n in range(60)]
    assert await _spawned(pool, sid) == [(1, before)]
    assert await pool.fetchval("SELECT count(*) FROM supervisor_tasks WHERE id = $1", after) == 1
    journal = await EventStore(pool).list_events(sid, limit=1000)
    assert sum(e["kind"] == "message_appended" for e in journal) == 70

    # Appends go on from the position.
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(events.message_appended(sid, "again"))
    assert (await _messages(pool, sid))[-1] == (61, "again")


async def test_restoration_loads_a_tail_and_the_length(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    history = tuple(new_message(n) for n in range(120))
    sid = (await store.save_supervisor_state_full(new_state(conversation_history=history))).id
    outcome = await restore_manually(RestorationStore(pool), sid, history_tail=50)
    assert outcome is not None
    assert outcome.action.value == "proceed"
    assert outcome.context.conversation_history == history[-50:]
    assert outcome.context.history_length == 120


async def test_a_running_supervisor_pages_its_history_but_holds_none(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    history = tuple(new_message(n) for n in range(30))
    state = await store.save_supervisor_state_full(new_state(conversation_history=history))
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        sup = Supervisor(
            state, queue=queue, hub=None, runner=None, deliver=None, reads=store,  # type: ignore[arg-type]
        )  # fmt: skip
        assert sup.state.conversation_history == ()
        assert sup.state.history_length == 30
        await sup.append_message(new_message(30))
        assert sup.state.history_length == 31
        newest = await sup.read_history(limit=10)
        assert [m.seq for m in newest] == list(range(22, 32))
        older = await sup.read_history(before=newest[0].seq, limit=10)
        assert [m.message for m in older] == list(history[11:21])
        assert await sup.read_history(before=1) == []
        for bad in ({"limit": 0}, {"limit": 1001}, {"before": 0}, {"limit": True}):
            with pytest.raises(ValueError, match="must be"):
                await sup.read_history(**bad)

        # The same through the agent protocol.
        session = Session(sup)
        reply = await session.handle(b'{"id": 1, "type": "read_history", "before": 3}')
        assert reply["type"] == "result", reply
        assert [(m["seq"], m["message"]) for m in reply["value"]] == [
            (1, new_message(0)),
            (2, new_message(1)),
        ]
        assert set(reply["value"][0]) == {"seq", "message", "createdAt"}
        for bad_request in (
            b'{"id": 2, "type": "read_history", "limit": "ten"}',
            b'{"id": 3, "type": "read_history", "limit": 5000}',
            b'{"id": 4, "type": "read_history", "before": -1}',
        ):
            refused = await session.handle(bad_request)
            assert refused["type"] == "error", refused


async def test_writers_through_the_view_append_rows_or_replace(pool: asyncpg.Pool[Any]) -> None:
    """The original system's tools write supervisor_states by its column names."""
    sid, task_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO supervisor_states (id, contract_id, task_id, phase, conversation_history)"
        " VALUES ($1, $2, $3, 'plan', $4)",
        sid, uuid.uuid4(), uuid.uuid4(), [new_message(0), new_message(1)],
    )  # fmt: skip
    first = await pool.fetchval(
        "SELECT ctid::text FROM supervisor_messages WHERE supervisor_id = $1 AND seq = 1", sid
    )
    await pool.execute(
        "UPDATE supervisor_states SET conversation_history = conversation_history || $2::jsonb,"
        " state = 'working' WHERE id = $1",
        sid, [new_message(2)],
    )  # fmt: skip
    assert await _messages(pool, sid) == [(n + 1, new_message(n)) for n in range(3)]
    # An append inserted a row; the ones before were not rewritten.
    assert first == await pool.fetchval(
        "SELECT ctid::text FROM supervisor_messages WHERE supervisor_id = $1 AND seq = 1", sid
    )
    await pool.execute(
        "INSERT INTO supervisor_tasks (id, supervisor_id) VALUES ($1, $2)", task_id, sid
    )
    await pool.execute(
        "UPDATE supervisor_states SET spawned_task_ids = spawned_task_ids || $2::uuid"
        " WHERE id = $1",
        sid, task_id,
    )  # fmt: skip
    assert await _spawned(pool, sid) == [(1, task_id)]
    await pool.execute(
        "UPDATE supervisor_states SET conversation_history = '[\"replaced\"]' WHERE id = $1", sid
    )
    assert await _messages(pool, sid) == [(1, "replaced")]
    row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", sid)
    assert row is not None
    assert (row["state"], row["conversation_history"], row["spawned_task_ids"]) == (
        "working",
        ["replaced"],
        [task_id],
    )
    await pool.execute("DELETE FROM supervisor_states WHERE id = $1", sid)
    assert await _messages(pool, sid) == []


async def test_an_older_writers_non_array_history_is_kept_and_reported(
    pool: asyncpg.Pool[Any],
) -> None:
    sid = uuid.uuid4()
    await pool.execute(
        "INSERT INTO supervisor_states (id, contract_id, task_id, phase, state,"
        " conversation_history) VALUES ($1, $1, $1, 'plan', 'working', '{\"not\": \"a list\"}')",
        sid,
    )
    history = await pool.fetchval(
        "SELECT conversation_history FROM supervisor_states WHERE id = $1", sid
    )
    assert history == {"not": "a list"}
    outcome = await restore_manually(RestorationStore(pool), sid)
    assert outcome is not None
    assert "conversation_history is not a JSON array" in outcome.validation.issues
    assert outcome.action.value == "start_fresh"
    history = await pool.fetchval(
        "SELECT conversation_history FROM supervisor_states WHERE id = $1", sid
    )
    assert history == []


async def test_concurrent_appends_through_the_queue_keep_every_message(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    sids = [
        (await store.save_supervisor_state_full(new_state(conversation_history=()))).id
        for _ in range(5)
    ]

    async with running(PersistenceQueue(EventStore(pool))) as queue:

        async def writer(sid: uuid.UUID) -> None:
            for n in range(40):
                await queue.submit(events.message_appended(sid, new_message(n)))

        async with anyio.create_task_group() as tg:
            for sid in sids:
                tg.start_soon(writer, sid)
    for sid in sids:
        assert await _messages(pool, sid) == [(n + 1, new_message(n)) for n in range(40)]


async def test_a_command_agent_starts_with_the_newest_messages_and_the_length(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    history = tuple(new_message(n) for n in range(80))
    state = await store.save_supervisor_state_full(new_state(conversation_history=history))
    task_id = (await spawn(pool, state.id, awaited=True)).id
    summary = await store.get_supervisor_summary(state.id)
    assert summary is not None
    sup = Supervisor(
        summary, queue=None, hub=None, runner=None, deliver=None,  # type: ignore[arg-type]
        reads=store, history_tail=30,
    )  # fmt: skip
    first = await CommandAgent(["true"])._first_message(sup)
    assert first["type"] == "start"
    assert first["historyLength"] == 80
    assert [m["message"] for m in first["historyTail"]] == list(history[-30:])
    assert first["spawnedTaskIds"] == [str(task_id)]
