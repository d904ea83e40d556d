"""Benchmark: the persistence queue vs. one awaited UPDATE per save point vs. raw COPY.

1,000 in-process supervisors, a mix of every event kind, on a fresh embedded PostgreSQL,
all three measured in the same run (the machines are shared and noisy: compare ratios).

(a) the queue, closed loop: each supervisor submits its next event as soon as the last
    one is acknowledged; sustained acknowledged critical events/s, ack latency p50/p99.
    Then an open loop at a fixed offered load of 5,000 events/s: ack latency p99.
(b) the original way: the same workload, one awaited UPDATE per save point through a
    pool of 10 connections, on the original system's table (histories and task ids as
    arrays that each append rewrites).
(c) the ceiling: the same events appended with COPY as one row each (keyed by
    supervisor and sequence number, like a journal), in batches of 1,000.
    The same again in batches of 100, the condition of the target's reference figure
    for a 2-core machine (about 260,000 rows/s; docs/benchmarks.md): how fast this host
    is today, compared with the machine the targets were set on.

`events_per_s` counts acknowledged critical events only; heartbeats and progress are
extra load. `aged_events_per_s` is the same closed loop on supervisors that start with
500-message histories and 200 spawned tasks each: it should not be slower.
`p99_ack_ms_at_5k` is the median of three open-loop runs (one p99 on a shared host
moves by a factor of two from run to run). Usage (from the repository root):
    python -m bench.persistence [--seconds 12] [--open-loop-seconds 8] [--supervisors 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import statistics
import time
import uuid
from typing import Any

import anyio
import asyncpg

from bench._setup import (
    ServerCpu,
    create_supervisors,
    fresh_database,
    history,
    machine,
    open_pool,
    run,
)
from bench.baselines import ORIGINAL_ROWS, ORIGINAL_TABLE, bench_copy, bench_naive
from bench.workload import Workload, percentile
from daemon.ops.gc_tuning import throughput_mode
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def bench_queue(
    pool: asyncpg.Pool[Any], ids: list[uuid.UUID], seconds: float, in_flight: int, **queue_args: Any
) -> dict[str, Any]:
    """Closed loop: each supervisor keeps `in_flight` save points awaiting their ack."""
    queue = PersistenceQueue(EventStore(pool), **queue_args)
    server_cpu = await ServerCpu.of(pool)
    latencies: list[float] = []
    acked = 0
    running = False  # cleared by a timer: cheaper than reading the clock once more per event
    perf = time.perf_counter

    async def stream(workload: Workload) -> None:
        nonlocal acked
        submit, nowait = queue.submit, queue.submit_nowait
        record = latencies.append
        sid = workload.sid
        i = 0
        while running:
            event = workload.event()
            started = perf()
            await submit(event)
            record(perf() - started)
            acked += 1
            i += 1
            if not i & 3:  # a progress report every 4th save point, a heartbeat every 16th
                nowait(events.progress_reported(sid, i % 101))
                if not i & 15:
                    nowait(events.heartbeat(sid))

    def start_all(tg: anyio.abc.TaskGroup, workloads: list[Workload], seconds: float) -> None:
        nonlocal running
        running = True

        def stop() -> None:
            nonlocal running
            running = False

        asyncio.get_running_loop().call_later(seconds, stop)
        for w in workloads:
            for _ in range(in_flight):
                tg.start_soon(stream, w)

    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        workloads = [Workload(sid, n) for n, sid in enumerate(ids)]
        # warm-up: prepared statements, caches
        async with anyio.create_task_group() as warm:
            start_all(warm, workloads, 1.0)
        latencies.clear()
        acked = 0
        batches_before, written_before = queue.counters.batches, queue.counters.written
        cpu_before = time.process_time()
        server_before = server_cpu.seconds()
        started = perf()
        # Acknowledged events at each quarter of the run: a cost that grew with the
        # supervisors' age (tasks and messages piling up) would show as a slope here.
        quarters: list[int] = []
        loop = asyncio.get_running_loop()
        for n in (1, 2, 3):
            loop.call_later(seconds * n / 4, lambda: quarters.append(acked))
        async with anyio.create_task_group() as run:
            start_all(run, workloads, seconds)
        elapsed = perf() - started
        quarters.append(acked)
        cpu = time.process_time() - cpu_before
        server_after = server_cpu.seconds()
        batches = queue.counters.batches - batches_before
        written = queue.counters.written - written_before
        await queue.drain()
    return {
        "events_per_s": acked / elapsed,
        "p50_ack_ms": percentile(latencies, 0.50) * 1000,
        "p99_ack_ms": percentile(latencies, 0.99) * 1000,
        "events": acked,
        "events_per_s_by_quarter": [
            (b - a) / (seconds / 4) for a, b in itertools.pairwise([0, *quarters])
        ],
        "mean_batch": written / batches if batches else 0.0,
        "python_cpu_percent": 100 * cpu / elapsed,
        "python_cpu_us_per_event": cpu / acked * 1e6,
        "server_cpu_us_per_event": (
            (server_after - server_before) / acked * 1e6
            if server_before is not None and server_after is not None
            else None
        ),
        "counters": queue.counters.snapshot(queue.queued),
    }


async def bench_queue_fixed_rate(
    pool: asyncpg.Pool[Any],
    ids: list[uuid.UUID],
    seconds: float,
    rate: float,
    **queue_args: Any,
) -> dict[str, Any]:
    """Open loop: each supervisor submits on its own schedule, `rate` events/s in all."""
    queue = PersistenceQueue(EventStore(pool), **queue_args)
    latencies: list[float] = []
    # How late each submission is against its schedule: the load generator's own lag,
    # which shares the event loop with the queue (not counted in the latencies).
    lags: list[float] = []
    interval = len(ids) / rate
    perf = time.perf_counter

    async def supervisor(workload: Workload, offset: float, start: float, end: float) -> None:
        next_at = start + offset
        while next_at < end:
            delay = next_at - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            event = workload.event()
            submitted = perf()
            lags.append(submitted - next_at)
            await queue.submit(event)
            latencies.append(perf() - submitted)
            next_at += interval

    async def settle(start: float) -> None:
        # The supervisors' tasks and workloads (about 37,000 objects) were made a moment
        # ago; the garbage collector's clock (throughput_mode) would walk them all in its
        # first young collection inside the window, an 8-12 ms pause. In a daemon the
        # supervisors are older than that, so they are moved to the old generation first.
        await asyncio.sleep(max(0.0, start - 0.1 - perf()))
        gc.collect(1)

    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        workloads = [Workload(sid, 10_000 + n) for n, sid in enumerate(ids)]
        start = perf() + 0.2
        end = start + seconds
        async with anyio.create_task_group() as run:
            for n, w in enumerate(workloads):
                run.start_soon(supervisor, w, interval * n / len(ids), start, end)
            run.start_soon(settle, start)
        await queue.drain()
    return {
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "offered_per_s": rate,
        "events": len(latencies),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database() as dsn:
        pool = await open_pool(dsn, 10)
        try:
            # Each method gets supervisors of its own, fresh: a method must not pay for
            # the one measured before it.
            fresh = [await create_supervisors(pool, args.supervisors) for _ in range(3)]
            aged_ids = await create_supervisors(pool, args.supervisors, history_len=500, tasks=200)
            await pool.execute(ORIGINAL_TABLE)
            await pool.execute(ORIGINAL_ROWS, fresh[2], json.dumps(history(20)))
            await pool.execute("VACUUM ANALYZE")
            # The set-up wrote hundreds of MB: let their checkpoint happen now rather
            # than in the middle of the open loops (a latency spike of its own).
            await pool.execute("CHECKPOINT")
            queue_args = {
                "batch_size": args.batch_size,
                "lanes": args.lanes,
                "flush_delay_s": args.flush_delay_ms / 1000,
            }
            async with throughput_mode():  # as `supervisor-daemon run` does once started
                open_loops = [
                    await bench_queue_fixed_rate(
                        pool, fresh[0], args.open_loop_seconds, 5000.0, lanes=args.lanes
                    )
                    for _ in range(3)
                ]
                queue = await bench_queue(
                    pool, fresh[1], args.seconds, args.in_flight, **queue_args
                )
                aged = await bench_queue(pool, aged_ids, args.seconds, args.in_flight, **queue_args)
            fixed = {
                "p99_ms": statistics.median(r["p99_ms"] for r in open_loops),
                "p50_ms": statistics.median(r["p50_ms"] for r in open_loops),
            }
            naive = await bench_naive(pool, fresh[2], args.seconds)
            ceiling = await bench_copy(dsn, fresh[2], 200_000, 1000)
            # The targets were set on a 2-core machine that appends about 260,000
            # rows/s in 100-row batches: this run's figure, set beside it, tells how
            # fast this host is today.
            reference = await bench_copy(dsn, fresh[2], 200_000, 100)
        finally:
            await pool.close()
    result = {
        "supervisors": args.supervisors,
        "seconds": args.seconds,
        "events_per_s": round(queue["events_per_s"]),
        "events_per_s_by_quarter": [round(v) for v in queue["events_per_s_by_quarter"]],
        "p50_ack_ms": round(queue["p50_ack_ms"], 3),
        "p99_ack_ms": round(queue["p99_ack_ms"], 3),
        "p99_ack_ms_at_5k": round(fixed["p99_ms"], 3),
        "p99_ack_ms_at_5k_runs": [round(r["p99_ms"], 3) for r in open_loops],
        "p50_ack_ms_at_5k": round(fixed["p50_ms"], 3),
        "schedule_lag_p99_ms_at_5k": [round(r["lag_p99_ms"], 3) for r in open_loops],
        "aged_events_per_s": round(aged["events_per_s"]),
        "aged_vs_fresh": round(aged["events_per_s"] / queue["events_per_s"], 3),
        "aged_server_cpu_us_per_event": _round(aged["server_cpu_us_per_event"], 2),
        "mean_batch": round(queue["mean_batch"], 1),
        "python_cpu_percent": round(queue["python_cpu_percent"]),
        "python_cpu_us_per_event": round(queue["python_cpu_us_per_event"], 2),
        "server_cpu_us_per_event": _round(queue["server_cpu_us_per_event"], 2),
        "naive_events_per_s": round(naive["events_per_s"]),
        "speedup_vs_naive": round(queue["events_per_s"] / naive["events_per_s"], 2),
        "ceiling_rows_per_s": round(ceiling["rows_per_s"]),
        "copy_100_rows_per_s": round(reference["rows_per_s"]),
        "queue_vs_ceiling": round(queue["events_per_s"] / ceiling["rows_per_s"], 3),
        "machine": machine(),
    }
    print(f"{'method':<34}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'queue (closed loop)':<34}{result['events_per_s']:>12,}"
        f"{result['p50_ack_ms']:>10}{result['p99_ack_ms']:>10}"
    )
    print(
        f"{'queue, aged supervisors':<34}{result['aged_events_per_s']:>12,}"
        f"{round(aged['p50_ack_ms'], 3):>10}{round(aged['p99_ack_ms'], 3):>10}"
    )
    print(
        f"{'queue at 5,000 events/s offered':<34}{'':>12}"
        f"{result['p50_ack_ms_at_5k']:>10}{result['p99_ack_ms_at_5k']:>10}"
        f"  (median of {result['p99_ack_ms_at_5k_runs']})"
    )
    print(
        "  the load generator's own lag behind its schedule, p99 of each run (ms):"
        f" {result['schedule_lag_p99_ms_at_5k']}"
    )
    print(f"{'one UPDATE per save point (pool 10)':<34}{result['naive_events_per_s']:>12,}")
    print(f"{'COPY ceiling (rows/s)':<34}{result['ceiling_rows_per_s']:>12,}")
    print(f"{'COPY, 100-row batches (rows/s)':<34}{result['copy_100_rows_per_s']:>12,}")
    print(
        f"CPU per acknowledged event: daemon {result['python_cpu_us_per_event']} us,"
        f" PostgreSQL {result['server_cpu_us_per_event']} us"
        f" (aged supervisors: {result['aged_server_cpu_us_per_event']} us)"
    )
    print(
        f"speedup vs naive: {result['speedup_vs_naive']}x; "
        f"queue / COPY ceiling: {result['queue_vs_ceiling']}; "
        f"mean batch: {result['mean_batch']} events"
    )
    by_quarter = ", ".join(f"{v:,}" for v in result["events_per_s_by_quarter"])
    print(f"closed loop by quarter of the run (events/s): {by_quarter}")
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--open-loop-seconds", type=float, default=8.0, help="each of the three open-loop runs"
    )
    parser.add_argument("--supervisors", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--flush-delay-ms", type=float, default=0.0)
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument(
        "--in-flight",
        type=int,
        default=8,
        help="save points each supervisor keeps awaiting their ack",
    )
    args = parser.parse_args()
    run(main, args)


if __name__ == "__main__":
    cli()
