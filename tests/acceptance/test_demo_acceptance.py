"""Acceptance: the real daemon with --demo, killed with SIGKILL mid-contract, restarted.

The same question is redelivered after the restart, the supervisor's restoration is
recorded (count 1, source daemon_restart), answering through the CLI lets the contract
reach `completed`, and no task ran twice.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.processes import daemon_process, run_cli

pytestmark = pytest.mark.acceptance


def _wait_for_lines(
    proc: subprocess.Popen[str],
    event: str,
    count: int,
    seen: list[dict[str, Any]],
    deadline_s: float = 60,
) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + deadline_s
    while sum(1 for line in seen if line["event"] == event) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} {event!r} lines: {seen}")
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the daemon exited early: {seen}")
        if line.startswith("{"):
            seen.append(json.loads(line))


async def _wait_for_states(pool: asyncpg.Pool[Any], state: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        states = await pool.fetch("SELECT state FROM supervisor_states")
        if states and all(row["state"] == state for row in states):
            return
        await anyio.sleep(0.1)
    raise AssertionError(f"not every supervisor reached {state}")


async def test_demo_survives_sigkill_and_completes(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    first: list[dict[str, Any]] = []
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        _wait_for_lines(proc, "question.delivered", 2, first)
        proc.kill()  # SIGKILL: no drain, no clean stop
        proc.wait(timeout=30)
    asked = {line["question_id"] for line in first if line["event"] == "question.delivered"}
    assert len(asked) == 2

    second: list[dict[str, Any]] = []
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        _wait_for_lines(proc, "daemon.ready", 1, second)
        redelivered = {
            line["question_id"]
            for line in second
            if line["event"] == "question.delivered" and line["redelivery"]
        }
        assert redelivered == asked  # the same ids, delivered again
        rows = await pool.fetch(
            "SELECT restoration_count, restoration_source, state FROM supervisor_states"
        )
        assert {(r["restoration_count"], r["restoration_source"]) for r in rows} == {
            (1, "daemon_restart")
        }
        for question_id in asked:
            answered = run_cli(
                "answer", question_id, "yes", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
            )
            assert answered.returncode == 0, answered.stderr
        await _wait_for_states(pool, "completed")
        again = run_cli(
            "answer", next(iter(asked)), "yes", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
        )
        assert again.returncode == 1
        assert "already answered" in again.stderr

    tasks = await pool.fetch("SELECT id, status FROM supervisor_tasks")
    assert len(tasks) == 4
    assert {row["status"] for row in tasks} == {"succeeded"}
    started = Counter(line["task_id"] for line in first + second if line["event"] == "task.started")
    assert all(count == 1 for count in started.values()), started


async def test_a_second_daemon_takes_over_when_the_first_dies(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    lease = {"SUPERVISOR_DAEMON_LEASE_S": "5", "SUPERVISOR_DAEMON_CLAIM_INTERVAL_S": "0.2"}
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    with daemon_process(
        dsn, tmp_path / "a", demo="1", SUPERVISOR_DAEMON_DAEMON_ID="daemon-a", **lease
    ) as a:
        _wait_for_lines(a, "question.delivered", 2, first)
        asked = {line["question_id"] for line in first if line["event"] == "question.delivered"}
        with daemon_process(
            dsn, tmp_path / "b", SUPERVISOR_DAEMON_DAEMON_ID="daemon-b", **lease
        ) as b:
            _wait_for_lines(b, "daemon.ready", 1, second)
            # While daemon-a renews its lease, daemon-b leaves its supervisors alone.
            owners = await pool.fetch("SELECT DISTINCT owner_daemon_id FROM supervisor_states")
            assert [row["owner_daemon_id"] for row in owners] == ["daemon-a"]
            a.kill()  # SIGKILL: its lease runs out 5 s after its last renewal
            a.wait(timeout=30)
            _wait_for_lines(b, "question.delivered", 2, second)
            redelivered = {
                line["question_id"]
                for line in second
                if line["event"] == "question.delivered" and line["redelivery"]
            }
            assert redelivered == asked
            rows = await pool.fetch(
                "SELECT owner_daemon_id, restoration_count, restoration_source"
                " FROM supervisor_states"
            )
            assert {tuple(row.values()) for row in rows} == {("daemon-b", 1, "task_reassignment")}
            for question_id in asked:
                answered = run_cli(
                    "answer", question_id, "yes", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
                )
                assert answered.returncode == 0, answered.stderr
            await _wait_for_states(pool, "completed")
