"""The command line as a person meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from daemon.db import migrations
from tests.processes import run_cli


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("not a url at all", 78),
        ("postgresql://app:pw-in-bad-url@db:notaport/prod", 78),
        # Nothing listens there: worth trying again later, so 69, which systemd restarts.
        ("postgresql://app:pw-unreachable@127.0.0.1:1/prod", 69),
    ],
)
def test_bad_or_unreachable_database_is_one_line(url: str, code: int, tmp_path: Path) -> None:
    result = run_cli(
        "migrate",
        env={"SUPERVISOR_DAEMON_DATABASE_URL": url, "SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("supervisor-daemon: error: ")
    assert "Traceback" not in result.stderr
    assert "pw-" not in result.stderr + result.stdout


def test_migrate_then_status_on_an_external_url(dsn: str, empty_dsn: str) -> None:
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": empty_dsn, "SUPERVISOR_DAEMON_LOG_FORMAT": "json"}
    before = run_cli("migrate", "--status", env=env)
    assert before.returncode == 1  # pending migrations
    assert all(line.startswith("pending") for line in before.stdout.splitlines())
    applied = run_cli("migrate", env=env)
    assert applied.returncode == 0, applied.stderr
    after = run_cli("migrate", "--status", env=env)
    assert after.returncode == 0, after.stderr
    names = [m.name for m in migrations.discover()]
    listed = [line.split()[1] for line in after.stdout.splitlines()]
    assert listed == names
    assert all(line.startswith("applied") for line in after.stdout.splitlines())


def test_migrate_on_the_embedded_default(tmp_path: Path) -> None:
    env = {"SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path / "data")}
    try:
        applied = run_cli("migrate", env=env, timeout=120)
        assert applied.returncode == 0, applied.stderr
        status = run_cli("migrate", "--status", env=env, timeout=120)
        assert status.returncode == 0, status.stderr
        assert len(status.stdout.splitlines()) == len(migrations.discover())
        assert (tmp_path / "data" / "pgdata" / "PG_VERSION").exists()
        # The last CLI process stopped the embedded server as it exited.
        assert not (tmp_path / "data" / "pgdata" / "postmaster.pid").exists()
    finally:
        subprocess.run(["pkill", "-f", str(tmp_path / "data" / "pgdata")], check=False)


def test_supervisors_create_list_show(dsn: str) -> None:
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    created = run_cli("supervisors", "create", "--agent", "daemon.agents.demo:run", env=env)
    assert created.returncode == 0, created.stderr
    supervisor_id = created.stdout.strip()
    listed = run_cli("supervisors", "list", env=env)
    assert supervisor_id in listed.stdout
    shown = run_cli("supervisors", "show", supervisor_id, "--json", env=env)
    assert '"agent": "daemon.agents.demo:run"' in shown.stdout
    missing = run_cli("supervisors", "show", "00000000-0000-0000-0000-000000000000", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("does not exist")


def test_bad_usage_is_exit_2() -> None:
    result = run_cli("supervisors", "show", "not-a-uuid")
    assert result.returncode == 2
    assert "is not a UUID" in result.stderr


def test_run_waits_for_an_unreachable_database_then_exits_69(tmp_path: Path) -> None:
    result = run_cli(
        "run",
        env={
            "SUPERVISOR_DAEMON_DATABASE_URL": "postgresql://app:pw-secret@127.0.0.1:1/prod",
            "SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path),
            "SUPERVISOR_DAEMON_LOG_FORMAT": "json",
            "SUPERVISOR_DAEMON_CONNECT_WAIT_S": "1.5",
        },
    )
    assert result.returncode == 69, result.stderr
    lines = result.stderr.strip().splitlines()
    logged = [json.loads(line) for line in lines[:-1]]
    attempts = [r["attempt"] for r in logged if r["event"] == "database.unavailable"]
    assert len(attempts) >= 2
    assert attempts == list(range(1, len(attempts) + 1))
    assert lines[-1].startswith("supervisor-daemon: error: cannot reach the database at")
    assert "pw-secret" not in result.stderr
