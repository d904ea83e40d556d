"""Upgrading a database written by the release before histories and tasks became rows:
nothing lost, checkpoints restorable."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from daemon.db import migrations
from daemon.db.pool import connect, init_connection
from daemon.db.queries import queries
from daemon.restoration.run import restore_manually
from daemon.store import RestorationStore

BEFORE_ROWS = "20260815000000_daemon_capacity.sql"


async def _fill_current_release(conn: asyncpg.Connection[Any]) -> dict[str, Any]:
    """A database as the release before messages became rows writes it: histories and
    task ids as arrays, checkpoints with copies of both, a journal, answers."""
    sids = [uuid.uuid4() for _ in range(4)]
    tasks = {sid: [uuid.uuid4() for _ in range(3)] for sid in sids}
    ghost = uuid.uuid4()  # listed as spawned, no task row: restoration must still see it
    histories: dict[uuid.UUID, Any] = {
        sids[0]: [{"role": "user", "content": f"message {n} " + "x" * n} for n in range(40)],
        sids[1]: [],
        sids[2]: ["a plain string", 7, {"nested": {"list": [1, 2]}}],
        sids[3]: {"not": "an array"},  # what an older writer may leave: kept, reported
    }
    for n, sid in enumerate(sids):
        spawned = [*tasks[sid], ghost] if n == 1 else tasks[sid]
        await conn.execute(
            "INSERT INTO supervisor_states (id, contract_id, task_id, phase, state,"
            " conversation_history, spawned_task_ids, pending_task_ids, last_event_seq)"
            " VALUES ($1, $2, $3, 'implement', 'working', $4, $5, $6, 2)",
            sid, uuid.uuid4(), uuid.uuid4(), histories[sid], spawned, tasks[sid][-1:],
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO supervisor_tasks (id, supervisor_id, status) VALUES ($1, $2, $3)",
            [(t, sid, "succeeded" if i else "running") for i, t in enumerate(tasks[sid])],
        )
        event_ids = [uuid.uuid4(), uuid.uuid4()]
        await conn.execute(
            "INSERT INTO supervisor_events (supervisor_id, first_seq, last_seq, last_event_id,"
            " events) VALUES ($1, 1, 2, $2, $3::text::json)",
            sid, event_ids[1],
            json.dumps([[str(event_ids[0]), "phase_changed", {"phase": "implement"}],
                        [str(event_ids[1]), "activity_reported", {"activity": "coding"}]]),
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO question_answers (question_id, supervisor_id, answer)"
            " VALUES ($1, $2, 'yes')",
            uuid.uuid4(), sid,
        )  # fmt: skip
    # A checkpoint whose copies are a prefix of what is stored now (becomes positions),
    # and one whose history was replaced since (keeps its copy).
    await conn.execute(
        "INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot, event_seq)"
        " SELECT id, phase, jsonb_set(to_jsonb(s), '{conversation_history}',"
        " (SELECT jsonb_agg(e ORDER BY o) FROM jsonb_array_elements(conversation_history)"
        "  WITH ORDINALITY AS x(e, o) WHERE o <= 25)) - 'owner_daemon_id' - 'owner_epoch', 1"
        " FROM supervisor_states s WHERE id = $1",
        sids[0],
    )
    stale = [{"role": "user", "content": "a history that was replaced since"}]
    await conn.execute(
        "INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot, event_seq)"
        " SELECT id, 'plan', jsonb_set(to_jsonb(s), '{conversation_history}', $2::jsonb), 1"
        " FROM supervisor_states s WHERE id = $1",
        sids[2], stale,
    )  # fmt: skip
    before = {
        "states": {
            row["id"]: dict(row) for row in await conn.fetch("SELECT * FROM supervisor_states")
        },
        "journal": {
            sid: await conn.fetch(queries["list_supervisor_events"], sid, 0, 100) for sid in sids
        },
        "checkpoints": await conn.fetch(
            "SELECT id, supervisor_id, snapshot FROM supervisor_checkpoints ORDER BY id"
        ),
        "answers": await conn.fetch("SELECT * FROM question_answers ORDER BY question_id"),
        "tasks": await conn.fetch(
            "SELECT id, supervisor_id, status FROM supervisor_tasks ORDER BY id"
        ),
    }
    return {"sids": sids, "tasks": tasks, "ghost": ghost, "stale": stale, "before": before}


async def test_a_database_of_the_release_before_rows_upgrades_with_nothing_lost(
    empty_dsn: str,
) -> None:
    conn = await connect(empty_dsn)
    try:
        await migrations.migrate(conn, target=BEFORE_ROWS)
        filled = await _fill_current_release(conn)
        before = filled["before"]
        sids = filled["sids"]
        rows = "20260901000000_what_grows_as_rows.sql"
        assert await migrations.migrate(conn, target=rows) == [rows]

        # Read by the original names, every state is what it was, arrays included.
        after = {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM supervisor_states")}
        assert after == before["states"]
        # ... and what grows is now rows.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM supervisor_messages WHERE supervisor_id = $1", sids[0]
            )
            == 40
        )
        lengths = dict(await conn.fetch("SELECT id, message_seq FROM supervisors"))
        assert [lengths[sid] for sid in sids] == [40, 0, 3, 0]
        spawned = await conn.fetch(
            "SELECT id, spawn_seq FROM supervisor_tasks WHERE supervisor_id = $1"
            " ORDER BY spawn_seq",
            sids[0],
        )
        assert [(r["id"], r["spawn_seq"]) for r in spawned] == [
            (t, n) for n, t in enumerate(filled["tasks"][sids[0]], 1)
        ]
        assert await conn.fetchval(
            "SELECT unrecorded_task_ids FROM supervisors WHERE id = $1", sids[1]
        ) == [filled["ghost"]]
        assert await conn.fetchval(
            "SELECT legacy_history FROM supervisors WHERE id = $1", sids[3]
        ) == {"not": "an array"}
        for sid in sids:
            journal = await conn.fetch(queries["list_supervisor_events"], sid, 0, 100)
            assert journal == before["journal"][sid]
        assert (
            await conn.fetch("SELECT * FROM question_answers ORDER BY question_id")
            == (before["answers"])
        )
        assert (
            await conn.fetch("SELECT id, supervisor_id, status FROM supervisor_tasks ORDER BY id")
            == before["tasks"]
        )

        # Checkpoints: a copy that is a prefix of the stored history became a position;
        # the other kept its copy. Both restore what they held.
        checkpoints = {
            r["supervisor_id"]: r
            for r in await conn.fetch("SELECT * FROM supervisor_checkpoints ORDER BY id")
        }
        assert len(checkpoints) == len(before["checkpoints"]) == 2
        assert (checkpoints[sids[0]]["message_seq"], checkpoints[sids[0]]["task_seq"]) == (25, 3)
        assert "conversation_history" not in checkpoints[sids[0]]["snapshot"]
        assert checkpoints[sids[2]]["message_seq"] is None
        assert checkpoints[sids[2]]["snapshot"]["conversation_history"] == filled["stale"]
    finally:
        await conn.close()
    await _restore_from_upgraded_checkpoints(empty_dsn, filled)


async def _restore_from_upgraded_checkpoints(dsn: str, filled: dict[str, Any]) -> None:
    """Invalid states fall back to the upgraded checkpoints: the positional one restores
    the history up to its position, the copied one its copy."""
    sids, history = filled["sids"], filled["before"]["states"][filled["sids"][0]]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init_connection)
    assert pool is not None
    try:
        # Another tool writing a bad value (fault injection), not a write the daemon makes.
        await pool.execute(
            "UPDATE supervisors SET state = 'waiting_for_user' WHERE id = ANY ($1)",
            [sids[0], sids[2]],
        )
        first = await restore_manually(RestorationStore(pool), sids[0])
        assert first is not None
        assert first.action.value == "use_checkpoint"
        assert first.context.history_length == 25
        assert (
            list(first.context.conversation_history) == (history["conversation_history"][:25][-25:])
        )
        row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", sids[0])
        assert row is not None
        assert row["conversation_history"] == history["conversation_history"][:25]
        second = await restore_manually(RestorationStore(pool), sids[2])
        assert second is not None
        assert second.action.value == "use_checkpoint"
        row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", sids[2])
        assert row is not None
        assert row["conversation_history"] == filled["stale"]
    finally:
        await pool.close()
