"""Leases that mean what they say, claims that share, handoffs, on real PostgreSQL.

A renewal never extends an expired lease; a claim of an expired daemon's supervisors
marks it stopped first, so a late renewal fails; one process per daemon id; a lease is
counted on a clock that keeps counting while the machine sleeps; claims take a fair
share; a stop hands the supervisors over; an operator's restoration takes a supervisor
from a live owner under a new epoch instead of writing under the owner's.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.models import SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue, SupervisorLostError
from daemon.restoration.run import restore_all
from daemon.services import Services
from daemon.store import DaemonRegistry, EventStore, RestorationStore, Store, Stores
from tests.factories import new_state, own
from tests.processes import daemon_process, read_until, run_cli
from tests.queues import running


async def test_a_second_process_with_the_same_id_exits_with_a_clear_error(
    dsn: str, tmp_path: Path
) -> None:
    with daemon_process(dsn, tmp_path / "a", SUPERVISOR_DAEMON_DAEMON_ID="twin") as first:
        read_until(first, "daemon.ready")
        with daemon_process(
            dsn, tmp_path / "b", SUPERVISOR_DAEMON_DAEMON_ID="twin", SUPERVISOR_DAEMON_LEASE_S="1"
        ) as second:
            assert second.wait(timeout=60) == 78
            assert second.stderr is not None
            error = second.stderr.read()
            assert "daemon id 'twin' is in use by another running process" in error
        assert first.poll() is None  # the first goes on
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


async def test_manual_restore_takes_over_from_a_live_owner_with_a_new_epoch(
    pool: asyncpg.Pool[Any], store: Store, dsn: str
) -> None:
    parked = await store.save_supervisor_state_full(
        new_state(state=SupervisorStateKind.BLOCKED, error_message="crash loop")
    )
    await own(pool, "live", parked.id, epoch=7)  # its owner's lease is live
    outcome = await Services(Stores.over(pool)).restore(str(parked.id))
    assert outcome.outcome == "restored"
    row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", parked.id)
    assert row is not None
    # Written under a new epoch no daemon holds, not under the live owner's 7.
    assert (row["owner_daemon_id"], row["owner_epoch"]) == (None, 8)
    assert (row["state"], row["restoration_source"]) == ("working", "manual")
    # The owner's next write is refused; a daemon's next claim round takes it.
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        with pytest.raises(SupervisorLostError, match="epoch mismatch"):
            await queue.submit(events.activity_reported(parked.id, "still mine?", epoch=7))
    claimed = await restore_all(RestorationStore(pool), "live", include_own=False)
    assert claimed.supervisors == 1
    shown = run_cli(
        "supervisors", "show", str(parked.id), env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    )
    assert "owner         live (epoch 9)" in shown.stdout


async def test_status_shows_each_daemons_lease_capacity_and_supervisors(
    pool: asyncpg.Pool[Any], store: Store, dsn: str
) -> None:
    await DaemonRegistry(pool).register("worker-1", hostname="box", pid=7, version="0",
                                        lease_s=30, capacity=50)  # fmt: skip
    state = await store.save_supervisor_state_full(new_state())
    await own(pool, "worker-1", state.id)
    shown = run_cli("status", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn})
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if "worker-1" in line)
    assert "alive" in line
    assert "lease until" in line
    assert "capacity 50" in line
    assert "owns 1 (1 unfinished)" in line


async def test_a_daemon_told_not_to_release_keeps_its_supervisors_over_a_restart(
    dsn: str, pool: asyncpg.Pool[Any], store: Store, tmp_path: Path
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    keep = {"SUPERVISOR_DAEMON_RELEASE_ON_STOP": "false", "SUPERVISOR_DAEMON_DAEMON_ID": "keeper"}
    with daemon_process(dsn, tmp_path, **keep) as proc:
        read_until(proc, "daemon.ready")
        proc.send_signal(signal.SIGTERM)
        lines = read_until(proc, "daemon.stopped")
        assert proc.wait(timeout=30) == 0
    assert not [line for line in lines if line["event"] == "daemon.released"]
    row = await pool.fetchrow(
        "SELECT d.stopped_at, d.lease_expires_at > now() AS live, s.owner_daemon_id"
        " FROM daemons d JOIN supervisor_states s ON s.owner_daemon_id = d.id WHERE s.id = $1",
        state.id,
    )
    assert row is not None
    # Still its own, its lease running: another daemon waits for it to expire.
    assert (row["stopped_at"], row["live"], row["owner_daemon_id"]) == (None, True, "keeper")
    await DaemonRegistry(pool).register("other", hostname="h", pid=1, version="0", lease_s=30)
    assert (await restore_all(RestorationStore(pool), "other", include_own=False)).supervisors == 0
