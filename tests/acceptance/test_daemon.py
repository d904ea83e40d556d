"""The daemon process: starts, reports ready, stops on SIGTERM with exit 0."""

from __future__ import annotations

import json
import signal
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore, Store
from tests.factories import new_state
from tests.processes import daemon_process, read_until, run_cli
from tests.queues import running


async def test_run_is_ready_then_stops_cleanly_on_sigterm(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    with daemon_process(dsn, tmp_path) as proc:
        lines = read_until(proc, "daemon.ready")
        assert all(line["daemon_id"] == "test-daemon" for line in lines)
        row = await pool.fetchrow("SELECT * FROM daemons WHERE id = 'test-daemon'")
        assert row is not None
        assert row["stopped_at"] is None
        proc.send_signal(signal.SIGTERM)
        rest = read_until(proc, "daemon.stopped")
        assert proc.wait(timeout=30) == 0
    assert any(line["event"] == "queue.drained" for line in rest)
    row = await pool.fetchrow("SELECT * FROM daemons WHERE id = 'test-daemon'")
    assert row is not None
    assert row["stopped_at"] is not None


async def test_history_lists_the_journal(dsn: str, pool: asyncpg.Pool[Any]) -> None:
    state = await Store(pool).save_supervisor_state_full(new_state())
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(events.activity_reported(state.id, "reading the contract"))
        await queue.submit(events.phase_changed(state.id, "implement"))
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    result = run_cli("history", str(state.id), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "activity_reported" in lines[0]
    assert "reading the contract" in lines[0]
    assert lines[1].split()[0] == "2"
    assert "phase_changed" in lines[1]
    as_json = json.loads(run_cli("history", str(state.id), "--json", env=env).stdout)
    assert [entry["seq"] for entry in as_json] == [1, 2]


async def test_start_restores_owned_supervisors_before_ready(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    import socket

    store = Store(pool)
    state = await store.save_supervisor_state_full(new_state())
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    try:
        for round_ in (1, 2):
            with daemon_process(dsn, tmp_path, NOTIFY_SOCKET=str(notify_path)) as proc:
                lines = read_until(proc, "daemon.ready")
                events_seen = [line["event"] for line in lines]
                assert events_seen.index("restoration.summary") < events_seen.index("daemon.ready")
                restored = [line for line in lines if line["event"] == "supervisor.restored"]
                assert [line["supervisor_id"] for line in restored] == [str(state.id)]
                assert restored[0]["restoration_count"] == round_
                message = notify.recv(4096).decode()
                while "READY=1" not in message:
                    message = notify.recv(4096).decode()
                assert "1 supervisor(s) restored" in message
                if round_ == 1:
                    proc.kill()  # a crash: no orderly stop, the lease is still valid
                else:
                    proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    finally:
        notify.close()
    row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", state.id)
    assert row is not None
    assert (row["restoration_count"], row["restoration_source"]) == (2, "daemon_restart")
    assert row["owner_daemon_id"] == "test-daemon"


async def test_a_crashed_background_job_stops_the_daemon_loudly(
    dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    from daemon.config import load_settings
    from daemon.errors import DaemonCrashedError
    from daemon.runtime import lifecycle
    from daemon.work import hub

    async def exploding_listener(self: Any, *, task_status: Any) -> None:
        task_status.started()
        await anyio.sleep(0.1)
        raise RuntimeError("listener exploded")

    monkeypatch.setattr(hub.Hub, "run", exploding_listener)
    settings = load_settings(
        {
            "SUPERVISOR_DAEMON_DATABASE_URL": dsn,
            "SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path),
            "SUPERVISOR_DAEMON_DAEMON_ID": "doomed",
        }
    )
    with anyio.fail_after(30), pytest.raises(DaemonCrashedError, match="listener exploded"):
        await lifecycle.run_daemon(settings)
    crashed = [line for line in captured_logs if line["event"] == "daemon.crashed"]
    assert len(crashed) == 1
    assert "listener exploded" in crashed[0]["error"]


async def test_a_supervisor_created_while_running_is_picked_up(dsn: str, tmp_path: Path) -> None:
    with daemon_process(dsn, tmp_path, SUPERVISOR_DAEMON_CLAIM_INTERVAL_S="0.2") as proc:
        read_until(proc, "daemon.ready")
        created = run_cli(
            "supervisors", "create", "--agent", "demo", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
        )
        assert created.returncode == 0, created.stderr
        lines = read_until(proc, "question.delivered")
        new = [line for line in lines if line["event"] == "supervisor.new"]
        assert [line["supervisor_id"] for line in new] == [created.stdout.strip()]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


async def busy_agent(sup: Any) -> None:
    """Reports an activity every 50 ms until cancelled (the daemon drops it)."""
    for n in range(1_000_000):
        await sup.report_activity(f"step {n}")
        await anyio.sleep(0.05)


@pytest.mark.parametrize("failure", ["refused", "hangs", "marked_stopped"])
async def test_a_daemon_that_loses_its_lease_drops_its_supervisors_and_claims_them_again(  # noqa: PLR0917 - fixtures
    failure: str,
    dsn: str,
    tmp_path: Path,
    pool: asyncpg.Pool[Any],
    monkeypatch: pytest.MonkeyPatch,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    from daemon.config import load_settings
    from daemon.errors import TransientDatabaseError
    from daemon.ops.metrics import DaemonMetrics
    from daemon.runtime import components, lifecycle
    from daemon.store import DaemonRegistry

    state = await Store(pool).save_supervisor_state_full(
        new_state(agent="tests.acceptance.test_daemon:busy_agent")
    )
    renewals = 0

    async def renew(self: Any, daemon_id: str, lease_s: float, token: Any = None) -> float | None:
        nonlocal renewals
        renewals += 1
        # Renewed twice, then trouble until the daemon gives the lease up, then fine.
        if renewals <= 2 or any(line["event"] == "daemon.lease_lost" for line in captured_logs):
            return lease_s
        if failure == "refused":
            raise TransientDatabaseError("ConnectionRefusedError: the server went away")
        if failure == "hangs":
            await anyio.sleep_forever()
        return None  # the database refuses: expired, or marked stopped

    monkeypatch.setattr(DaemonRegistry, "renew_lease", renew)
    made: list[DaemonMetrics] = []  # the daemon's metrics, to read its counter

    def keep(*args: Any) -> DaemonMetrics:
        made.append(DaemonMetrics(*args))
        return made[-1]

    monkeypatch.setattr(components, "DaemonMetrics", keep)
    settings = load_settings(
        {
            "SUPERVISOR_DAEMON_DATABASE_URL": dsn,
            "SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path),
            "SUPERVISOR_DAEMON_DAEMON_ID": "fenced",
            "SUPERVISOR_DAEMON_LEASE_S": "1.5",
            "SUPERVISOR_DAEMON_CLAIM_INTERVAL_S": "0.2",
        }
    )

    def events(name: str) -> list[MutableMapping[str, Any]]:
        return [line for line in captured_logs if line["event"] == name]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lifecycle.run_daemon, settings)
            # The daemon goes on: its agent is dropped, its lease regained, and the
            # supervisor claimed again under a new epoch, its agent started again.
            while len(events("agent.started")) < 2:
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    (lost,) = events("daemon.lease_lost")
    if failure == "marked_stopped":
        assert "refused to renew" in lost["error"]
    else:
        assert "could not be renewed" in lost["error"]
    assert len(events("daemon.lease_regained")) == 1
    (dropped,) = events("supervisor.dropped")
    assert dropped["supervisor_id"] == str(state.id)
    assert not events("daemon.crashed")
    row = await pool.fetchrow("SELECT owner_daemon_id, owner_epoch FROM supervisor_states")
    assert row is not None
    assert (row["owner_daemon_id"], row["owner_epoch"]) == ("fenced", 2)  # claimed twice
    failed = made[0].registry.get_sample_value("supervisor_daemon_lease_renewals_failed_total")
    if failure == "marked_stopped":
        assert failed == 0  # the renewal worked: it said the lease is gone
    else:
        assert failed is not None
        assert failed >= 1
