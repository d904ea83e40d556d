"""Benchmark: one daemon hosting 10,000 idle in-process supervisors.

Each supervisor has a 20-message conversation history and an agent that waits (as one
waiting for an answer does); the daemon heartbeats every one of them every 5 s, for a
minute. Reports the memory each hosted supervisor costs (RSS growth from before the
supervisors were loaded to after all their agents started, divided by their number),
the statements the heartbeats cost, and the daemon's CPU.

Usage (from the repository root): python -m bench.scale [--supervisors 10000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from typing import Any

import anyio
import anyio.abc

from bench._setup import create_supervisors, fresh_database, machine, open_pool, run
from daemon.ops.gc_tuning import collect_on_a_clock, tune_for_throughput
from daemon.persistence.queue import PersistenceQueue
from daemon.runtime.host import Host
from daemon.store import EventStore, Store, WorkStore
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner


async def idle_agent(sup: Any) -> None:
    """Waits, as a supervisor waiting for a person does."""
    await anyio.sleep_forever()


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database() as dsn:
        pool = await open_pool(dsn, 4)
        try:
            await create_supervisors(pool, args.supervisors)
            await pool.execute(
                "INSERT INTO daemons (id, hostname, pid, version, lease_expires_at)"
                " VALUES ('bench', 'h', 1, '0', now() + interval '1 hour')"
            )
            await pool.execute(
                "UPDATE supervisors SET owner_daemon_id = 'bench', agent = 'bench.scale:idle_agent'"
            )
            queue = PersistenceQueue(EventStore(pool))
            hub = Hub(WorkStore(pool, dsn=dsn))
            async with anyio.create_task_group() as tg:
                await tg.start(queue.run)
                await tg.start(hub.run)
                gc.collect()
                before = rss_kib()
                work = WorkStore(pool)
                runner = TaskRunner(work, tg, daemon_id="bench")
                host = Host(Store(pool), work, "bench", queue=queue, hub=hub, runner=runner,
                            delivery=Delivery(work, tg), tg=tg,
                            heartbeat_s=args.heartbeat_s)  # fmt: skip
                started = await host.start({})
                await anyio.sleep(0.5)  # every agent has run up to its wait
                gc.collect()
                after = rss_kib()
                tune_for_throughput()  # as `supervisor-daemon run` does once started
                tg.start_soon(collect_on_a_clock)
                tg.start_soon(host.heartbeats)
                batches0, coalesced0 = queue.counters.batches, queue.counters.coalesced
                cpu0, wall0 = time.process_time(), time.perf_counter()
                await anyio.sleep(args.seconds)
                cpu = time.process_time() - cpu0
                wall = time.perf_counter() - wall0
                batches = queue.counters.batches - batches0
                heartbeats = queue.counters.coalesced - coalesced0
                rounds = heartbeats / max(started, 1)
                await queue.drain()
                tg.cancel_scope.cancel()
            written = await pool.fetchval(
                "SELECT count(*) FROM supervisors"
                " WHERE last_activity > now() - make_interval(secs => $1)",
                args.heartbeat_s * 2,
            )
        finally:
            await pool.close()
    result = {
        "supervisors": started,
        "rss_kib_per_supervisor": round((after - before) / max(started, 1), 2),
        "rss_mib_total": round(after / 1024, 1),
        "heartbeat_rounds": round(rounds, 1),
        "heartbeat_statements_per_s": round(batches / wall, 3),
        "statements_per_heartbeat_round": round(batches / max(rounds, 1), 2),
        "daemon_cpu_percent": round(100 * cpu / wall, 2),
        "recently_heartbeated": written,
        "machine": machine(),
    }
    print(f"supervisors hosted:                {started:,}")
    print(
        f"RSS per supervisor:                {result['rss_kib_per_supervisor']} KiB"
        f" (process {result['rss_mib_total']} MiB)"
    )
    print(f"heartbeat rounds in {args.seconds:.0f} s:          {result['heartbeat_rounds']}")
    print(
        f"statements per heartbeat round:    {result['statements_per_heartbeat_round']}"
        f" (lanes: {len(queue._lanes)})"
    )
    print(f"heartbeat statements per second:   {result['heartbeat_statements_per_s']}")
    print(f"daemon CPU:                        {result['daemon_cpu_percent']} %")
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supervisors", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    args = parser.parse_args()
    run(main, args)


if __name__ == "__main__":
    cli()
