"""Acceptance: daemons outlive a database outage longer than their lease.

Two daemons (a 2 s lease) on a PostgreSQL of their own, each running supervisors. The
server crashes and stays down for 5 s: both leases lapse. Neither process exits: each
stops its agents and tasks, waits for the database, registers again and claims again
under new epochs. Afterwards every supervisor runs again under one live agent, and every
message an agent was told is committed is in the database.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from bench.cluster import Cluster, wait_for
from daemon.db.pool import SERVER_SETTINGS, init_connection
from tests.pg import OwnServer

pytestmark = pytest.mark.acceptance
LEASE_S = 2.0
OUTAGE_S = 5.0  # longer than the lease


@pytest.fixture
def server() -> Iterator[OwnServer]:
    own = OwnServer(Path(tempfile.mkdtemp(prefix="sd-outage-pg-")))
    try:
        yield own
    finally:
        own.handle.cleanup()


async def _pool(dsn: str) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init_connection,
                                     server_settings=SERVER_SETTINGS)  # fmt: skip
    assert pool is not None
    return pool


async def test_daemons_outlive_an_outage_longer_than_their_lease(
    server: OwnServer, tmp_path: Path
) -> None:
    cluster = Cluster(server.dsn, tmp_path, daemons=2, lease_s=LEASE_S)
    try:
        cluster.start_all()
        pool = await _pool(server.dsn)
        try:
            await wait_for(lambda: cluster.registered(pool, ["d1", "d2"]), 60, "registered")
            await cluster.create_supervisors(pool, 6)
            await cluster.settle(pool, 60)
        finally:
            await pool.close()
        before = {name: d.proc.pid for name, d in cluster.daemons.items() if d.proc}
        server.crash()
        await anyio.sleep(OUTAGE_S)  # the length of the outage, not a synchronisation
        server.start()
        pool = await _pool(server.dsn)
        try:

            async def both_back() -> bool:
                return all(d.events("daemon.lease_regained") for d in cluster.daemons.values())

            await wait_for(both_back, 60, "both daemons registered again")
            await cluster.settle(pool, 60)
            assert not await cluster.violations(pool)
        finally:
            await pool.close()
        for name, daemon in cluster.daemons.items():
            assert daemon.alive, f"{name} exited"
            assert daemon.pid == before[name]  # the same process, never restarted
            assert daemon.events("daemon.lease_lost"), name
            assert daemon.events("daemon.lease_regained"), name
            assert not daemon.events("daemon.crashed"), name
    finally:
        cluster.close()
