"""The migration runner on real PostgreSQL: order, records, checksums, upgrades."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.db import migrations
from daemon.db.pool import connect, init_connection
from daemon.db.queries import queries
from daemon.errors import MigrationError
from daemon.restoration.run import restore_manually
from daemon.store import RestorationStore

FIRST = "20260101000000_supervisor_states.sql"
ENHANCED = "20260201000001_enhanced_supervisor_state.sql"

# The schema the code expects: every column SPEC.md names, plus the daemon's own.
# (supervisor_states is a view over supervisors and the rows of what grows.)
SUPERVISOR_STATE_COLUMNS = {
    "id",
    "contract_id",
    "task_id",
    "conversation_history",
    "pending_task_ids",
    "phase",
    "last_activity",
    "created_at",
    "updated_at",
    "state",
    "current_activity",
    "progress",
    "error_message",
    "spawned_task_ids",
    "pending_questions",
    "restoration_count",
    "last_restored_at",
    "restoration_source",
    "owner_daemon_id",
    "owner_epoch",
    "agent",
    "last_event_seq",
    "last_event_id",
    "restoration_window_started_at",
    "restorations_in_window",
}
EXPECTED_COLUMNS = {
    "supervisor_states": SUPERVISOR_STATE_COLUMNS,
    "supervisors": (SUPERVISOR_STATE_COLUMNS - {"conversation_history", "spawned_task_ids"})
    | {"message_seq", "task_seq", "legacy_history", "unrecorded_task_ids", "pruned_at"},
    "supervisor_messages": {"supervisor_id", "seq", "message", "created_at"},
    "daemons": {
        "id",
        "hostname",
        "pid",
        "version",
        "started_at",
        "heartbeat_at",
        "lease_expires_at",
        "stopped_at",
        "capacity",
        "token",
    },
    "supervisor_tasks": {
        "id",
        "supervisor_id",
        "status",
        "spec",
        "result",
        "created_at",
        "updated_at",
        "spawn_seq",
        "run_epoch",
        "runs",
    },
    "supervisor_checkpoints": {
        "id",
        "supervisor_id",
        "phase",
        "snapshot",
        "event_seq",
        "created_at",
        "message_seq",
        "task_seq",
    },
    "question_answers": {
        "question_id",
        "supervisor_id",
        "answer",
        "answered_by",
        "answered_at",
        "applied_at",
    },
    "supervisor_events": {
        "supervisor_id",
        "first_seq",
        "last_seq",
        "last_event_id",
        "events",
        "created_at",
    },
}


async def _columns(conn: asyncpg.Connection[Any], table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = $1 AND table_schema = current_schema()",
        table,
    )
    return {row["column_name"] for row in rows}


async def test_all_migrations_build_the_expected_schema(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    try:
        applied = await migrations.migrate(conn)
        assert applied == [m.name for m in migrations.discover()]
        for table, columns in EXPECTED_COLUMNS.items():
            assert await _columns(conn, table) == columns, table
        statuses = await migrations.status(conn)
        assert [s.state for s in statuses] == ["applied"] * len(applied)
        assert await migrations.migrate(conn) == []  # applied once each
    finally:
        await conn.close()


async def test_status_lists_pending_before_migrate(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    try:
        statuses = await migrations.status(conn)
        assert statuses
        assert {s.state for s in statuses} == {"pending"}
    finally:
        await conn.close()


async def test_edited_migration_is_refused_by_name(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.migrations_dir(), folder)
    conn = await connect(empty_dsn)
    try:
        await migrations.migrate(conn, directory=folder)
        edited = folder / ENHANCED
        edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationError, match=ENHANCED):
            await migrations.migrate(conn, directory=folder)
        statuses = {s.name: s.state for s in await migrations.status(conn, directory=folder)}
        assert statuses[ENHANCED] == "modified"
    finally:
        await conn.close()


async def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "add_things.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=re.escape("add_things.sql")):
        migrations.discover(tmp_path)


async def test_failed_migration_rolls_back_and_names_file(empty_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "20990101000000_broken.sql").write_text(
        "CREATE TABLE half_made (id int); SELECT no_such_function();"
    )
    conn = await connect(empty_dsn)
    try:
        with pytest.raises(MigrationError, match=re.escape("20990101000000_broken.sql")):
            await migrations.migrate(conn, directory=tmp_path)
        assert await conn.fetchval("SELECT to_regclass('half_made')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await conn.close()


async def _fill_pre_enhancement_rows(conn: asyncpg.Connection[Any]) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(25)]
    await conn.executemany(
        "INSERT INTO supervisor_states (id, contract_id, task_id, conversation_history,"
        " pending_task_ids, phase) VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (
                i,
                uuid.uuid4(),
                uuid.uuid4(),
                [{"role": "user", "content": f"msg {n}"}],
                [uuid.uuid4()],
                "implement",
            )
            for n, i in enumerate(ids)
        ],
    )
    return ids


async def _check_upgraded(conn: asyncpg.Connection[Any], ids: list[uuid.UUID]) -> None:
    rows = await conn.fetch("SELECT * FROM supervisor_states ORDER BY id")
    assert sorted(row["id"] for row in rows) == sorted(ids)
    for row in rows:
        assert row["state"] == "initializing"
        assert row["progress"] == 0
        assert row["spawned_task_ids"] == []
        assert row["pending_questions"] == []
        assert row["restoration_count"] == 0
        assert row["restoration_source"] is None
        assert row["phase"] == "implement"
        assert len(row["pending_task_ids"]) == 1
        assert row["conversation_history"][0]["role"] == "user"


async def test_upgrade_from_pre_enhancement_schema_keeps_rows(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    try:
        assert await migrations.migrate(conn, target=FIRST) == [FIRST]
        ids = await _fill_pre_enhancement_rows(conn)
        applied = await migrations.migrate(conn)
        assert applied[0] == ENHANCED
        await _check_upgraded(conn, ids)
    finally:
        await conn.close()


async def test_original_system_database_is_adopted_in_place(
    empty_dsn: str, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """A database the original system made (its table, no record of ours) upgrades."""
    conn = await connect(empty_dsn)
    try:
        first = next(m for m in migrations.discover() if m.name == FIRST)
        await conn.execute(first.sql)
        ids = await _fill_pre_enhancement_rows(conn)
        applied = await migrations.migrate(conn)
        assert FIRST not in applied
        assert ENHANCED in applied
        await _check_upgraded(conn, ids)
        assert {
            "event": "migration.adopted",
            "migration": FIRST,
            "log_level": "info",
        } in captured_logs
    finally:
        await conn.close()


async def test_two_runners_at_once_apply_each_file_once(empty_dsn: str) -> None:
    results: list[list[str]] = []

    async def run() -> None:
        conn = await connect(empty_dsn)
        try:
            results.append(await migrations.migrate(conn))
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(run)
    names = [m.name for m in migrations.discover()]
    assert sorted(results, key=len) == [[], names]


async def test_journal_written_as_jsonb_reads_back_after_the_json_migration(
    empty_dsn: str,
) -> None:
    """Segments written before the journal column became json keep their events."""
    conn = await connect(empty_dsn)
    try:
        await migrations.migrate(conn, target="20260401000000_restoration_window.sql")
        supervisor_id, event_id = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO supervisor_states (id, contract_id, task_id, phase)"
            " VALUES ($1, $2, $3, 'plan')",
            supervisor_id,
            uuid.uuid4(),
            uuid.uuid4(),
        )
        events = [{"e": str(event_id), "k": "phase_changed", "p": {"phase": "review"}}]
        await conn.execute(
            "INSERT INTO supervisor_events (supervisor_id, first_seq, last_seq,"
            " last_event_id, events) VALUES ($1, 1, 1, $2, $3)",
            supervisor_id,
            event_id,
            events,
        )
        assert "20260501000000_journal_json.sql" in await migrations.migrate(conn)
        listed = await conn.fetch(queries["list_supervisor_events"], supervisor_id, 0, 10)
        assert [(e["seq"], e["event_id"], e["kind"], e["payload"]) for e in listed] == [
            (1, event_id, "phase_changed", {"phase": "review"})
        ]
    finally:
        await conn.close()


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
