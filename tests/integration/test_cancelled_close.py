"""Cleanup that a cancellation (or a close that hangs) must not skip, on real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from daemon.config import load_settings
from daemon.db import migrations, pool
from daemon.db.database import open_database
from daemon.db.pool import connect

DEADLINE_S = 10.0  # far above what each step takes; only a hang reaches it


async def test_a_cancelled_migration_gives_the_migration_lock_back(
    dsn: str, tmp_path: Path
) -> None:
    # A migration that waits for a table another session holds: cancelled while it waits.
    (tmp_path / "20990101000000_waits.sql").write_text("LOCK TABLE blocker;\n")
    holder, migrator, other = await connect(dsn), await connect(dsn), await connect(dsn)
    try:
        await holder.execute("CREATE TABLE blocker (id int)")
        await holder.execute("BEGIN; LOCK TABLE blocker")
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: migrations.migrate(migrator, directory=tmp_path))
                pid = migrator.get_server_pid()
                while not await other.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
                ):
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        # Another runner (a daemon starting next) can take the lock at once.
        assert await other.fetchval(
            "SELECT pg_try_advisory_lock($1)", migrations.MIGRATION_LOCK_KEY
        )
    finally:
        for conn in (holder, migrator, other):
            conn.terminate()


async def test_a_pool_closes_even_when_a_connection_never_comes_back(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg's close waits for every connection taken from the pool: one that a stuck
    # job holds would keep the daemon from ever exiting.
    monkeypatch.setattr(pool, "CLOSE_S", 0.2)
    settings = load_settings({"SUPERVISOR_DAEMON_DATABASE_URL": dsn})
    with anyio.fail_after(DEADLINE_S):
        async with open_database(settings) as db:
            held = await db.pool.acquire()
            pid = await held.fetchval("SELECT pg_backend_pid()")
    other = await connect(dsn)
    try:
        # Its session ends (the server notices the cut socket in its own time).
        with anyio.fail_after(DEADLINE_S):
            while await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                await anyio.sleep(0.01)
    finally:
        await other.close()
