"""The collecting clock that replaces automatic garbage collection once started."""

from __future__ import annotations

import gc
import weakref

import anyio

from daemon.ops import gc_tuning


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _make_cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


async def test_the_clock_frees_cycles_while_automatic_collection_is_off() -> None:
    gc_tuning.tune_for_throughput()
    try:
        assert not gc.isenabled()
        ref = _make_cycle()
        assert ref() is not None  # a cycle: reference counting alone never frees it
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: gc_tuning.collect_on_a_clock(young_interval_s=0.01))
            with anyio.fail_after(10):
                while ref() is not None:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    finally:
        gc_tuning.restore_defaults()
    assert gc.isenabled()


async def test_throughput_mode_restores_automatic_collection() -> None:
    async with gc_tuning.throughput_mode():
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
