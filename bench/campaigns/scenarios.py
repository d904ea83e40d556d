"""The five fault scenarios of a public PostgreSQL queue benchmark
(hardbyte/postgresql-job-queue-benchmarking: crash_recovery, chaos_repeated_kills,
chaos_postgres_restart, chaos_pg_backend_kill, chaos_pool_exhaustion), against two
daemons sharing one database under a steady load.

Each scenario measures acknowledged events per second in a window before the fault
and in a window of the same length once the fault is over (for a killed daemon: once
it is ready again), and scores `recovery_ratio` = after / before. The load is paced
(each agent waits a fixed interval between requests), so a ratio of 1 means the load
is served as before; the benchmark counts a system as recovered when its ratio is
above 0. A daemon that exits on its own is counted and started again 5 s later, as
the systemd unit would (RestartSec=5s).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from bench.campaigns.cluster import BENCH_APP, DaemonProcess, Server
from bench.campaigns.outages import terminate_backends
from bench.campaigns.rig import Rig, rig

RESTART_SEC = 5.0  # systemd/supervisor-daemon.service


class Watch:
    """Starts a daemon again when it exits on its own, as systemd would."""

    def __init__(self, w: Rig) -> None:
        self.w = w
        self.expected: set[str] = set()  # daemons the bench is killing on purpose
        self.unexpected: list[tuple[str, int]] = []

    async def run(self, d: DaemonProcess) -> None:
        while True:
            await anyio.sleep(0.1)
            if d.running or d.proc is None or d.daemon_id in self.expected:
                continue
            code = await d.wait_exit()
            self.unexpected.append((d.daemon_id, code))
            await anyio.sleep(RESTART_SEC)
            if not d.running and d.daemon_id not in self.expected:
                await d.start(self.w.tg)


async def _kill_and_restart(w: Rig, watch: Watch, d: DaemonProcess, after_s: float) -> None:
    watch.expected.add(d.daemon_id)
    d.kill()
    await d.wait_exit()
    await anyio.sleep(after_s)
    await d.start(w.tg)
    await d.wait_for("daemon.ready")
    watch.expected.discard(d.daemon_id)


async def _hold_connections(dsn: str, seconds: float) -> int:
    """Open connections until the server refuses one, hold them, let go; how many."""
    held: list[asyncpg.Connection[Any]] = []
    try:
        while True:
            try:
                held.append(await asyncpg.connect(dsn, server_settings={
                    "application_name": f"{BENCH_APP}-hog"}))  # fmt: skip
            except (asyncpg.TooManyConnectionsError, asyncpg.PostgresError, OSError):
                break
        await anyio.sleep(seconds)
        return len(held)
    finally:
        for conn in held:
            with contextlib.suppress(Exception):
                await conn.close()


async def run(
    server: Server, root: Path, seed: int, *, window_s: float, fault_s: float,
    outage_s: float, supervisors: int, interval_ms: int, lease_s: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    async with rig(server, root, "scenarios", seed) as w:
        await w.add_load(supervisors, interval_ms)
        lease = {} if lease_s is None else {"lease_s": lease_s}
        a = w.daemon("fleet-a", capacity=supervisors // 2, **lease)
        b = w.daemon("fleet-b", capacity=supervisors - supervisors // 2, **lease)
        watch = Watch(w)
        for d in (a, b):
            await d.start(w.tg)
            await d.wait_for("daemon.ready")
            w.tg.start_soon(watch.run, d)
        await w.wait_for_acks(time.time())

        async def repeated_kills() -> None:
            deadline = time.monotonic() + fault_s
            while time.monotonic() < deadline:
                await _kill_and_restart(w, watch, a, 0.0)
                await anyio.sleep(3.0)

        async def postgres_restart() -> None:
            await server.stop()
            await anyio.sleep(outage_s)
            await server.start()

        async def backend_kills() -> None:
            deadline = time.monotonic() + fault_s
            while time.monotonic() < deadline:
                await terminate_backends(w)
                await anyio.sleep(0.5)

        scenarios: dict[str, Callable[[], Awaitable[Any]]] = {
            "crash_recovery": lambda: _kill_and_restart(w, watch, a, fault_s),
            "repeated_kills": repeated_kills,
            "postgres_restart": postgres_restart,
            "backend_kills": backend_kills,
            "pool_exhaustion": lambda: _hold_connections(w.dsn, fault_s),
        }
        results: dict[str, Any] = {}
        for name, fault in scenarios.items():
            # Every supervisor served again (or, after 20 s, the count of those not).
            stranded = await w.silent_after(time.time(), 20)
            await anyio.sleep(window_s)  # the window before
            began = time.time()
            w.note("fault.began", scenario=name)
            exits = len(watch.unexpected)
            detail = await fault()
            ended = time.time()
            w.note("fault.ended", scenario=name)
            await anyio.sleep(window_s)  # the window after
            await w.verify()
            before = w.check.rate(began - window_s, began)
            after = w.check.rate(ended, ended + window_s)
            results[name] = {
                "before_per_s": round(before, 1), "after_per_s": round(after, 1),
                "recovery_ratio": round(after / before, 3) if before else 0.0,
                "fault_s": round(ended - began, 1),
                "daemon_exits": len(watch.unexpected) - exits,
                "stranded_before": stranded,
            }  # fmt: skip
            if isinstance(detail, int):
                results[name]["connections_held"] = detail
        stranded = await w.silent_after(time.time(), 20)
        for d in (a, b):
            watch.expected.add(d.daemon_id)
            d.signal(signal.SIGTERM)
            await d.wait_exit()
        found = await w.verify()
        db_faults = ("postgres_restart", "backend_kills", "pool_exhaustion")
        return {
            "lease_s": lease_s or "default", "scenarios": results,
            "recovery_ratio_min": min(r["recovery_ratio"] for r in results.values()),
            "daemon_exits_on_db_fault": sum(results[n]["daemon_exits"] for n in db_faults),
            "unexpected_exits": watch.unexpected,
            "stranded_at_end": stranded,
            "acked_events": found.acked, "lost_acked_events": found.lost,
            "duplicate_events": found.duplicates, "out_of_order": found.out_of_order,
            "double_owned": found.double_owned, "tasks_run_twice": w.tasks_run_twice(),
        }  # fmt: skip
