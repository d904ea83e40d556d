"""The daemon and its CLI as real child processes, for the tests that start them: their
environment, their log lines as they come, and waiting for what they do."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg


def cli_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the daemon's settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_DAEMON_")}
    env.update(settings or {})
    return env


def credentials_env(tmp_path: Path, url: str) -> dict[str, str]:
    """An environment with a systemd credentials directory holding `url`."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "database-url").write_text(url + "\n")  # files often end with a newline
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def daemon_process(dsn: str, tmp_path: Path, **extra: str) -> Iterator[subprocess.Popen[str]]:
    """`supervisor-daemon run` as a child process; killed (if still running) on exit."""
    proc = _start(dsn, tmp_path, **extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def _start(dsn: str, tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    env = cli_env(
        {
            "SUPERVISOR_DAEMON_DATABASE_URL": dsn,
            "SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path),
            "SUPERVISOR_DAEMON_LOG_FORMAT": "json",
            "SUPERVISOR_DAEMON_DAEMON_ID": "test-daemon",
        }
    )
    env.update(extra)
    demo = ["--demo"] if env.pop("demo", None) else []
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", *demo],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], event: str, deadline_s: float = 30) -> list[Any]:
    assert proc.stderr is not None
    lines: list[Any] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        record = json.loads(line)
        lines.append(record)
        if record["event"] == event:
            return lines
    raise AssertionError(f"no {event!r} line; got {lines}")


def wait_for_lines(
    proc: subprocess.Popen[str],
    event: str,
    count: int,
    seen: list[dict[str, Any]],
    deadline_s: float = 60,
) -> None:
    """Read the daemon's JSON lines into `seen` until `count` of them are `event`."""
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


async def wait_for_states(pool: asyncpg.Pool[Any], state: str, deadline_s: float = 30) -> None:
    """Until every supervisor is in `state`."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        states = await pool.fetch("SELECT state FROM supervisor_states")
        if states and all(row["state"] == state for row in states):
            return
        await anyio.sleep(0.1)
    raise AssertionError(f"not every supervisor reached {state}")
