"""Chaos with three real daemon processes on one database (the harness: bench/cluster.py).

(a) a SIGKILLed daemon's supervisors are owned and restored by the others within a lease
and 2 s, none lost, none owned twice; (b) a daemon SIGSTOPped past its lease and then
continued writes nothing more, and its agents and tasks stop; (c) a short randomized
run of kills, pauses and resumes, checked after every round. `python -m bench.chaos`
runs the long version (200 rounds).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.chaos import Figures, chaos_round
from bench.cluster import Cluster, agent_processes, descendants, wait_for

pytestmark = pytest.mark.acceptance
LEASE_S = 2.5
SUPERVISORS = 9


async def _started(cluster: Cluster, pool: asyncpg.Pool[Any]) -> dict[uuid.UUID, str | None]:
    """Three daemons, nine supervisors created once all three run: a fair share each."""
    cluster.start_all()
    await wait_for(lambda: cluster.registered(pool, list(cluster.daemons)), 60, "registered")
    await cluster.create_supervisors(pool, SUPERVISORS)
    await cluster.settle(pool, 60)

    async def all_saved() -> bool:
        # An agent running is not yet a supervisor that saved something: one killed
        # before its first save is started afresh by its next owner, not restored.
        unsaved = await pool.fetchval(
            "SELECT count(*) FROM supervisor_states WHERE coalesce(last_event_seq, 0) = 0"
        )
        return bool(unsaved == 0)

    await wait_for(all_saved, 30, "every supervisor saved its first event")
    owners = await cluster.owners(pool)
    assert Counter(owners.values()) == {"d1": 3, "d2": 3, "d3": 3}  # nobody took everything
    return owners


async def test_a_killed_daemons_supervisors_are_taken_over_within_a_lease(
    dsn: str, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    cluster = Cluster(dsn, tmp_path, lease_s=LEASE_S)
    try:
        owners = await _started(cluster, pool)
        theirs = [sid for sid, owner in owners.items() if owner == "d3"]
        killed_at = await pool.fetchval("SELECT now()")
        cluster.daemons["d3"].kill()

        async def taken_over() -> bool:
            rows = await pool.fetch(
                "SELECT owner_daemon_id, restoration_source, last_restored_at"
                " FROM supervisor_states WHERE id = ANY ($1::uuid[])",
                theirs,
            )
            return all(
                row[0] in ("d1", "d2") and row[1] == "task_reassignment" and row[2] > killed_at
                for row in rows
            )

        # Owned by the others and restored by them (task_reassignment) in time.
        await wait_for(taken_over, LEASE_S + 2, "the killed daemon's supervisors taken over")
        await cluster.settle(pool, 30)  # one live agent each, started by its new owner
        assert not await cluster.violations(pool)
        owners = await cluster.owners(pool)
        assert len(owners) == SUPERVISORS  # none lost
        assert set(owners.values()) == {"d1", "d2"}
    finally:
        cluster.close()


async def test_a_paused_daemon_writes_nothing_once_it_lost_its_lease(
    dsn: str, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    # Tasks that outlast the pause: they still run when the daemon comes back.
    cluster = Cluster(dsn, tmp_path, lease_s=LEASE_S, task_s=60)
    try:
        owners = await _started(cluster, pool)
        stale = cluster.daemons["d1"]
        theirs = {sid for sid, owner in owners.items() if owner == "d1"}
        old_agents = {p.pid for p in agent_processes(cluster.script) if p.supervisor_id in theirs}
        old_tasks: set[int] = set()

        async def tasks_run() -> bool:
            nonlocal old_tasks
            commands = {pid: _cmdline(pid) for pid in descendants(stale.pid)}
            # The task shells and their `sleep 60`s; each agent spawns a task at once.
            old_tasks = {pid for pid, cmd in commands.items() if b"runs" in cmd or b"60" in cmd}
            return sum(b"runs" in cmd for cmd in commands.values()) >= len(theirs)

        await wait_for(tasks_run, 30, "the stale daemon's tasks run")
        stale.pause(with_children=False)  # the daemon alone: its agents and tasks go on

        async def others_write() -> bool:
            rows = await pool.fetch(
                "SELECT owner_daemon_id, conversation_history FROM supervisor_states"
                " WHERE id = ANY ($1::uuid[])",
                list(theirs),
            )
            return all(
                row[0] in ("d2", "d3")
                and any(m.get("agent") not in old_agents for m in row[1] if isinstance(m, dict))
                for row in rows
            )

        await wait_for(others_write, LEASE_S * 2 + 10, "the others took over and wrote")
        stale.resume()

        async def stopped() -> bool:
            return not any(_live(pid) for pid in old_agents | old_tasks)

        await wait_for(stopped, 20, "the stale daemon's agents and tasks stop")
        await cluster.settle(pool, 30)
        assert stale.alive  # it lost its supervisors, not its life
        assert stale.events("daemon.lease_lost")
        # None of its later writes landed: in each history, no message of an old agent
        # comes after the first message of a new one.
        rows = await pool.fetch(
            "SELECT conversation_history FROM supervisor_states WHERE id = ANY ($1::uuid[])",
            list(theirs),
        )
        for row in rows:
            writers = [m.get("agent") for m in row[0] if isinstance(m, dict) and "agent" in m]
            first_new = next(i for i, w in enumerate(writers) if w not in old_agents)
            assert not [w for w in writers[first_new:] if w in old_agents]
        # The tasks it ran were settled by their new owners (interrupted), not by it.
        tasks = await pool.fetch(
            "SELECT status, result, runs FROM supervisor_tasks t JOIN supervisor_states s"
            " ON s.id = t.supervisor_id WHERE s.id = ANY ($1::uuid[]) AND t.run_epoch = 1",
            list(theirs),
        )
        assert tasks
        assert {(row[0], row[2]) for row in tasks} == {("failed", 1)}
        assert all("interrupted" in row[1]["error"] for row in tasks)
        assert not await cluster.violations(pool)  # each task ran once, nothing acked lost
    finally:
        cluster.close()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _live(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_random_kills_pauses_and_resumes_break_nothing(
    dsn: str, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or time.time())
    rng = random.Random(seed)
    cluster = Cluster(dsn, tmp_path, lease_s=LEASE_S)
    figures = Figures()
    done = []
    try:
        await _started(cluster, pool)
        for _ in range(int(os.environ.get("CHAOS_ROUNDS", "5"))):
            done.append(await chaos_round(cluster, pool, rng, figures))
        assert not figures.violations, (seed, done, figures.violations)
    finally:
        cluster.close()
    assert cluster.acknowledged() > 0
