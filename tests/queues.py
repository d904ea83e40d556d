"""A persistence queue with its flusher running, and restoration's outcomes, for tests.

And the way tests change a supervisor that exists: as the daemon does, through events
submitted to a running queue under the epoch the supervisor is owned under now (`save`,
`ask`, `spawn`, `apply_answer`), so every such write is fenced and journaled like an
agent's. The store has no other write of a supervisor's state
(tests/unit/test_write_path.py). A state no event makes (a corrupt row, a faked owner)
is written with raw SQL, as fault injection.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import asyncpg

from daemon.models import PendingQuestion, SupervisorTask
from daemon.persistence import events
from daemon.persistence.queue import EventRejectedError, PersistenceQueue
from daemon.restoration.records import RestorationOutcome
from daemon.restoration.run import restore_all
from daemon.store import DaemonRegistry, EventStore, RestorationStore, Store


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


async def epoch_of(pool: asyncpg.Pool[Any], supervisor_id: uuid.UUID) -> int:
    """The epoch `supervisor_id` is owned under now (0 before any claim)."""
    epoch = await pool.fetchval("SELECT owner_epoch FROM supervisors WHERE id = $1", supervisor_id)
    assert epoch is not None, f"supervisor {supervisor_id} does not exist"
    return int(epoch)


async def save(
    pool: asyncpg.Pool[Any],
    make: Callable[..., events.Event],
    supervisor_id: uuid.UUID,
    *args: Any,
    **kwargs: Any,
) -> None:
    """Write one event, `make(supervisor_id, *args, **kwargs)` under the supervisor's
    current epoch, through a queue of its own: `save(pool, events.phase_changed, sid,
    "review")`. EventRejectedError when it is refused."""
    event = make(supervisor_id, *args, epoch=await epoch_of(pool, supervisor_id), **kwargs)
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(event)


async def ask(pool: asyncpg.Pool[Any], supervisor_id: uuid.UUID, *asked: PendingQuestion) -> None:
    """The supervisor asks `asked`, in order: it now waits for its user."""
    for question in asked:
        await save(pool, events.question_asked, supervisor_id, question)


async def spawn(
    pool: asyncpg.Pool[Any],
    supervisor_id: uuid.UUID,
    task_id: uuid.UUID | None = None,
    *,
    spec: Any = None,
    awaited: bool = False,
) -> SupervisorTask:
    """The supervisor spawns a task (a new pending row, awaited when told)."""
    task_id = task_id or uuid.uuid4()
    await save(pool, events.task_spawned, supervisor_id, task_id, spec=spec, awaited=awaited)
    task = await Store(pool).get_task(task_id)
    assert task is not None
    return task


async def apply_answer(
    pool: asyncpg.Pool[Any],
    supervisor_id: uuid.UUID,
    question_id: uuid.UUID,
    answer: str,
    *,
    answered_by: str | None = None,
) -> None:
    """The supervisor takes an answer: the question is no longer pending, and the
    answer is recorded (or, recorded already, marked applied)."""
    await save(
        pool, events.question_answered, supervisor_id, question_id, answer,
        answered_by=answered_by,
    )  # fmt: skip
