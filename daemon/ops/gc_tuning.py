"""Garbage collection for a process that makes many short-lived objects.

Every save point allocates a few small objects (an event, its payload, a future) that
live until their batch commits: tens of milliseconds, long enough to be seen by
CPython's automatic collector, which then walks tens of thousands of in-flight objects
about a hundred times a second. Measured in bench/persistence.py, that was a sixth of
the daemon's CPU, and it found nothing to free: the daemon makes almost no reference
cycles (reference counting frees everything else at once).

So once start-up is done the long-lived state (supervisors, pools, modules) is frozen
out of the collector's view, automatic collection is turned off, and a clock collects
instead: the young generations every 10 s, everything every 5 minutes. A young
collection walks what is alive and new since the last one, which is about what is in
flight whatever the interval (60 ms for 8,000 in-flight events in the benchmark), so
collecting less often costs less. Cycles, rare as they are,
still go away within 10 s, or 5 minutes once they reach the oldest generation.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

import anyio

YOUNG_INTERVAL_S = 10.0
FULL_EVERY = 30  # young collections between two full ones


def tune_for_throughput() -> None:
    """Freeze what exists now and stop automatic collection. Call once start-up is done,
    and run `collect_on_a_clock` for as long as the process runs."""
    gc.collect()
    gc.freeze()
    gc.disable()


def restore_defaults() -> None:
    gc.unfreeze()
    gc.enable()


async def collect_on_a_clock(
    *, young_interval_s: float = YOUNG_INTERVAL_S, full_every: int = FULL_EVERY
) -> None:
    """Collect the young generations every `young_interval_s`, everything now and then."""
    rounds = 0
    while True:
        await anyio.sleep(young_interval_s)
        rounds += 1
        gc.collect(2 if rounds % full_every == 0 else 1)


@contextlib.asynccontextmanager
async def throughput_mode() -> AsyncIterator[None]:
    """`tune_for_throughput` plus the collecting clock, undone on exit (benchmarks)."""
    tune_for_throughput()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect_on_a_clock)
            yield
            tg.cancel_scope.cancel()
    finally:
        restore_defaults()
