"""Leases that mean what they say, claims that share, handoffs, on real PostgreSQL.

A renewal never extends an expired lease; a claim of an expired daemon's supervisors
marks it stopped first, so a late renewal fails; one process per daemon id; a lease is
counted on a clock that keeps counting while the machine sleeps; claims take a fair
share; a stop hands the supervisors over; an operator's restoration takes a supervisor
from a live owner under a new epoch instead of writing under the owner's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import MutableMapping
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.errors import DaemonIdInUseError
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue, SupervisorLostError
from daemon.restoration.run import restore_all
from daemon.runtime.lease import LeaseKeeper, LeaseTiming, Registration, boottime
from daemon.store import DaemonRegistry, EventStore, RestorationStore, Store
from tests.factories import new_state, own
from tests.queues import running, save


def _registration(daemon_id: str) -> Registration:
    return Registration(daemon_id=daemon_id, hostname="h", pid=os.getpid(), version="0",
                        capacity=100)  # fmt: skip


async def _expire(pool: asyncpg.Pool[Any], daemon_id: str) -> None:
    await pool.execute(
        "UPDATE daemons SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        daemon_id,
    )


async def test_an_expired_lease_is_never_renewed(pool: asyncpg.Pool[Any]) -> None:
    registry = DaemonRegistry(pool)
    token = uuid.uuid4()
    await registry.register("d1", hostname="h", pid=1, version="0", lease_s=30, token=token)
    left = await registry.renew_lease("d1", 30, token)
    assert left is not None
    assert 29 < left <= 30
    assert await registry.renew_lease("d1", 30, uuid.uuid4()) is None  # another process's
    await _expire(pool, "d1")
    assert await registry.renew_lease("d1", 30, token) is None
    # Registering again is a new lease (and the daemon must claim again: new epochs).
    await registry.register("d1", hostname="h", pid=1, version="0", lease_s=30, token=token)
    assert await registry.renew_lease("d1", 30, token) is not None


async def test_a_claim_of_an_expired_daemon_marks_it_stopped_so_it_cannot_renew(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    registry = DaemonRegistry(pool)
    old, new = uuid.uuid4(), uuid.uuid4()
    await registry.register("old", hostname="h", pid=1, version="0", lease_s=30, token=old)
    await registry.register("new", hostname="h", pid=2, version="0", lease_s=30, token=new)
    state = await store.save_supervisor_state_full(new_state())
    await own(pool, "old", state.id, epoch=4)
    await _expire(pool, "old")
    claimed = await RestorationStore(pool).claim("new", 10, include_own=False, token=new)
    assert [(row["id"], row["owner_epoch"], row["previous_owner"]) for row in claimed] == [
        (state.id, 5, "old")
    ]
    # The expired daemon's renewal, however late, is refused: it cannot come back to
    # supervisors another daemon took.
    assert await registry.renew_lease("old", 30, old) is None
    stopped = await pool.fetchval("SELECT stopped_at IS NOT NULL FROM daemons WHERE id = 'old'")
    assert stopped


async def test_a_daemon_whose_lease_expired_claims_nothing(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    token = uuid.uuid4()
    await DaemonRegistry(pool).register("d1", hostname="h", pid=1, version="0", lease_s=30,
                                        token=token)  # fmt: skip
    await store.save_supervisor_state_full(new_state())
    await _expire(pool, "d1")
    assert await RestorationStore(pool).claim("d1", 10, token=token) == []


async def test_claims_take_a_fair_share(pool: asyncpg.Pool[Any], store: Store) -> None:
    registry = DaemonRegistry(pool)
    for name in ("a", "b", "c"):
        await registry.register(name, hostname="h", pid=1, version="0", lease_s=30)
    for _ in range(10):
        await store.save_supervisor_state_full(new_state())
    summaries = [
        await restore_all(RestorationStore(pool), name, include_own=False)
        for name in ("a", "b", "c")
    ]
    assert [s.supervisors for s in summaries] == [4, 4, 2]  # up to ceil(10 / 3) each
    # A daemon that dies: the two others share its supervisors out.
    await _expire(pool, "c")
    taken = [
        await restore_all(RestorationStore(pool), name, include_own=False) for name in ("a", "b")
    ]
    assert [s.supervisors for s in taken] == [1, 1]
    owners = await pool.fetch(
        "SELECT owner_daemon_id, count(*) FROM supervisor_states GROUP BY 1 ORDER BY 1"
    )
    assert [(row[0], row[1]) for row in owners] == [("a", 5), ("b", 5)]
    # Capacity bounds the share.
    await registry.register("small", hostname="h", pid=1, version="0", lease_s=30, capacity=1)
    for _ in range(6):
        await store.save_supervisor_state_full(new_state())
    assert (
        await restore_all(RestorationStore(pool), "small", capacity=1, include_own=False)
    ).supervisors == 1


async def test_one_daemon_id_is_held_by_one_process(dsn: str, pool: asyncpg.Pool[Any]) -> None:
    first = LeaseKeeper(
        DaemonRegistry(pool, dsn=dsn), _registration("dup"), LeaseTiming(30), id_wait_s=0.3
    )
    second = LeaseKeeper(
        DaemonRegistry(pool, dsn=dsn), _registration("dup"), LeaseTiming(30), id_wait_s=0.3
    )
    await first.acquire()
    try:
        with pytest.raises(DaemonIdInUseError, match="'dup' is in use by another running process"):
            await second.acquire()
        # The second never touched the first's registration.
        token = await pool.fetchval("SELECT token FROM daemons WHERE id = 'dup'")
        assert token == first.token
    finally:
        await first.close()
    await second.acquire()  # the id is free once its holder is gone
    await second.close()


async def test_a_suspended_machine_finds_its_lease_gone_when_it_wakes(
    dsn: str, pool: asyncpg.Pool[Any], captured_logs: list[MutableMapping[str, Any]]
) -> None:
    # The event loop's clock stops while a machine is suspended; CLOCK_BOOTTIME does not.
    # Here the suspend-counting clock jumps ahead by a whole lease, as after a lid closed
    # for that long: the daemon must give the lease up at once, not a lease later.
    slept = 0.0
    keeper = LeaseKeeper(DaemonRegistry(pool, dsn=dsn), _registration("sleepy"), LeaseTiming(60),
                         clock=lambda: boottime() + slept)  # fmt: skip
    await keeper.acquire()
    lost: list[str] = []
    keeper.on_lost = lost.append
    try:
        with anyio.fail_after(20):  # a monotonic clock would wait 50 s
            async with anyio.create_task_group() as tg:
                tg.start_soon(keeper.run)
                await anyio.sleep(0.1)
                slept = 60.0
                while not lost:
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
    finally:
        await keeper.close()
    assert "could not be renewed" in lost[0]


async def test_a_stop_hands_the_supervisors_over(pool: asyncpg.Pool[Any], store: Store) -> None:
    registry = DaemonRegistry(pool)
    token = uuid.uuid4()
    await registry.register("leaving", hostname="h", pid=1, version="0", lease_s=30, token=token)
    await registry.register("staying", hostname="h", pid=2, version="0", lease_s=30)
    state = await store.save_supervisor_state_full(new_state())
    done = await store.save_supervisor_state_full(new_state())
    await own(pool, "leaving", state.id, done.id, epoch=2)
    await save(pool, events.completed, done.id)
    assert await registry.release("leaving", uuid.uuid4()) is None  # not its token
    assert await registry.release("leaving", token) == 1
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        with pytest.raises(SupervisorLostError, match="epoch mismatch"):  # a late write of its own
            await queue.submit(events.activity_reported(state.id, "late", epoch=2))
    # Claimed at once, not at the lease's expiry.
    summary = await restore_all(RestorationStore(pool), "staying", include_own=False)
    assert summary.supervisors == 1
    row = await pool.fetchrow(
        "SELECT owner_daemon_id, owner_epoch, restoration_source FROM supervisor_states"
        " WHERE id = $1",
        state.id,
    )
    assert row is not None
    assert tuple(row.values()) == ("staying", 4, "task_reassignment")
