"""Prometheus metrics on real PostgreSQL: the exposition of a running daemon, parsed as
Prometheus parses it, and where each number comes from."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

from tests.exposition import check_conventions, parse_families, sample
from tests.processes import daemon_process, run_cli, wait_for_lines

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_running_daemon_serves_what_to_alert_on(dsn: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    with daemon_process(
        dsn, tmp_path, demo="1", SUPERVISOR_DAEMON_METRICS_ADDRESS=address,
        SUPERVISOR_DAEMON_METRICS_REFRESH_S="0.2",
    ) as proc:  # fmt: skip
        wait_for_lines(proc, "question.delivered", 2, [])
        # Both demo supervisors wait for an answer once their four tasks succeeded; the
        # database gauges show it within a refresh or two.
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
                text = response.read().decode()
            families = parse_families(text)
            if (
                "supervisor_daemon_questions_pending" in families
                and sample(families, "supervisor_daemon_questions_pending") == 2
            ):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
    check_conventions(families)
    # Every metric the README and the operations guide name (alert rules included) exists.
    served = set(families) | {s.name for f in families.values() for s in f.samples}
    for guide in (Path("README.md"), Path("docs") / "operations.md"):
        named = set(re.findall(r"\bsupervisor_daemon_[a-z_]+", (ROOT / guide).read_text()))
        assert named <= served, (guide, sorted(named - served))
    assert sample(families, "supervisor_daemon_supervisors_running") == 2
    assert sample(families, "supervisor_daemon_queue_events_written_total") >= 1
    assert sample(families, "supervisor_daemon_queue_events_rejected_total") == 0
    assert sample(families, "supervisor_daemon_queue_events_queued") >= 0
    # One observation per batch, in both histograms.
    batches = sample(families, "supervisor_daemon_queue_batches_total")
    assert batches >= 1
    for histogram in ("queue_flush_duration_seconds", "queue_batch_events"):
        assert families[f"supervisor_daemon_{histogram}"].type == "histogram"
        count = sample(families, f"supervisor_daemon_{histogram}_count")
        assert count == sample(families, f"supervisor_daemon_{histogram}_bucket", le="+Inf")
        assert 1 <= count <= batches  # a scrape may fall between two of a batch's updates
    # Both supervisors were new: started, not restored.
    new = {"action": "proceed", "source": "daemon_restart", "outcome": "new"}
    assert sample(families, "supervisor_daemon_restorations_total", **new) == 2
    assert sample(families, "supervisor_daemon_tasks_finished_total", outcome="succeeded") == 4
    assert sample(families, "supervisor_daemon_tasks_finished_total", outcome="timed_out") == 0
    assert sample(families, "supervisor_daemon_lease_renewals_failed_total") == 0
    assert sample(families, "supervisor_daemon_agent_restarts_total") == 0
    # From the database: every state has its series, and the questions their age.
    assert sample(families, "supervisor_daemon_supervisors", state="waiting_for_user") == 2
    assert sample(families, "supervisor_daemon_supervisors", state="blocked") == 0
    age = sample(families, "supervisor_daemon_question_oldest_pending_age_seconds")
    assert 0 <= age < 60  # asked moments ago


def test_an_address_in_use_is_a_configuration_error(dsn: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "run",
            env={
                "SUPERVISOR_DAEMON_DATABASE_URL": dsn,
                "SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path),
                "SUPERVISOR_DAEMON_METRICS_ADDRESS": f"127.0.0.1:{port}",
                "SUPERVISOR_DAEMON_LOG_FORMAT": "json",
            },
        )
    assert result.returncode == 78, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("supervisor-daemon: error: cannot serve metrics at 127.0.0.1:")
    )
