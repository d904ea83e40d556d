"""docs/logs.md against the code, and a demo run's lines against docs/logs.md.

The code is read, not run, to find every event it logs: the first argument of each
`log.info(...)`, `slog.warning(...)` etc. (a name bound to a literal, or a level chosen
with `log.info if ... else log.warning`, are followed). Then the real daemon runs the
demo, is stopped and restarted, and every line it wrote about a supervisor must carry
that supervisor's id and its contract's.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.logs_doc import documented_events
from tests.processes import daemon_process, run_cli, wait_for_lines

COMMON_KEYS = {"event", "level", "timestamp", "daemon_id"}


# Lines about one supervisor: they must name it (and then its contract too).
ABOUT_A_SUPERVISOR = ("supervisor.", "agent.", "task.", "question.")


def _read_to_the_end(proc: subprocess.Popen[str], lines: list[dict[str, Any]]) -> None:
    """SIGTERM, then every line the daemon wrote until it exited."""
    assert proc.stderr is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    lines += [_json(text) for text in proc.stderr.read().splitlines() if text.startswith("{")]


def _json(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


@pytest.mark.acceptance
async def test_a_demo_run_names_each_supervisor_and_contract_on_its_lines(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    lines: list[dict[str, Any]] = []
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        wait_for_lines(proc, "question.delivered", 2, lines)
        _read_to_the_end(proc, lines)
    asked = {line["question_id"] for line in lines if line["event"] == "question.delivered"}
    restarted: list[dict[str, Any]] = []
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        wait_for_lines(proc, "daemon.ready", 1, restarted)
        for question_id in asked:
            answered = run_cli(
                "answer", question_id, "yes", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
            )
            assert answered.returncode == 0, answered.stderr
        wait_for_lines(proc, "agent.finished", 2, restarted)
        _read_to_the_end(proc, restarted)
    lines += restarted

    contracts = {
        str(row["id"]): str(row["contract_id"])
        for row in await pool.fetch("SELECT id, contract_id FROM supervisor_states")
    }
    assert len(contracts) == 2
    documented = documented_events()
    for line in lines:
        event = line["event"]
        assert event in documented, line
        assert line["level"] in documented[event].levels, line
        assert line.keys() <= COMMON_KEYS | documented[event].fields, line
        if event.startswith(ABOUT_A_SUPERVISOR):
            assert "supervisor_id" in line, line
        if "supervisor_id" in line:
            assert line.get("contract_id") == contracts[line["supervisor_id"]], line
    seen = {line["event"] for line in lines}
    assert {"supervisor.new", "supervisor.restored", "agent.started", "agent.finished",
            "task.started", "task.finished", "question.delivered",
            "daemon.stopped"} <= seen  # fmt: skip
    # Both supervisors' tasks are found by their supervisor id (they were not, once).
    task_owners = {line["supervisor_id"] for line in lines if line["event"] == "task.started"}
    assert task_owners == contracts.keys()
