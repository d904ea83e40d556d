"""Acceptance: the real daemon with --demo, killed with SIGKILL mid-contract, restarted.

The same question is redelivered after the restart, the supervisor's restoration is
recorded (count 1, source daemon_restart), answering through the CLI lets the contract
reach `completed`, and no task ran twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.processes import daemon_process, run_cli, wait_for_lines, wait_for_states

pytestmark = pytest.mark.acceptance


async def test_demo_survives_sigkill_and_completes(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    first: list[dict[str, Any]] = []
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        wait_for_lines(proc, "question.delivered", 2, first)
        proc.kill()  # SIGKILL: no drain, no clean stop
        proc.wait(timeout=30)
    asked = {line["question_id"] for line in first if line["event"] == "question.delivered"}
    assert len(asked) == 2

    second: list[dict[str, Any]] = []
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        wait_for_lines(proc, "daemon.ready", 1, second)
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
        await wait_for_states(pool, "completed")
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
        wait_for_lines(a, "question.delivered", 2, first)
        asked = {line["question_id"] for line in first if line["event"] == "question.delivered"}
        with daemon_process(
            dsn, tmp_path / "b", SUPERVISOR_DAEMON_DAEMON_ID="daemon-b", **lease
        ) as b:
            wait_for_lines(b, "daemon.ready", 1, second)
            # While daemon-a renews its lease, daemon-b leaves its supervisors alone.
            owners = await pool.fetch("SELECT DISTINCT owner_daemon_id FROM supervisor_states")
            assert [row["owner_daemon_id"] for row in owners] == ["daemon-a"]
            a.kill()  # SIGKILL: its lease runs out 5 s after its last renewal
            a.wait(timeout=30)
            wait_for_lines(b, "question.delivered", 2, second)
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
            await wait_for_states(pool, "completed")
