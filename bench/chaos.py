"""Chaos: daemons on one PostgreSQL, killed, paused and resumed at random, checked each round.

Real processes: `supervisor-daemon run` three times (by default) on one database, each
supervisor driven by a command agent (a small shell script speaking the agent protocol)
that appends numbered messages and now and then spawns a task. Each round does one
thing to one daemon: SIGKILL it, SIGTERM it (a handoff), pause it with everything it
started (SIGSTOP to the daemon and its agents and tasks: a paused VM, a closed lid), or
resume it (SIGCONT), or start a dead one again; then it waits a random part of a lease,
lets things settle, and checks:

- every unfinished supervisor is owned by a running daemon and driven by exactly one
  live agent process, started by its owner: none lost, none driven twice;
- every message an agent was told is committed (`ok` in the reply) is in the database;
- every task ran at most once (each task appends its id to a file when it starts, and
  the database counts its starts).

Usage (from the repository root):
    python -m bench.chaos [--rounds 200] [--daemons 3] [--supervisors 9] [--lease-s 2]
                          [--max-seconds 1800]
It prints one JSON object: rounds, violations (there must be none), takeover times
(from a SIGKILL, and from a pause past the lease), claim-round and restoration times
read from the daemons' logs. tests/acceptance/test_chaos.py runs a short version in `make test`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from bench._setup import fresh_database, machine, open_pool, run
from bench.cluster import Cluster, wait_for


@dataclasses.dataclass
class Figures:
    rounds: int = 0
    actions: Counter[str] = dataclasses.field(default_factory=Counter)
    violations: list[str] = dataclasses.field(default_factory=list)
    settle_s: list[float] = dataclasses.field(default_factory=list)
    takeover_after_kill_s: list[float] = dataclasses.field(default_factory=list)
    takeover_after_pause_s: list[float] = dataclasses.field(default_factory=list)


async def _taken_over(
    cluster: Cluster, pool: asyncpg.Pool[Any], name: str, before: dict[uuid.UUID, str | None]
) -> bool:
    owners = await cluster.owners(pool)
    return all(owners.get(sid) not in (None, name) for sid, o in before.items() if o == name)


async def chaos_round(
    cluster: Cluster, pool: asyncpg.Pool[Any], rng: random.Random, figures: Figures
) -> str:
    """One action on one daemon, a random wait, settle, check. The action, described."""
    names = list(cluster.daemons)
    running = [n for n in names if cluster.daemons[n].running]
    name = rng.choice(names)
    daemon = cluster.daemons[name]
    owners = await cluster.owners(pool)
    lease = cluster.lease_s
    if not daemon.alive:
        daemon.start()
        action = "start"
    elif daemon.paused:
        daemon.resume()
        action = "resume"
    elif running == [name]:  # the last one running stays: start or resume another
        others = [cluster.daemons[n] for n in names if n != name]
        other = rng.choice(others)
        if other.alive:
            other.resume()
            action = "resume"
        else:
            other.start()
            action = "start"
        name = other.name
    else:
        action = rng.choice(["kill", "kill", "pause", "pause", "terminate"])
        started = time.monotonic()
        if action == "kill":
            daemon.kill()
        elif action == "pause":
            daemon.pause(with_children=True)
        else:
            daemon.terminate()
        if action in ("kill", "pause") and any(o == name for o in owners.values()):
            await wait_for(lambda: _taken_over(cluster, pool, name, owners),
                           lease * 3 + 10, f"takeover from {name}")  # fmt: skip
            key = "takeover_after_kill_s" if action == "kill" else "takeover_after_pause_s"
            getattr(figures, key).append(time.monotonic() - started)
    figures.actions[action] += 1
    await anyio.sleep(rng.uniform(0, lease * 1.5))
    figures.settle_s.append(await cluster.settle(pool, lease * 3 + 20))
    found = await cluster.violations(pool)
    figures.violations += [f"round {figures.rounds + 1} ({action} {name}): {v}" for v in found]
    figures.rounds += 1
    return f"{action} {name}"


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(values),
        "median_s": round(statistics.median(ordered), 2),
        "p90_s": round(ordered[math.ceil(0.9 * len(ordered)) - 1], 2),
        "max_s": round(ordered[-1], 2),
    }


def log_figures(cluster: Cluster) -> dict[str, Any]:
    """Claim rounds and restorations as the daemons logged them."""
    elapsed = [
        float(line["elapsed_s"])
        for daemon in cluster.daemons.values()
        for line in daemon.events("restoration.summary")
        if line.get("supervisors")
    ]
    counts = Counter(
        line["event"]
        for daemon in cluster.daemons.values()
        for line in daemon.events()
        if line.get("event") in ("daemon.lease_lost", "daemon.lease_regained",
                                 "supervisor.dropped", "task.fenced", "task.interrupted",
                                 "queue.event_rejected", "daemon.released")
    )  # fmt: skip
    return {"restoration_s": _summary(elapsed), "events": dict(counts)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with fresh_database() as dsn:
        root = Path(args.dir or tempfile.mkdtemp(prefix="sd-chaos-"))
        pool = await open_pool(dsn, 2)
        cluster = Cluster(dsn, root, daemons=args.daemons, lease_s=args.lease_s)
        figures = Figures()
        started = time.monotonic()
        try:
            cluster.start_all()
            await wait_for(lambda: cluster.registered(pool, list(cluster.daemons)), 60,
                           "the daemons register")  # fmt: skip
            await cluster.create_supervisors(pool, args.supervisors)
            await cluster.settle(pool, 60)
            while figures.rounds < args.rounds and time.monotonic() - started < args.max_seconds:
                done = await chaos_round(cluster, pool, rng, figures)
                if args.verbose:
                    print(f"round {figures.rounds}: {done}", file=sys.stderr)
        finally:
            cluster.close()
            await pool.close()
    return {
        "benchmark": "chaos", "machine": machine(), "daemons": args.daemons,
        "supervisors": args.supervisors, "lease_s": args.lease_s, "rounds": figures.rounds,
        "seconds": round(time.monotonic() - started, 1), "actions": dict(figures.actions),
        "violations": figures.violations[:50], "violation_count": len(figures.violations),
        "acknowledged_messages": cluster.acknowledged(),
        "takeover_after_kill": _summary(figures.takeover_after_kill_s),
        "takeover_after_pause": _summary(figures.takeover_after_pause_s),
        "settle": _summary(figures.settle_s), **log_figures(cluster),
    }  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--supervisors", type=int, default=9)
    parser.add_argument("--lease-s", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where the daemons' logs go")
    parser.add_argument("--verbose", action="store_true")
    run(main, parser.parse_args())
