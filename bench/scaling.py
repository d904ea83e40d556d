"""Benchmark: what one PostgreSQL gives many daemons (figures for docs/scaling.md).

1. Claim rounds. N supervisors (1,000 / 10,000 / 100,000) owned by three live daemons:
   the cost of a claim round that finds nothing (what every daemon pays every
   CLAIM_INTERVAL_S), of one that takes over a fair share of a dead daemon's
   supervisors (the claim statement alone, and claim plus restoration), and of a lease
   renewal.
2. The write budget. K daemon-like processes (`--daemons`), each with its own
   persistence queue and pool, drive S supervisors each at a realistic rate: one save
   point every 1/`--rate` seconds per supervisor (exponential gaps; the mix of event
   kinds of bench/persistence.py) plus a heartbeat every 5 s. Measured: acknowledged
   events/s, acknowledgement latency, the CPU of each process per supervisor and of the
   PostgreSQL server per event; from those, how many supervisors one daemon core and one
   server core carry at that rate.

Usage (from the repository root):
    python -m bench.scaling [--sizes 1000,10000,100000] [--daemons 3] [--supervisors 2000]
                            [--rate 0.2] [--seconds 20] [--flush-delay-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from bench._setup import fresh_database, history, machine, open_pool, run
from bench.workload import Workload
from daemon.db.pool import SERVER_SETTINGS, init_connection
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.restoration.run import restore_all
from daemon.store import DaemonRegistry, EventStore, RestorationStore

HEARTBEAT_S = 5.0
FILL = """
INSERT INTO supervisor_states (id, contract_id, task_id, conversation_history, phase, state,
                               owner_daemon_id, owner_epoch)
SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), $2::text::jsonb,
       'implement', 'working', 'd' || (n % 3 + 1), 1
FROM generate_series(1, $1) AS n
"""


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


async def claim_rounds(pool: asyncpg.Pool[Any], size: int) -> dict[str, Any]:
    await pool.execute("TRUNCATE supervisor_states, daemons CASCADE")
    registry = DaemonRegistry(pool)
    tokens = {name: uuid.uuid4() for name in ("d1", "d2", "d3")}
    for name, token in tokens.items():
        await registry.register(name, hostname="h", pid=1, version="0", lease_s=3600,
                                token=token)  # fmt: skip
    await pool.execute(FILL, size, json.dumps(history(20)))
    await pool.execute("ANALYZE supervisor_states")
    store = RestorationStore(pool)
    idle = []
    for _ in range(20):
        started = time.perf_counter()
        if await store.claim("d1", 1_000_000, include_own=False, token=tokens["d1"]):
            raise RuntimeError("nothing should be claimable while every daemon is alive")
        idle.append(time.perf_counter() - started)
    renewals = []
    for _ in range(20):
        started = time.perf_counter()
        await registry.renew_lease("d1", 3600, tokens["d1"])
        renewals.append(time.perf_counter() - started)
    # d3 dies: d1 takes its fair share (half of d3's), the claim statement alone ...
    await pool.execute("UPDATE daemons SET lease_expires_at = now() WHERE id = 'd3'")
    started = time.perf_counter()
    claimed = await store.claim("d1", 1_000_000, include_own=False, token=tokens["d1"])
    claim_s = time.perf_counter() - started
    # ... and d2 the rest, claimed and restored as a running daemon does.
    started = time.perf_counter()
    summary = await restore_all(RestorationStore(pool), "d2", include_own=False, token=tokens["d2"])
    takeover_s = time.perf_counter() - started
    return {
        "supervisors": size,
        "idle_claim_round_ms": _median_ms(idle),
        "lease_renewal_ms": _median_ms(renewals),
        "takeover_claim": {"claimed": len(claimed), "ms": round(claim_s * 1000, 1)},
        "takeover_claim_and_restore": {
            "claimed": summary.supervisors, "ms": round(takeover_s * 1000, 1),
        },
    }  # fmt: skip


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user and system) the processes `pids` used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


async def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One daemon's share: its supervisors, its queue, the offered load; JSON on stdout."""
    pool = await asyncpg.create_pool(
        args.dsn, min_size=4, max_size=4, init=init_connection,
        server_settings={**SERVER_SETTINGS, "application_name": f"bench {args.name}"},
    )  # fmt: skip
    name = f"bench {args.name}"
    backends = [r[0] for r in await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", name)]  # fmt: skip
    ids = [r[0] for r in await pool.fetch(
        "SELECT id FROM supervisor_states WHERE owner_daemon_id = $1", args.name)]  # fmt: skip
    queue = PersistenceQueue(EventStore(pool), flush_delay_s=args.flush_delay_ms / 1000)
    latencies: list[float] = []
    deadline = 0.0

    async def supervisor(n: int, sid: uuid.UUID) -> None:
        rng = random.Random(n)
        workload = Workload(sid, n)
        next_heartbeat = time.monotonic() + rng.uniform(0, HEARTBEAT_S)
        while True:
            await anyio.sleep(rng.expovariate(args.rate))
            now = time.monotonic()
            if now > deadline:
                return
            event = workload.event()
            event.epoch = 1
            started = time.perf_counter()
            await queue.submit(event)
            latencies.append(time.perf_counter() - started)
            if now >= next_heartbeat:
                queue.submit_nowait(events.heartbeat(sid, epoch=1))
                next_heartbeat = now + HEARTBEAT_S

    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the start signal
        cpu = time.process_time()
        server = await anyio.to_thread.run_sync(_cpu_s, backends)
        deadline = time.monotonic() + args.seconds
        with anyio.move_on_after(args.seconds):
            async with anyio.create_task_group() as load:
                for n, sid in enumerate(ids):
                    load.start_soon(supervisor, n, sid)
        await queue.drain()
        cpu = time.process_time() - cpu
        server = await anyio.to_thread.run_sync(_cpu_s, backends) - server
    await pool.close()
    ordered = sorted(latencies)
    return {
        "supervisors": len(ids), "events": len(latencies), "cpu_s": round(cpu, 2),
        "server_cpu_s": round(server, 2), "batches": queue.counters.batches,
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2) if ordered else None,
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2) if ordered else None,
    }  # fmt: skip


def _run_workers(
    dsn: str, args: argparse.Namespace, shared: list[int]
) -> tuple[list[dict[str, Any]], float, float]:
    """Start the daemon-like workers, let them run together; their results, the time
    it took and the CPU seconds of the server's shared writers (`shared`) meanwhile."""
    command = [sys.executable, "-m", "bench.scaling", "--worker", "--dsn", dsn,
               "--rate", str(args.rate), "--seconds", str(args.seconds),
               "--flush-delay-ms", str(args.flush_delay_ms)]  # fmt: skip
    workers = [
        subprocess.Popen(  # noqa: S603 - this very script, as a worker
            [*command, "--name", f"d{n}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for n in range(1, args.daemons + 1)
    ]
    for proc in workers:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a worker did not start")
    server_before = _cpu_s(shared)
    started = time.monotonic()
    for proc in workers:
        if proc.stdin is not None:
            proc.stdin.write("go\n")
            proc.stdin.flush()
    results = [
        json.loads(proc.communicate(timeout=args.seconds + 120)[0].splitlines()[-1])
        for proc in workers
    ]
    return results, time.monotonic() - started, _cpu_s(shared) - server_before


async def write_budget(
    pool: asyncpg.Pool[Any], dsn: str, args: argparse.Namespace
) -> dict[str, Any]:
    await pool.execute("TRUNCATE supervisor_states, daemons CASCADE")
    total = args.daemons * args.supervisors
    for n in range(1, args.daemons + 1):
        await DaemonRegistry(pool).register(f"d{n}", hostname="h", pid=1, version="0",
                                            lease_s=3600)  # fmt: skip
    fill = FILL.replace("n % 3 + 1", f"n % {args.daemons} + 1")
    await pool.execute(fill, total, json.dumps(history(20)))
    await pool.execute("VACUUM ANALYZE supervisor_states")  # not during the measurement
    # What every commit also costs: the WAL writer, the checkpointer, the background
    # writer (autovacuum is left out: it follows the table's history, not this run).
    shared = [r[0] for r in await pool.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE backend_type IN ('walwriter', 'checkpointer', 'background writer')")]  # fmt: skip
    results, elapsed, shared_s = await anyio.to_thread.run_sync(_run_workers, dsn, args, shared)
    server_s = shared_s + sum(r["server_cpu_s"] for r in results)
    acked = sum(r["events"] for r in results)
    daemon_cpu = sum(r["cpu_s"] for r in results)
    server_us = server_s / acked * 1e6 if acked else None
    per_supervisor_s = args.rate + 1 / HEARTBEAT_S  # save points and heartbeats
    return {
        "daemons": args.daemons, "supervisors_per_daemon": args.supervisors,
        "rate_per_supervisor": args.rate, "flush_delay_ms": args.flush_delay_ms,
        "seconds": round(elapsed, 1),
        "events_per_s": round(acked / args.seconds), "workers": results,
        "server_cpu_cores": round(server_s / args.seconds, 3),
        "server_cpu_us_per_event": None if server_us is None else round(server_us, 1),
        "daemon_cpu_cores": round(daemon_cpu / args.seconds, 3),
        "batches_per_s": round(sum(r["batches"] for r in results) / args.seconds),
        "server_cpu_us_per_batch": round(server_s / sum(r["batches"] for r in results) * 1e6)
        if any(r["batches"] for r in results)
        else None,
        "daemon_cpu_us_per_event": round(daemon_cpu / acked * 1e6, 1) if acked else None,
        # One core of each at 100 %: how many supervisors of this rate it carries.
        "supervisors_per_server_core": round(total / (server_s / args.seconds))
        if server_s
        else None,
        "supervisors_per_daemon_core": round(total / (daemon_cpu / args.seconds))
        if daemon_cpu else None,
        "events_per_supervisor_s": per_supervisor_s,
    }  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker:
        return await worker(args)
    async with fresh_database() as dsn:
        pool = await open_pool(dsn, 4)
        try:
            sizes = [int(size) for size in args.sizes.split(",") if size]
            claims = [await claim_rounds(pool, size) for size in sizes]
            budget = await write_budget(pool, dsn, args)
        finally:
            await pool.close()
    return {"benchmark": "scaling", "machine": machine(), "claims": claims, "budget": budget}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--supervisors", type=int, default=2000, help="per daemon")
    parser.add_argument("--rate", type=float, default=0.2, help="save points/s per supervisor")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--flush-delay-ms", type=float, default=0.0,
                        help="the queue's SUPERVISOR_DAEMON_QUEUE_FLUSH_DELAY_MS")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    run(main, parser.parse_args())
