"""Database outages under load: the server crashed and started again, backends killed,
and connections reset by a proxy (the late-commit case).

The daemon reaches PostgreSQL through a loopback proxy (tests/proxy.py) so that its
connections can be reset like a network would: the server goes on with what it
received and commits, and the reply is lost. The faults come in a seeded random
order with a random stretch of load between them: an immediate shutdown (SIGQUIT, no
checkpoint, crash recovery at the next start) lasting a random 0.1-1.5 s, the
termination of every backend of the daemon's database, or a burst of connection
resets. After each, every load supervisor must be acknowledged again and the ledger
must hold. A daemon that exits during an outage is counted and started again, as
systemd would.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import anyio

from bench.campaigns.cluster import BENCH_APP, DB_ERRORS, Server
from bench.campaigns.rig import Rig, rig
from tests.proxy import ResettingProxy


class Proxy(ResettingProxy):
    """The resetting proxy, which also refuses clients while the server is down."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super()._serve(reader, writer)
        except OSError:  # the server is down: so is this client's connection
            writer.transport.abort()


async def terminate_backends(w: Rig) -> int:
    """Kill every backend of the rig's database but the bench's own; how many."""
    while True:
        try:
            return int(
                await w.db.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND application_name <> $1 AND backend_type = 'client backend'",
                    BENCH_APP,
                )
            )
        except DB_ERRORS:
            await anyio.sleep(0.1)


async def run(
    server: Server, root: Path, seed: int, *, restarts: int, backend_kills: int,
    proxy_resets: int, supervisors: int, interval_ms: int,
) -> dict[str, Any]:  # fmt: skip
    async with rig(server, root, "outages", seed) as w:
        await w.add_load(supervisors, interval_ms)
        async with Proxy(w.dsn) as proxy:
            d = w.daemon("outages", database_url=proxy.dsn)
            await d.start(w.tg)
            await d.wait_for("daemon.ready")
            await w.wait_for_acks(time.time())
            faults = ["restart"] * restarts + ["backends"] * backend_kills
            faults += ["resets"] * proxy_resets
            w.rng.shuffle(faults)
            recovery: dict[str, list[float]] = {kind: [] for kind in set(faults)}
            exits = 0
            killed = reset = 0
            for fault in faults:
                await anyio.sleep(w.rng.uniform(0.2, 0.6))
                if fault == "restart":
                    await server.crash()
                    await anyio.sleep(w.rng.uniform(0.1, 1.5))
                    await server.start()
                elif fault == "backends":
                    killed += await terminate_backends(w)
                else:
                    for _ in range(5):  # a burst: some land while a commit is under way
                        reset += proxy.reset_clients()
                        await anyio.sleep(w.rng.uniform(0.0, 0.05))
                back = time.time()
                if not d.running:
                    exits += 1
                    await d.start(w.tg)
                await w.wait_for_acks(back)
                recovery[fault].append(time.time() - back)
            d.signal(signal.SIGTERM)
            stopped = await d.wait_exit()
        found = await w.verify()
        return {
            "db_restarts": restarts, "backend_kill_rounds": backend_kills,
            "backends_killed": killed, "proxy_reset_bursts": proxy_resets,
            "connections_reset": reset,
            "recovery_s_max": {k: round(max(v), 2) for k, v in recovery.items() if v},
            "daemon_exits_on_db_fault": exits + (stopped != 0),
            "acked_events": found.acked, "lost_acked_events": found.lost,
            "duplicate_events": found.duplicates, "out_of_order": found.out_of_order,
            "answers_missing": found.answers_missing + found.answers_twice,
            "unacked_committed": found.unacked_committed,
            "tasks_run_twice": w.tasks_run_twice(),
        }  # fmt: skip
