"""Benchmark: what a supervisor's age costs - a long history, many spawned tasks.

On one fresh embedded PostgreSQL:

(a) appends: groups of supervisors (40 by default) whose histories hold 20, 2,000 and
    20,000 messages of varied text (about 600 bytes each), each appending messages
    through the real persistence queue, one awaited at a time; per size, the server's
    CPU and the WAL per append and the acknowledgement latency.
(b) spawns: groups that already spawned 0, 1,000 and 10,000 tasks, each spawning more.
    Every size is measured in each of `--rounds` rounds (sizes alternating), and the
    median round is kept: CPU per event moves far less between rounds than events/s.
(c) restoring 1,000 supervisors with 2,000-message histories against 1,000 with 20
    (alternating, median of `--rounds`), each context carrying the newest 50 messages
    (restore_all's default, what `supervisor-daemon restore` loads), and again as
    `supervisor-daemon run` restores at start (lengths only: history_tail=0);
(d) hosting: those 1,000 with 2,000-message histories restored and their (idle)
    agents started by one daemon, as `run` does: the process's RSS growth per
    supervisor, from before the restoration to after the agents started.

Last line: one JSON object (append_cpu_ratio_20000_vs_20, wal_kib_per_append_20000,
spawn_cpu_ratio_10000_vs_0, rss_kib_per_idle_supervisor_2000, restore_ratio_2000_vs_20).
Usage (from the repository root): python -m bench.growth [--supervisors 40] [--appends 100]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import uuid
from typing import Any

import anyio
import asyncpg

from bench._setup import ServerCpu, fresh_database, machine, open_pool, run
from bench.scale import rss_kib
from bench.workload import percentile
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.restoration.records import CrashLoopGuard
from daemon.restoration.run import restore_all
from daemon.runtime.host import Host
from daemon.store import DaemonRegistry, EventStore, RestorationStore, Store, WorkStore
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner

HISTORY_SIZES = (20, 2_000, 20_000)
# Restored once per round: the crash-loop guard must not park them.
GUARD = CrashLoopGuard(max_restorations=1_000)
TASK_SIZES = (0, 1_000, 10_000)

# Server-side: varied text (twenty different digests per message, about 600 bytes),
# not one repeated character, which would flatter compression.
FILL_MESSAGES = """
INSERT INTO supervisor_messages (supervisor_id, seq, message)
SELECT s.id, g.n, json_build_object(
    'role', CASE WHEN g.n % 2 = 0 THEN 'user' ELSE 'assistant' END,
    'content', (SELECT string_agg(md5(s.id::text || g.n || k), ' ')
                FROM generate_series(1, 18) AS k))
FROM unnest($1::uuid[]) AS s(id)
CROSS JOIN generate_series(1, $2::int) AS g(n)
"""
FILL_TASKS = """
INSERT INTO supervisor_tasks (id, supervisor_id, status, spec, spawn_seq)
SELECT gen_random_uuid(), s.id, 'succeeded', '{"command": "true"}', g.n
FROM unnest($1::uuid[]) AS s(id)
CROSS JOIN generate_series(1, $2::int) AS g(n)
"""
CREATE = """
INSERT INTO supervisors (id, contract_id, task_id, phase, state, owner_daemon_id,
                         owner_epoch, agent, message_seq, task_seq)
SELECT s.id, gen_random_uuid(), gen_random_uuid(), 'implement', 'working', $2, 1, $3, $4, $5
FROM unnest($1::uuid[]) AS s(id)
"""

WORDS = [
    "".join(random.Random(n).choices("abcdefghijklmnopqrstuvwxyz", k=3 + n % 8))
    for n in range(2_000)
]


def text(rng: random.Random, size: int = 600) -> str:
    """Varied prose-like text of about `size` characters."""
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


async def idle_agent(sup: Any) -> None:
    """Waits, as a supervisor waiting for a person does."""
    await anyio.sleep_forever()


async def create_group(
    pool: asyncpg.Pool[Any],
    count: int,
    *,
    owner: str,
    history: int = 20,
    tasks: int = 0,
    agent: str | None = None,
) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    await pool.execute(CREATE, ids, owner, agent, history, tasks)
    # In slices: one statement for 800,000 rows holds a lot of memory on the server.
    step = max(1, 200_000 // max(history, 1))
    for first in range(0, count, step):
        if history:
            await pool.execute(FILL_MESSAGES, ids[first : first + step], history)
    step = max(1, 200_000 // max(tasks, 1))
    for first in range(0, count, step):
        if tasks:
            await pool.execute(FILL_TASKS, ids[first : first + step], tasks)
    return ids


async def register(pool: asyncpg.Pool[Any], *names: str) -> None:
    registry = DaemonRegistry(pool)
    for name in names:
        await registry.register(name, hostname="bench", pid=1, version="0", lease_s=3_600)


async def measure_writes(
    pool: asyncpg.Pool[Any], ids: list[uuid.UUID], per_supervisor: int, kind: str, seed: int
) -> dict[str, float]:
    """Each supervisor submits `per_supervisor` events of `kind`, one awaited at a time:
    a batch holds at most one event per supervisor, so what is measured is the cost of
    one append to a supervisor of that age."""
    rng = random.Random(seed)
    epoch = 1  # what CREATE gives them: an owned supervisor is written under its epoch
    work = {
        sid: [
            events.message_appended(sid, {"role": "assistant", "content": text(rng)}, epoch=epoch)
            if kind == "message"
            else events.task_spawned(
                sid, uuid.uuid4(), spec={"command": "true"}, awaited=False, epoch=epoch
            )
            for _ in range(per_supervisor)
        ]
        for sid in ids
    }
    queue = PersistenceQueue(EventStore(pool))
    latencies: list[float] = []
    perf = time.perf_counter

    async def supervisor(sid: uuid.UUID) -> None:
        for event in work[sid]:
            started = perf()
            await queue.submit(event)
            latencies.append(perf() - started)

    server = await ServerCpu.of(pool)
    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        # Every size starts from the same point: the rows the previous sizes left dead
        # vacuumed (or autovacuum would write its WAL in the middle of this one), then
        # a checkpoint (so each measured page's first change after it is logged whole
        # in every size alike).
        await pool.execute("VACUUM supervisors")
        await pool.execute("CHECKPOINT")
        wal_before = await pool.fetchval("SELECT pg_current_wal_lsn()")
        cpu_before = server.seconds()
        async with anyio.create_task_group() as writers:
            for sid in ids:
                writers.start_soon(supervisor, sid)
        cpu_after = server.seconds()
        wal = await pool.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", wal_before)
        await queue.drain()
    count = len(latencies)
    return {
        "server_cpu_us": (cpu_after - cpu_before) / count * 1e6  # type: ignore[operator]
        if cpu_before is not None
        else float("nan"),
        "wal_kib": float(wal) / count / 1024,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "events": count,
    }


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def measure_restore(pool: asyncpg.Pool[Any], owner: str, tail: int = 50) -> float:
    started = time.perf_counter()
    summary = await restore_all(RestorationStore(pool), owner, guard=GUARD, history_tail=tail)
    elapsed = time.perf_counter() - started
    if summary.by_action != {"proceed": summary.supervisors}:
        raise RuntimeError(f"not every supervisor restored as it was: {summary.by_action}")
    return elapsed


async def measure_hosting(pool: asyncpg.Pool[Any], dsn: str, owner: str) -> dict[str, float]:
    """Restore the group and start its agents as `run` does; RSS growth per supervisor."""
    queue = PersistenceQueue(EventStore(pool))
    hub = Hub(WorkStore(pool, dsn=dsn))
    contexts: dict[uuid.UUID, Any] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        await tg.start(hub.run)
        gc.collect()
        before = rss_kib()
        await restore_all(
            RestorationStore(pool), owner, guard=GUARD,
            history_tail=0,  # as `run` restores (lifecycle.py)
            on_outcome=lambda o: contexts.__setitem__(o.supervisor_id, o.context),
        )  # fmt: skip
        work = WorkStore(pool)
        runner = TaskRunner(work, tg, daemon_id=owner)
        host = Host(Store(pool), work, owner, queue=queue, hub=hub, runner=runner,
                    delivery=Delivery(work, tg), tg=tg)  # fmt: skip
        started = await host.start(contexts)
        contexts.clear()  # as `run` does once the agents started
        await anyio.sleep(0.5)  # every agent has run up to its wait
        gc.collect()
        after = rss_kib()
        await queue.drain()
        tg.cancel_scope.cancel()
    return {"supervisors": started, "rss_kib": (after - before) / max(started, 1)}


async def host_in_a_process_of_its_own(dsn: str, owner: str) -> dict[str, float]:
    """`measure_hosting` in a fresh process, as a daemon is: what this one allocated
    and freed before would otherwise blur its RSS."""
    done = await anyio.run_process(
        [sys.executable, "-m", "bench.growth", "--host", dsn, owner], check=True
    )
    result: dict[str, float] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database() as dsn:
        pool = await open_pool(dsn, 6)
        try:
            await register(pool, "bench-writes", "bench-long", "bench-short")
            setup_started = time.perf_counter()
            n = args.supervisors
            histories = {
                size: await create_group(pool, n, owner="bench-writes", history=size)
                for size in HISTORY_SIZES
            }
            tasks = {
                size: await create_group(pool, n, owner="bench-writes", tasks=size)
                for size in TASK_SIZES
            }
            long_ids = await create_group(
                pool, args.restore, owner="bench-long", history=2_000,
                agent="bench.growth:idle_agent",
            )  # fmt: skip
            await create_group(pool, args.restore, owner="bench-short", history=20)
            await pool.execute("VACUUM (FREEZE, ANALYZE)")
            setup_s = time.perf_counter() - setup_started
            print(f"set up in {setup_s:.0f} s: {len(long_ids):,} + {args.restore:,} to restore")

            appends: dict[int, list[dict[str, float]]] = {s: [] for s in HISTORY_SIZES}
            spawns: dict[int, list[dict[str, float]]] = {s: [] for s in TASK_SIZES}
            for n in range(args.rounds):
                for size in HISTORY_SIZES if n % 2 == 0 else HISTORY_SIZES[::-1]:
                    appends[size].append(
                        await measure_writes(pool, histories[size], args.appends, "message", n)
                    )
                for size in TASK_SIZES if n % 2 == 0 else TASK_SIZES[::-1]:
                    spawns[size].append(
                        await measure_writes(pool, tasks[size], args.appends, "task", n)
                    )
            append = {size: median_round(rounds) for size, rounds in appends.items()}
            spawn = {size: median_round(rounds) for size, rounds in spawns.items()}

            restores: dict[tuple[str, int], list[float]] = {}
            for n in range(max(args.rounds, 5)):
                for tail in (50, 0):
                    order = ("bench-long", "bench-short")
                    for owner in order if n % 2 else order[::-1]:
                        restores.setdefault((owner, tail), []).append(
                            await measure_restore(pool, owner, tail)
                        )
            hosting = await host_in_a_process_of_its_own(dsn, "bench-long")
        finally:
            await pool.close()

    print(f"{'appends':<10}{'history':>10}{'server us':>11}{'WAL KiB':>9}{'p50 ms':>8}"
          f"{'p99 ms':>8}   (each: median of {args.rounds} rounds)")  # fmt: skip
    for size, r in append.items():
        print(f"{'message':<10}{size:>10,}{r['server_cpu_us']:>11.1f}{r['wal_kib']:>9.2f}"
              f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}")  # fmt: skip
    for size, r in spawn.items():
        print(f"{'task':<10}{size:>10,}{r['server_cpu_us']:>11.1f}{r['wal_kib']:>9.2f}"
              f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}")  # fmt: skip
    medians = {key: statistics.median(times) for key, times in restores.items()}
    long_s, short_s = medians["bench-long", 50], medians["bench-short", 50]
    long_run, short_run = medians["bench-long", 0], medians["bench-short", 0]
    rounds = len(restores["bench-long", 50])
    print(f"restoring {args.restore:,} with 50-message tails: 2,000-message histories"
          f" {long_s:.3f} s, 20-message {short_s:.3f} s (medians of {rounds})")  # fmt: skip
    print(f"restoring {args.restore:,} as `run` does (lengths only): {long_run:.3f} s,"
          f" {short_run:.3f} s")  # fmt: skip
    print(f"hosting {hosting['supervisors']:,} idle supervisors with 2,000-message histories:"
          f" {hosting['rss_kib']:.2f} KiB of RSS each")  # fmt: skip
    result: dict[str, Any] = {
        "append_cpu_ratio_20000_vs_20": round(
            append[20_000]["server_cpu_us"] / append[20]["server_cpu_us"], 3
        ),
        "wal_kib_per_append_20000": round(append[20_000]["wal_kib"], 3),
        "spawn_cpu_ratio_10000_vs_0": round(
            spawn[10_000]["server_cpu_us"] / spawn[0]["server_cpu_us"], 3
        ),
        "rss_kib_per_idle_supervisor_2000": round(hosting["rss_kib"], 2),
        "restore_ratio_2000_vs_20": round(long_s / short_s, 3),
        "restore_ratio_2000_vs_20_as_run": round(long_run / short_run, 3),
        "appends": {
            str(size): {k: round(v, 3) for k, v in r.items()} for size, r in append.items()
        },
        "spawns": {str(size): {k: round(v, 3) for k, v in r.items()} for size, r in spawn.items()},
        "restore_s": {
            f"{owner.removeprefix('bench-')}_tail_{tail}": [round(t, 3) for t in times]
            for (owner, tail), times in restores.items()
        },
        "supervisors_per_size": args.supervisors,
        "appends_per_supervisor": args.appends,
        "machine": machine(),
    }
    return result


async def host_only(dsn: str, owner: str) -> dict[str, float]:
    pool = await open_pool(dsn, 4)
    try:
        return await measure_hosting(pool, dsn, owner)
    finally:
        await pool.close()


def cli() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--host":  # the hosting process
        run(host_only, sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supervisors", type=int, default=40, help="per size")
    parser.add_argument("--appends", type=int, default=100, help="per supervisor and size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--restore", type=int, default=1_000, help="supervisors per restore")
    args = parser.parse_args()
    run(main, args)


if __name__ == "__main__":
    cli()
