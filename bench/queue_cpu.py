"""Benchmark: the daemon's own CPU per event in the persistence queue, no database.

The closed loop of bench/persistence.py (1,000 supervisors, 8 save points in flight
each, the same mix of events) against a store that encodes each batch as the real one
does and answers at once: what is left is the daemon's side of the work. Prints
microseconds per acknowledged event for the whole loop, then for each step timed on
its own (making events, folding, encoding), and with --profile the functions that
take the time (cProfile, sorted by own time).

Usage (from the repository root): python -m bench.queue_cpu [--seconds 6] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
import uuid
from typing import Any

import anyio

from bench._setup import machine, run
from bench.workload import Workload
from daemon.ops.gc_tuning import throughput_mode
from daemon.persistence import events
from daemon.persistence.fold import fold
from daemon.persistence.queue import PersistenceQueue
from daemon.store import Batch


class EncodingStore:
    """Encodes each batch (as EventStore.apply_batch does) and acknowledges it."""

    def __init__(self) -> None:
        self.batches = 0

    async def apply_batch(self, batch: Batch) -> list[uuid.UUID]:
        batch.parameters()
        self.batches += 1
        await asyncio.sleep(0)  # one trip through the event loop, as a socket read is
        return []

    async def supervisors_not_at_event(self, last_events: dict[uuid.UUID, str]) -> set[uuid.UUID]:
        return set()

    async def close(self) -> None:
        return None


async def closed_loop(supervisors: int, in_flight: int, seconds: float) -> dict[str, float]:
    store = EncodingStore()
    queue = PersistenceQueue(store)  # type: ignore[arg-type]
    acked = 0
    running = True

    async def stream(workload: Workload) -> None:
        nonlocal acked
        submit, nowait = queue.submit, queue.submit_nowait
        i = 0
        while running:
            await submit(workload.event())
            acked += 1
            i += 1
            if not i & 3:
                nowait(events.progress_reported(workload.sid, i % 101))
                if not i & 15:
                    nowait(events.heartbeat(workload.sid))

    def stop() -> None:
        nonlocal running
        running = False

    workloads = [Workload(uuid.uuid4(), n) for n in range(supervisors)]
    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        asyncio.get_running_loop().call_later(seconds, stop)
        cpu, wall = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as run_tg:
            for w in workloads:
                for _ in range(in_flight):
                    run_tg.start_soon(stream, w)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await queue.drain()
    return {
        "us_per_event": cpu / acked * 1e6,
        "events_per_s": acked / wall,
        "mean_batch": acked / max(store.batches, 1),
    }


def steps(supervisors: int, batch: int = 4_000, rounds: int = 20) -> dict[str, float]:
    """The steps the loop is made of, each timed alone on batches like the loop's."""
    workloads = [Workload(uuid.uuid4(), n) for n in range(supervisors)]
    made: list[list[events.Event]] = []
    started = time.process_time()
    for _ in range(rounds):
        made.append([workloads[n % supervisors].event() for n in range(batch)])
    make_s = time.process_time() - started
    started = time.process_time()
    folded = [fold(chunk) for chunk in made]
    fold_s = time.process_time() - started
    started = time.process_time()
    for one in folded:
        one.parameters()
    encode_s = time.process_time() - started
    count = batch * rounds
    return {
        "make_event_us": make_s / count * 1e6,
        "fold_us": fold_s / count * 1e6,
        "encode_us": encode_s / count * 1e6,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with throughput_mode():
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
        loop = await closed_loop(args.supervisors, args.in_flight, args.seconds)
        if args.profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        parts = steps(args.supervisors)
    rest = loop["us_per_event"] - sum(parts.values())
    print(f"closed loop, no database:  {loop['us_per_event']:.2f} us of CPU per event,"
          f" {loop['events_per_s']:,.0f} events/s,"
          f" mean batch {loop['mean_batch']:.0f}")  # fmt: skip
    print(f"  making events            {parts['make_event_us']:.2f} us")
    print(f"  folding                  {parts['fold_us']:.2f} us")
    print(f"  encoding (orjson)        {parts['encode_us']:.2f} us")
    print(f"  submit, wait, wake, ack  {rest:.2f} us (the rest)")
    return {**{k: round(v, 3) for k, v in loop.items()},
            **{k: round(v, 3) for k, v in parts.items()},
            "submit_wait_wake_us": round(rest, 3), "machine": machine()}  # fmt: skip


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--supervisors", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    run(main, parser.parse_args())


if __name__ == "__main__":
    cli()
