"""A persistence queue with its flusher running, and restoration's outcomes, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg

from daemon.persistence import events
from daemon.persistence.queue import EventRejectedError, PersistenceQueue
from daemon.restoration.plan import RestorationOutcome
from daemon.restoration.run import restore_all
from daemon.store import DaemonRegistry, RestorationStore


@contextlib.asynccontextmanager
async def running(q: PersistenceQueue) -> AsyncIterator[PersistenceQueue]:
    """The flusher in a task of its own; drained (and awaited, so errors surface) after."""
    flusher = asyncio.create_task(q.run())
    try:
        yield q
    finally:
        await q.drain()
        await flusher


async def restore_outcomes(
    pool: asyncpg.Pool[Any], daemon_id: str = "d1", **kwargs: Any
) -> dict[uuid.UUID, RestorationOutcome]:
    found: dict[uuid.UUID, RestorationOutcome] = {}
    await DaemonRegistry(pool).register(daemon_id, hostname="h", pid=1, version="0", lease_s=30)
    await restore_all(
        RestorationStore(pool),
        daemon_id,
        on_outcome=lambda o: found.__setitem__(o.supervisor_id, o),
        **kwargs,
    )
    return found


async def submit_together(
    queue: PersistenceQueue, batch: list[events.Event]
) -> dict[str, BaseException | None]:
    """Submit `batch` concurrently (all queued before a flush, so one batch); each
    event's outcome: None when acknowledged, the EventRejectedError otherwise."""
    outcomes: dict[str, BaseException | None] = {}

    async def send(event: events.Event) -> None:
        try:
            await queue.submit(event)
            outcomes[event.id] = None
        except EventRejectedError as exc:
            outcomes[event.id] = exc

    async with anyio.create_task_group() as tg:
        for event in batch:
            tg.start_soon(send, event)
    return outcomes
