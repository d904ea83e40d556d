"""Open the daemon's database: the configured URL, or the embedded server.

`open_database(settings)` yields a `Database` (DSN + pool) and closes the pool on exit.
With the embedded server it also makes sure the daemon's own database exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from daemon.config import Settings
from daemon.db import embedded, embedded_auth, migrations
from daemon.db.pool import close, connect, create_pool
from daemon.errors import DatabaseUnavailableError, map_db_errors
from daemon.logs import get_logger, register_secret

log = get_logger()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Database:
    dsn: str
    pool: asyncpg.Pool[Any]
    embedded: bool

    async def migrate(self) -> list[str]:
        """Apply pending migrations (daemon/db/migrations.py); their names."""
        async with self.pool.acquire() as conn:
            return await migrations.migrate(conn)

    async def migration_status(self) -> list[migrations.MigrationStatus]:
        async with self.pool.acquire() as conn:
            return await migrations.status(conn)


def register_dsn_secret(dsn: str) -> None:
    from urllib.parse import unquote, urlsplit  # noqa: PLC0415

    with contextlib.suppress(ValueError):
        password = urlsplit(dsn).password
        register_secret(password)
        # asyncpg decodes %XX escapes: the decoded form may be what an error echoes.
        register_secret(unquote(password or ""))


async def resolve_dsn(settings: Settings) -> tuple[str, bool]:
    """The DSN to use and whether it is the embedded server (started here if needed)."""
    if settings.database_url is not None:
        register_dsn_secret(settings.database_url)
        return settings.database_url, False
    handle = embedded.start(settings.data_dir)
    pgdata = embedded.pgdata_dir(settings.data_dir)
    password = await embedded_auth.require_password(handle, settings.data_dir, pgdata)
    admin_dsn = embedded_auth.with_password(embedded.database_url(handle, "postgres"), password)
    await ensure_database(admin_dsn, embedded.DATABASE_NAME)
    return embedded_auth.with_password(embedded.database_url(handle), password), True


async def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database `name` when missing (embedded server only: we own it)."""
    conn = await connect(admin_dsn)
    try:
        with map_db_errors():
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Another process may create it between our check and this statement.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    # CREATE DATABASE takes no parameters; `name` is our own constant.
                    await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await close(conn)


@contextlib.asynccontextmanager
async def open_database(settings: Settings, *, wait_s: float = 0.0) -> AsyncIterator[Database]:
    """Open the pool; while the server cannot be reached, try again for up to `wait_s`
    seconds (a daemon started before its database), logging each failed attempt."""
    pool, dsn, is_embedded = await _open_pool(settings, wait_s)
    try:
        yield Database(dsn=dsn, pool=pool, embedded=is_embedded)
    finally:
        await close(pool)


async def _open_pool(settings: Settings, wait_s: float) -> tuple[asyncpg.Pool[Any], str, bool]:

    def log_attempt(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "database.unavailable",
            attempt=state.attempt_number,
            error=str(error),
            retry_in_s=round(state.upcoming_sleep, 2),
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(DatabaseUnavailableError),
        stop=stop_after_delay(wait_s),
        wait=wait_exponential_jitter(multiplier=0.5, max=5.0, jitter=0.5),
        before_sleep=log_attempt,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            dsn, is_embedded = await resolve_dsn(settings)
            pool = await create_pool(
                dsn,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                connect_timeout=settings.connect_timeout_s,
            )
            return pool, dsn, is_embedded
    raise AssertionError("unreachable: tenacity returns or re-raises")
