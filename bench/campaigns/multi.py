"""Many daemons, one database, under chaos: three daemons with a short lease share the
load while, at seeded random moments, one is killed (SIGKILL), paused (SIGSTOP) for
longer than its lease so that the others take its supervisors over, and resumed
(SIGCONT), or started again after it died.

Held: the journal never interleaves the events of two agent processes of one
supervisor (two owners writing at once: `double_owned`), no command task runs twice,
and the ledger holds. A daemon that exits on its own (a paused one that finds its
lease lapsed) is counted by exit code; it is started again at the next step. Halfway
through, PostgreSQL is stopped for twice the lease: the daemons that exit on it are
counted (`daemon_exits_on_db_fault`).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from bench.campaigns.cluster import DaemonProcess, Server, until
from bench.campaigns.rig import Rig, rig


class Chaos:
    def __init__(self, w: Rig, server: Server, fleet: list[DaemonProcess], lease_s: float):
        self.w = w
        self.server = server
        self.fleet = fleet
        self.lease_s = lease_s
        self.actions: Counter[str] = Counter()
        self.paused: set[str] = set()
        self.outage_exits = 0

    async def pause(self, d: DaemonProcess, seconds: float) -> None:
        self.paused.add(d.daemon_id)
        d.signal(signal.SIGSTOP)
        self.w.note("daemon.paused", daemon=d.daemon_id, seconds=round(seconds, 2))
        try:
            await anyio.sleep(seconds)
        finally:
            d.signal(signal.SIGCONT)
            self.w.note("daemon.resumed", daemon=d.daemon_id)
            self.paused.discard(d.daemon_id)

    async def database_outage(self) -> None:
        """Longer than the lease: every daemon's lease lapses while it cannot reach the
        database. It must survive that and claim again."""
        alive = [d for d in self.fleet if d.running and d.daemon_id not in self.paused]
        before = {d.daemon_id: len(d.exits) for d in alive}
        self.w.note("database.stopped")
        await self.server.stop()
        await anyio.sleep(self.lease_s * 2)
        await self.server.start()
        self.w.note("database.started")
        await anyio.sleep(self.lease_s)
        self.outage_exits += sum(len(d.exits) - before[d.daemon_id] for d in alive)

    async def step(self) -> None:
        d = self.w.rng.choice(self.fleet)
        if d.daemon_id in self.paused:
            return
        if not d.running:
            await d.start(self.w.tg)
            self.actions["started again"] += 1
            return
        action = self.w.rng.choice(["kill", "pause", "pause", "none"])
        self.actions[action] += 1
        if action == "kill":
            self.w.note("daemon.killed", daemon=d.daemon_id)
            d.kill()
        elif action == "pause":
            self.w.tg.start_soon(self.pause, d, self.lease_s * self.w.rng.uniform(1.3, 2.5))

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        outage_at: float | None = time.monotonic() + seconds / 2
        while time.monotonic() < deadline:
            await anyio.sleep(self.w.rng.uniform(0.3, 1.5))
            if outage_at is not None and time.monotonic() > outage_at:
                outage_at = None
                self.actions["database outage"] += 1
                await self.database_outage()
            else:
                await self.step()
        await until(lambda: not self.paused, 60, "paused daemons resumed")
        await anyio.sleep(self.lease_s + 1)  # one just resumed may find its lease lapsed
        for d in self.fleet:
            if not d.running:
                await d.start(self.w.tg)


async def run(
    server: Server, root: Path, seed: int, *, daemons: int, seconds: float, supervisors: int,
    interval_ms: int, lease_s: float,
) -> dict[str, Any]:  # fmt: skip
    async with rig(server, root, "multi", seed) as w:
        await w.add_load(supervisors, interval_ms)
        fleet = [w.daemon(f"multi-{n}", lease_s=lease_s) for n in range(daemons)]
        for d in fleet:
            await d.start(w.tg)
            await d.wait_for("daemon.ready")
        await w.wait_for_acks(time.time())
        chaos = Chaos(w, server, fleet, lease_s)
        await chaos.run(seconds)
        for d in fleet:
            await d.wait_for("daemon.ready")
        stranded = await w.silent_after(time.time(), 60)
        for d in fleet:
            d.signal(signal.SIGTERM)
            await d.wait_exit()
        found = await w.verify()
        exits: Counter[str] = Counter(str(code) for d in fleet for code in d.exits)
        return {
            "daemons": daemons, "lease_s": lease_s, "chaos_s": seconds,
            "actions": dict(chaos.actions), "exit_codes": dict(exits),
            "daemon_exits_on_db_fault": chaos.outage_exits, "stranded_at_end": stranded,
            "double_owned": found.double_owned, "tasks_run_twice": w.tasks_run_twice(),
            "acked_events": found.acked, "lost_acked_events": found.lost,
            "duplicate_events": found.duplicates, "out_of_order": found.out_of_order,
            "answers_missing": found.answers_missing + found.answers_twice,
        }  # fmt: skip
