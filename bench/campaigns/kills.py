"""kill -9 cycles: the daemon killed at seeded random moments, the ledger checked after each.

Each cycle starts the daemon and kills it (SIGKILL) at a moment drawn from one of four
kinds: any time from the start (importing, connecting, registering), during its
restoration (a random point within the time the previous one took), while it runs,
or during the drain of an orderly stop (SIGTERM, then SIGKILL within 15 ms). Where
the kill really landed is read from the daemon's log. After each kill the agents'
ledgers are checked against the journal; at the end the daemon runs once more until
every supervisor is acknowledged again, and stops cleanly.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from bench.campaigns.cluster import Server
from bench.campaigns.rig import Rig, rig

KINDS = ("anytime", "restoring", "running", "draining")


async def _one_cycle(w: Rig, kind: str, restore_s: float) -> None:
    d = w.daemons[0]
    await d.start(w.tg)
    if kind == "anytime":
        await anyio.sleep(w.rng.uniform(0.0, 1.0))
    elif kind == "restoring":
        await d.wait_for("database.ready")
        await anyio.sleep(w.rng.uniform(0.0, restore_s))
    else:
        await d.wait_for("daemon.ready")
        await anyio.sleep(w.rng.uniform(0.1, 0.8))
        if kind == "draining":  # the drain takes milliseconds: aim just after the ask
            d.signal(signal.SIGTERM)
            await anyio.sleep(w.rng.uniform(0.0, 0.015))
    d.kill()


async def run(
    server: Server, root: Path, seed: int, *, cycles: int, supervisors: int, idle: int,
    interval_ms: int,
) -> dict[str, Any]:  # fmt: skip
    async with rig(server, root, "kills", seed) as w:
        await w.add_load(supervisors, interval_ms)
        await w.add_idle(idle)
        d = w.daemon("kills")
        landed: Counter[str] = Counter()
        unexpected: list[str] = []
        restore_s = 0.05
        for _ in range(cycles):
            kind = w.rng.choice(KINDS)
            try:
                await _one_cycle(w, kind, restore_s)
            except RuntimeError as exc:  # it exited on its own before the kill
                unexpected.append(str(exc))
            code = await d.wait_exit()
            if code not in (-signal.SIGKILL, 0):
                unexpected.append(f"exit code {code} ({kind})")
            landed[d.phase()] += 1
            summary = d.seen("restoration.summary")
            if summary is not None:
                restore_s = max(0.01, float(summary.get("elapsed_s", restore_s)))
            await w.verify()
        # Once more, to the end: every supervisor goes on, then an orderly stop.
        await d.start(w.tg)
        await d.wait_for("daemon.ready")
        await w.wait_for_acks(time.time())
        d.signal(signal.SIGTERM)
        stopped = await d.wait_exit()
        if stopped != 0:
            unexpected.append(f"orderly stop exited {stopped}")
        found = await w.verify()
        return {
            "kill_cycles": cycles,
            "kills_landed": dict(landed),
            "acked_events": found.acked,
            "lost_acked_events": found.lost,
            "duplicate_events": found.duplicates,
            "out_of_order": found.out_of_order,
            "answers_missing": found.answers_missing + found.answers_twice,
            "unacked_committed": found.unacked_committed,
            "tasks_run_twice": w.tasks_run_twice(),
            "unexpected_exits": unexpected,
        }
