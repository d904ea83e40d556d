"""The systemd watchdog: its interval from the environment, and what counts as unhealthy."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.processes import daemon_process


def test_the_running_daemon_pings_the_watchdog_once_ready(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        with daemon_process(dsn, tmp_path, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000"):
            messages: list[bytes] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and messages.count(b"WATCHDOG=1") < 3:
                messages.append(sock.recv(4096))
    ready = next(i for i, m in enumerate(messages) if m.startswith(b"READY=1"))
    first_ping = messages.index(b"WATCHDOG=1")
    assert ready < first_ping
    assert messages.count(b"WATCHDOG=1") >= 3
