"""The migration runner: ordered plain-SQL files, each applied once and recorded.

Files are `YYYYMMDDHHMMSS_description.sql`, applied in name order, each in its own
transaction together with its row in `schema_migrations` (name, sha256 checksum). An
applied file whose checksum changed stops everything with one error naming the file:
a database must never silently diverge from the code that reads it. A session-level
advisory lock serialises daemons that start together.

A database made by the original system has `supervisor_states` but no record of our
migrations; the runner adopts such tables (records the steps they already reflect)
instead of failing on CREATE TABLE, then applies the rest in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from daemon.db.pool import AnyConnection
from daemon.errors import DatabaseError, MigrationError, map_db_errors
from daemon.logs import get_logger

# Arbitrary but fixed: the advisory lock key every supervisor-daemon uses for migrations.
MIGRATION_LOCK_KEY = 0x5D_A3_1C_00
UNLOCK_S = 5.0  # the longest the unlock may take before the session is ended instead
_NAME = re.compile(r"^\d{14}_[a-z0-9_]+\.sql$")
_ORIGINAL_TABLE = "20260101000000_supervisor_states.sql"
_ORIGINAL_ENHANCEMENT = "20260201000001_enhanced_supervisor_state.sql"

log = get_logger()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    name: str
    sql: str
    checksum: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MigrationStatus:
    name: str
    state: str  # applied | pending | modified | unknown (in the database, not on disk)
    applied_at: datetime | None


def migrations_dir() -> Path:
    """Top-level migrations/ in a source checkout, daemon/_migrations in a wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("no migrations directory found next to the daemon package")


def discover(directory: Path | None = None) -> list[Migration]:
    folder = directory or migrations_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        if not _NAME.match(path.name):
            raise MigrationError(
                f"migration file {path.name} is not named YYYYMMDDHHMMSS_description.sql"
            )
        data = path.read_bytes()
        found.append(
            Migration(name=path.name, sql=data.decode(), checksum=hashlib.sha256(data).hexdigest())
        )
    return found


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def _applied(conn: AnyConnection) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("SELECT name, checksum, applied_at FROM schema_migrations")
    return {row["name"]: row for row in rows}


async def _adopt_original_schema(
    conn: AnyConnection, known: list[Migration], applied: dict[str, Any]
) -> None:
    """Record the original system's steps that its tables already reflect."""
    if applied:
        return
    has_table = await conn.fetchval("SELECT to_regclass('supervisor_states') IS NOT NULL")
    if not has_table:
        return
    has_state = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
        " WHERE table_name = 'supervisor_states' AND column_name = 'state'"
        " AND table_schema = current_schema())"
    )
    adopt = [_ORIGINAL_TABLE] + ([_ORIGINAL_ENHANCEMENT] if has_state else [])
    by_name = {m.name: m for m in known}
    for name in adopt:
        migration = by_name[name]
        await conn.execute(
            "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
            name,
            migration.checksum,
        )
        log.info("migration.adopted", migration=name)


def _check_unmodified(known: list[Migration], applied: dict[str, Any]) -> None:
    for migration in known:
        row = applied.get(migration.name)
        if row is not None and row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {migration.name} was edited after it was applied "
                "(checksum differs); restore the file, or add a new migration instead"
            )


async def migrate(
    conn: AnyConnection, *, directory: Path | None = None, target: str | None = None
) -> list[str]:
    """Apply pending migrations (up to and including `target`); return their names."""
    known = discover(directory)
    if target is not None:
        known = [m for m in known if m.name <= target]
    done: list[str] = []
    with map_db_errors():
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(_BOOTSTRAP)
            applied = await _applied(conn)
            await _adopt_original_schema(conn, known, applied)
            applied = await _applied(conn)
            _check_unmodified(known, applied)
            for migration in known:
                if migration.name in applied:
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                            migration.name,
                            migration.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
                log.info("migration.applied", migration=migration.name)
                done.append(migration.name)
        finally:
            await _unlock(conn)
    return done


async def _unlock(conn: AnyConnection) -> None:
    """Give the migration lock back, cancelled or not: the lock belongs to the session,
    which outlives a cancelled statement and would keep every other runner waiting.
    Where the unlock cannot run (a cancellation left the migration's transaction
    aborted, or the connection is cut or hangs), the session is ended instead, and the
    lock with it."""
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(UNLOCK_S),
        contextlib.suppress(DatabaseError),
        map_db_errors(),
    ):
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        return
    conn.terminate()


async def status(conn: AnyConnection, *, directory: Path | None = None) -> list[MigrationStatus]:
    """Every migration on disk (applied, pending or modified) and unknown applied ones."""
    known = discover(directory)
    with map_db_errors():
        has_table = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied = await _applied(conn) if has_table else {}
    result = []
    for migration in known:
        row = applied.get(migration.name)
        if row is None:
            result.append(MigrationStatus(name=migration.name, state="pending", applied_at=None))
        else:
            state = "applied" if row["checksum"] == migration.checksum else "modified"
            result.append(
                MigrationStatus(name=migration.name, state=state, applied_at=row["applied_at"])
            )
    on_disk = {m.name for m in known}
    result.extend(
        MigrationStatus(name=name, state="unknown", applied_at=row["applied_at"])
        for name, row in sorted(applied.items())
        if name not in on_disk
    )
    return result
