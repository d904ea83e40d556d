"""Fencing reaches side effects, on real PostgreSQL: tasks, agents, leases, manual restore.

A daemon that lost a supervisor (another daemon claimed it: a new epoch) must not start
its tasks, must not write their outcomes, and must stop its agent and its running tasks
as soon as it learns it. A lease that expired is never renewed; a daemon id is held by
one process only; an operator's restoration never writes under a live owner's epoch.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import asyncpg
import pytest

from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue, SupervisorLostError
from daemon.runtime.host import Host
from daemon.store import EventStore, Store, WorkStore
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner
from tests.factories import new_state, own
from tests.queues import running, spawn

DEADLINE_S = 20


async def _claim_by(pool: asyncpg.Pool[Any], daemon_id: str, sid: uuid.UUID) -> int:
    """What another daemon's claim does to a supervisor: its id, a new epoch."""
    await own(pool, daemon_id)
    epoch: int = await pool.fetchval(
        "UPDATE supervisor_states SET owner_daemon_id = $1, owner_epoch = owner_epoch + 1"
        " WHERE id = $2 RETURNING owner_epoch",
        daemon_id,
        sid,
    )
    return epoch


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _wait_for(predicate: Any, what: str) -> None:
    with anyio.fail_after(DEADLINE_S):
        while not await predicate():
            await anyio.sleep(0.05)


# -- state ----------------------------------------------------------------------------


async def test_an_event_naming_no_epoch_never_writes_an_owned_supervisor(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    """Only a writer outside every daemon names no epoch: it may write a supervisor no
    daemon owns, never one a daemon does (apply_batch)."""
    free = await store.save_supervisor_state_full(new_state())
    owned = await store.save_supervisor_state_full(new_state())
    await own(pool, "d1", owned.id, epoch=1)
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(events.activity_reported(free.id, "outside"))
        with pytest.raises(SupervisorLostError):
            await queue.submit(events.activity_reported(owned.id, "outside"))
        await queue.submit(events.activity_reported(owned.id, "its owner", epoch=1))
    activities = await pool.fetch("SELECT id, current_activity, last_event_seq FROM supervisors")
    assert {tuple(row) for row in activities} == {
        (free.id, "outside", 1),
        (owned.id, "its owner", 1),
    }


# -- tasks ----------------------------------------------------------------------------


async def test_a_task_of_a_supervisor_claimed_by_another_daemon_never_starts(
    pool: asyncpg.Pool[Any],
    store: Store,
    tmp_path: Path,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    await own(pool, "old", state.id, epoch=1)
    marker = tmp_path / "ran"
    task = await spawn(pool, state.id, spec={"command": f"touch {marker}"})
    await _claim_by(pool, "new", state.id)  # while "old" was paused, say
    lost: list[tuple[uuid.UUID, int]] = []
    async with anyio.create_task_group() as tg:
        runner = TaskRunner(WorkStore(pool), tg, daemon_id="old")
        runner.on_lost = lambda sid, epoch: lost.append((sid, epoch))
        assert runner.start(task.id, task.spec, supervisor_id=state.id,
                            contract_id=state.contract_id, epoch=1)  # fmt: skip
    row = await pool.fetchrow("SELECT status, runs FROM supervisor_tasks WHERE id = $1", task.id)
    assert row is not None
    assert (row["status"], row["runs"]) == ("pending", 0)  # for its new owner to run
    assert not marker.exists()
    assert lost == [(state.id, 1)]
    fenced = [line for line in captured_logs if line["event"] == "task.fenced"]
    assert [(line["write"], line["epoch"]) for line in fenced] == [("start", 1)]


async def test_a_task_starts_once_even_when_two_owners_try(
    pool: asyncpg.Pool[Any], store: Store, tmp_path: Path
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    await own(pool, "a", state.id, epoch=1)
    runs = tmp_path / "runs"
    task = await spawn(pool, state.id, spec={"command": f"echo once >> {runs}"})
    work = WorkStore(pool)
    first = await work.start_task(task.id, supervisor_id=state.id, daemon_id="a", epoch=1)
    again = await work.start_task(task.id, supervisor_id=state.id, daemon_id="a", epoch=1)
    await _claim_by(pool, "b", state.id)
    stale = await work.start_task(task.id, supervisor_id=state.id, daemon_id="a", epoch=1)
    assert (first.owned, first.changed) == (True, True)
    # The same owner under the same epoch asking again is its own call retried (a reply
    # lost with a connection: tests/integration/test_task_start_retry.py): started, and
    # counted once.
    assert (again.owned, again.changed) == (True, True)
    assert (stale.owned, stale.changed) == (False, False)  # not a's any more
    assert await pool.fetchval("SELECT runs FROM supervisor_tasks WHERE id = $1", task.id) == 1


async def test_an_outcome_is_written_only_under_the_epoch_the_task_ran_under(
    pool: asyncpg.Pool[Any], store: Store, tmp_path: Path
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    await own(pool, "old", state.id, epoch=1)
    gate = tmp_path / "gate"
    task = await spawn(
        pool, state.id, spec={"command": f"while [ ! -e {gate} ]; do sleep 0.02; done; echo done"}
    )
    lost: list[tuple[uuid.UUID, int]] = []
    outcomes: list[str] = []

    async def running_now() -> bool:
        status = await pool.fetchval("SELECT status FROM supervisor_tasks WHERE id = $1", task.id)
        return bool(status == "running")

    async with anyio.create_task_group() as tg:
        runner = TaskRunner(WorkStore(pool), tg, daemon_id="old", finished=outcomes.append)
        runner.on_lost = lambda sid, epoch: lost.append((sid, epoch))
        runner.start(task.id, task.spec, supervisor_id=state.id, contract_id=state.contract_id,
                     epoch=1)  # fmt: skip
        await _wait_for(running_now, "the task runs")
        await _claim_by(pool, "new", state.id)  # taken over while the process runs
        gate.touch()  # the process finishes; its outcome must not be written
    row = await pool.fetchrow("SELECT status, result, run_epoch FROM supervisor_tasks")
    assert row is not None
    # Left as it was, for the new owner to settle (interrupted, or run again if idempotent).
    assert (row["status"], row["result"], row["run_epoch"]) == ("running", None, 1)
    assert lost == [(state.id, 1)]
    assert outcomes == ["stopped"]


async def test_stopping_a_supervisors_tasks_kills_their_whole_process_group(
    pool: asyncpg.Pool[Any], store: Store, tmp_path: Path
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    await own(pool, "d1", state.id, epoch=1)
    pids = tmp_path / "pids"
    # The shell starts a child that ignores SIGTERM: SIGKILL to the group gets it too.
    command = f"sh -c 'trap \"\" TERM; echo $$ >> {pids}; sleep 60' & echo $$ >> {pids}; wait"
    task = await spawn(pool, state.id, spec={"command": command})
    outcomes: list[str] = []

    async def both_started() -> bool:
        return pids.exists() and len(pids.read_text().split()) == 2

    async with anyio.create_task_group() as tg:
        runner = TaskRunner(WorkStore(pool), tg, daemon_id="d1", finished=outcomes.append)
        runner.start(task.id, task.spec, supervisor_id=state.id, contract_id=state.contract_id,
                     epoch=1)  # fmt: skip
        await _wait_for(both_started, "the task and its child run")
        started = [int(pid) for pid in pids.read_text().split()]
        assert runner.stop(state.id, 1) == 1
        # and it is never started again under that epoch
        assert runner.start(task.id, task.spec, supervisor_id=state.id,
                            contract_id=state.contract_id, epoch=1)  # fmt: skip

    async def all_gone() -> bool:  # SIGKILL is sent; its delivery is the kernel's
        return not [pid for pid in started if _alive(pid)]

    await _wait_for(all_gone, "the task's whole process group is gone")
    assert outcomes == ["stopped"]
    row = await pool.fetchrow("SELECT status, runs FROM supervisor_tasks")
    assert row is not None
    assert (row["status"], row["runs"]) == ("running", 1)  # the next owner interrupts it


# -- agents ---------------------------------------------------------------------------


async def looping_agent(sup: Any) -> None:
    """Spawns one long task (its pid in $MARKER_DIR/task), then reports activities."""
    await sup.spawn_task(
        {"command": f"echo $$ > {os.environ['MARKER_DIR']}/task; sleep 60"}, awaited=False
    )
    for n in range(1_000_000):
        await sup.report_activity(f"step {n}")
        await anyio.sleep(0.05)


@contextlib.asynccontextmanager
async def _host(pool: asyncpg.Pool[Any], dsn: str) -> AsyncIterator[Host]:
    hub = Hub(WorkStore(pool, dsn=dsn), poll_s=0.1)
    async with running(PersistenceQueue(EventStore(pool))) as queue, \
            anyio.create_task_group() as tg:  # fmt: skip
        work = WorkStore(pool)
        runner = TaskRunner(work, tg, daemon_id="d1")
        host = Host(Store(pool), work, "d1", queue=queue, hub=hub, runner=runner,
                    delivery=Delivery(work, tg), tg=tg)  # fmt: skip
        queue.on_lost = lambda sid, epoch: host.drop(sid, epoch, reason="a write was refused")
        runner.on_lost = lambda sid, epoch: host.drop(sid, epoch, reason="fenced")
        yield host
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("agent", ["in_process", "command"])
async def test_a_refused_write_stops_the_agent_and_its_tasks_for_good(  # noqa: PLR0917 - fixtures
    agent: str,
    pool: asyncpg.Pool[Any],
    dsn: str,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    monkeypatch.setenv("MARKER_DIR", str(tmp_path))
    spec = "tests.integration.test_fencing:looping_agent"
    if agent == "command":  # the same, as a process speaking the agent protocol
        script = tmp_path / "agent.sh"
        script.write_text(
            "read -r first\n"
            f'echo \'{{"id": 1, "type": "spawn_task", "awaited": false, "spec":'
            f' {{"command": "echo $$ > {tmp_path}/task; sleep 60"}}}}\'\n'
            "read -r reply\n"
            "n=0\n"
            "while :; do n=$((n+1))\n"
            '  echo "{\\"id\\": $n, \\"type\\": \\"report_activity\\", \\"activity\\": \\"$n\\"}"'
            " || exit 0\n"
            "  read -r reply || exit 0\n"
            "  sleep 0.05\n"
            "done\n"
        )
        spec = f"cmd:/bin/sh {script}"
    state = await store.save_supervisor_state_full(new_state(agent=spec))
    await own(pool, "d1", state.id, epoch=1)
    task_pid = tmp_path / "task"
    async with _host(pool, dsn) as host:
        assert await host.start({}) == 1

        async def task_runs() -> bool:
            return task_pid.exists() and task_pid.read_text().strip() != ""

        await _wait_for(task_runs, "the agent's task runs")
        await _claim_by(pool, "other", state.id)

        async def dropped() -> bool:
            return not host.running

        await _wait_for(dropped, "the host drops the supervisor")
        pid = int(task_pid.read_text())

        async def task_gone() -> bool:
            return not _alive(pid)

        await _wait_for(task_gone, "its task process is stopped")
        agent_pids = [line["pid"] for line in captured_logs
                      if line["event"] == "agent.process_started"]  # fmt: skip

        async def agent_gone() -> bool:
            return not any(_alive(p) for p in agent_pids)

        await _wait_for(agent_gone, "its agent process is stopped")
        # Never started again under the epoch it lost; a new claim (a new epoch) does.
        await pool.execute("UPDATE supervisor_states SET owner_daemon_id = 'd1', owner_epoch = 1")
        assert await host.start({}) == 0
        await pool.execute("UPDATE supervisor_states SET owner_epoch = 3")
        assert await host.start({}) == 1
    dropped_lines = [line for line in captured_logs if line["event"] == "supervisor.dropped"]
    assert dropped_lines[0]["supervisor_id"] == str(state.id)
    assert dropped_lines[0]["epoch"] == 1
    assert not [line for line in captured_logs if line["event"] == "agent.crashed"]
    row = await pool.fetchrow("SELECT state FROM supervisor_states")
    assert row is not None
    assert row["state"] != "failed"  # losing it is not its failure
