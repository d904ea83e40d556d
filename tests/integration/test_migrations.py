"""The migration runner on real PostgreSQL: order, records, checksums, upgrades."""

from __future__ import annotations

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
from daemon.db.pool import connect
from daemon.db.queries import queries
from daemon.errors import MigrationError

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
