"""Prometheus metrics: the address setting, and /metrics of a running daemon."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.errors import ConfigError
from tests.test_cli import run_cli
from tests.test_daemon import daemon_process
from tests.test_demo_acceptance import _wait_for_lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in {text}"
    return float(match.group(1))


def test_the_address_setting_is_checked() -> None:
    assert load_settings({}).metrics_address is None
    settings = load_settings({"SUPERVISOR_DAEMON_METRICS_ADDRESS": "127.0.0.1:9464"})
    assert settings.metrics_address == ("127.0.0.1", 9464)
    assert load_settings({"SUPERVISOR_DAEMON_METRICS_ADDRESS": "[::1]:80"}).metrics_address == (
        "::1",
        80,
    )
    for bad in ("9464", "localhost", "host:port", "127.0.0.1:70000", ":9464"):
        with pytest.raises(ConfigError, match="METRICS_ADDRESS"):
            load_settings({"SUPERVISOR_DAEMON_METRICS_ADDRESS": bad})


def test_a_running_daemon_serves_its_counters(dsn: str, tmp_path: Path) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    with daemon_process(dsn, tmp_path, demo="1", SUPERVISOR_DAEMON_METRICS_ADDRESS=address) as proc:
        _wait_for_lines(proc, "question.delivered", 1, [])
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
                text = response.read().decode()
            if _value(text, "supervisor_daemon_supervisors_running") == 2:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
    assert _value(text, "supervisor_daemon_queue_events_written_total") >= 1
    assert _value(text, "supervisor_daemon_queue_batches_total") >= 1
    assert _value(text, "supervisor_daemon_queue_events_rejected_total") == 0
    assert _value(text, "supervisor_daemon_queue_events_queued") >= 0


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
