"""The unit file, as systemd reads it, and the sd_notify messages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import systemd

UNIT = Path(__file__).parent.parent / "systemd" / "supervisor-daemon.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_file_verifies(tmp_path: Path) -> None:
    # Point ExecStart at this checkout's command: systemd checks that it is executable.
    command = Path(sys.executable).parent / "supervisor-daemon"
    unit = tmp_path / "supervisor-daemon.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/supervisor-daemon/.venv/bin/supervisor-daemon", str(command))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [line for line in result.stderr.splitlines() if "supervisor-daemon" in line]
    assert result.returncode == 0, result.stderr
    assert problems == []


def test_unit_file_promises() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert line in text


def test_notify_sends_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.ready("ready: 3 supervisor(s) restored")
        assert sock.recv(1024) == b"READY=1\nSTATUS=ready: 3 supervisor(s) restored"
        assert systemd.stopping()
        assert sock.recv(1024).startswith(b"STOPPING=1")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.status("not under systemd")
