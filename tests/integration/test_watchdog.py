"""The systemd watchdog: its interval from the environment, and what counts as unhealthy."""

from __future__ import annotations

import os
import uuid
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.ops import watchdog
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.store import Batch, EventStore, Store
from tests.factories import new_state
from tests.queues import running


def test_interval_comes_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog.interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog.interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog.interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog.interval_s() == 30.0
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog.interval_s() is None


def test_diagnose_names_a_hung_database_call() -> None:
    assert watchdog.diagnose(0.0, 30.0) is None
    assert watchdog.diagnose(29.0, 30.0) is None
    problem = watchdog.diagnose(95.0, 30.0)
    assert problem is not None
    assert "95 s" in problem


class HangingStore(EventStore):
    """A write that neither returns nor fails until released (a connection lost
    without a reset)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        super().__init__(pool)
        self.release = anyio.Event()

    async def apply_batch(self, batch: Batch) -> list[uuid.UUID]:
        await self.release.wait()
        return await super().apply_batch(batch)


async def test_a_hung_write_makes_the_daemon_unhealthy_until_it_returns(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    sid = (await store.save_supervisor_state_full(new_state())).id
    hanging = HangingStore(pool)
    queue = PersistenceQueue(hanging)
    assert queue.longest_call_s() == 0.0
    async with running(queue), anyio.create_task_group() as tg:
        tg.start_soon(queue.submit, events.activity_reported(sid, "stuck"))
        with anyio.fail_after(10):
            while watchdog.diagnose(queue.longest_call_s(), 0.05) is None:
                await anyio.sleep(0.01)
        hanging.release.set()
    assert queue.longest_call_s() == 0.0
    assert queue.counters.written == 1
