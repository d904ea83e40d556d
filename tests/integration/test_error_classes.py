"""Errors are classified by what they are, on real PostgreSQL.

A state of the server (read-only after a failover, disk full, a cancelled query) is
transient: the queue waits it out and refuses nothing. A value the driver cannot send
is permanent for its event. And a server configured not to wait for its commits to
reach the disk does not weaken "acknowledged means committed".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.db.pool import SERVER_SETTINGS, create_pool, init_connection
from daemon.errors import PermanentDatabaseError, TransientDatabaseError, is_transient, translate
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore, Store
from tests.factories import new_state
from tests.queues import running

APP = "queue-under-test"


async def _database(conn: asyncpg.Connection[Any]) -> str:
    return str(await conn.fetchval("SELECT current_database()"))


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.execute(f'ALTER DATABASE "{await _database(conn)}" RESET ALL')
    await conn.close()


async def _cut_queue_connections(admin: asyncpg.Connection[Any]) -> None:
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", APP
    )


async def test_a_read_only_server_is_waited_out_not_refused(
    dsn: str, store: Store, admin: asyncpg.Connection[Any]
) -> None:
    sid = (await store.save_supervisor_state_full(new_state())).id
    database = await _database(admin)
    qpool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, init=init_connection,
        server_settings={**SERVER_SETTINGS, "application_name": APP},
    )  # fmt: skip
    queue = PersistenceQueue(EventStore(qpool), lanes=1, retry_initial_s=0.01, retry_max_s=0.05)
    try:
        async with running(queue):
            # A failover to a server that is read-only for now: every new connection's
            # transactions are read-only (25006 on write).
            await admin.execute(
                f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
            )
            await _cut_queue_connections(admin)
            submit = asyncio.ensure_future(queue.submit(events.activity_reported(sid, "written")))
            with anyio.fail_after(30):
                while queue.counters.retries < 3:
                    await anyio.sleep(0.01)
            assert not submit.done()
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            await _cut_queue_connections(admin)
            with anyio.fail_after(30):
                await submit
    finally:
        await qpool.close()
    assert queue.counters.rejected == 0
    activity = await admin.fetchval(
        "SELECT current_activity FROM supervisor_states WHERE id = $1", sid
    )
    assert activity == "written"


async def test_commits_wait_for_the_disk_whatever_the_server_default(
    dsn: str, admin: asyncpg.Connection[Any]
) -> None:
    await admin.execute(f'ALTER DATABASE "{await _database(admin)}" SET synchronous_commit = off')
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        # ... and still after the pool reset the connection on its way back.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await pool.close()


async def test_a_value_the_driver_cannot_send_is_permanent(pool: asyncpg.Pool[Any]) -> None:
    # asyncpg refuses it before anything is sent (its DataError).
    with pytest.raises(asyncpg.exceptions.DataError) as caught:
        await pool.fetchval("SELECT $1::int", "not a number")
    assert isinstance(translate(caught.value), PermanentDatabaseError)


async def test_a_cancelled_query_is_transient(pool: asyncpg.Pool[Any]) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SET statement_timeout = '10ms'")
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.execute("SELECT pg_sleep(5)")
    assert caught.value.sqlstate == "57014"
    assert isinstance(translate(caught.value), TransientDatabaseError)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.DiskFullError,
        asyncpg.exceptions.OutOfMemoryError,
        asyncpg.exceptions.ReadOnlySQLTransactionError,
        asyncpg.exceptions.QueryCanceledError,
        asyncpg.exceptions.PostgresIOError,
        asyncpg.exceptions.SerializationError,
    ],
)
def test_states_of_the_server_are_transient(error: type[asyncpg.PostgresError]) -> None:
    assert is_transient(error("the server says so"))


def test_a_broken_constraint_is_permanent() -> None:
    assert not is_transient(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not is_transient(asyncpg.exceptions.UnsupportedServerFeatureError("no such thing"))
