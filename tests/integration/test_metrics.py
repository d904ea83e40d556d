"""Prometheus metrics on real PostgreSQL: the exposition of a running daemon, parsed as
Prometheus parses it, and where each number comes from."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import pytest
import structlog
from prometheus_client import generate_latest

from daemon import logs
from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.models import SupervisorStateKind
from daemon.ops import metrics
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.restoration.run import restore_all
from daemon.store import DaemonRegistry, EventStore, MetricsStore, RestorationStore, Store
from tests.exposition import check_conventions, parse_families, sample
from tests.factories import corrupt, new_question, new_state
from tests.queues import running


def test_the_address_setting_is_checked() -> None:
    assert load_settings({}).metrics_address is None
    assert load_settings({"SUPERVISOR_DAEMON_METRICS_REFRESH_S": "2"}).metrics_refresh_s == 2
    with pytest.raises(ConfigError, match="METRICS_REFRESH_S"):
        load_settings({"SUPERVISOR_DAEMON_METRICS_REFRESH_S": "0"})
    settings = load_settings({"SUPERVISOR_DAEMON_METRICS_ADDRESS": "127.0.0.1:9464"})
    assert settings.metrics_address == ("127.0.0.1", 9464)
    assert load_settings({"SUPERVISOR_DAEMON_METRICS_ADDRESS": "[::1]:80"}).metrics_address == (
        "::1",
        80,
    )
    for bad in ("9464", "localhost", "host:port", "127.0.0.1:70000", ":9464"):
        with pytest.raises(ConfigError, match="METRICS_ADDRESS"):
            load_settings({"SUPERVISOR_DAEMON_METRICS_ADDRESS": bad})


async def test_the_flush_is_observed_once_per_batch(pool: asyncpg.Pool[Any]) -> None:
    store = Store(pool)
    sids = [(await store.save_supervisor_state_full(new_state())).id for _ in range(20)]
    queue = PersistenceQueue(EventStore(pool))
    daemon_metrics = metrics.DaemonMetrics(queue, lambda: 0)
    async with running(queue), anyio.create_task_group() as tg:
        for sid in sids:
            for n in range(10):
                tg.start_soon(queue.submit, events.activity_reported(sid, f"step {n}"))
    registry = daemon_metrics.registry
    batches = queue.counters.batches
    assert registry.get_sample_value("supervisor_daemon_queue_flush_duration_seconds_count") == (
        batches
    )
    assert registry.get_sample_value("supervisor_daemon_queue_batch_events_count") == batches
    assert registry.get_sample_value("supervisor_daemon_queue_batch_events_sum") == 200
    assert batches < 200  # group commit: the observations are per batch, not per event


async def test_database_gauges_count_states_and_age_questions(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    hour_ago = new_question(asked_at=datetime.now(UTC) - timedelta(hours=1))
    await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    await store.save_supervisor_state_full(new_state(
        state=SupervisorStateKind.WAITING_FOR_USER, pending_questions=(hour_ago, new_question()),
    ))  # fmt: skip
    blocked = await store.save_supervisor_state_full(
        new_state(state=SupervisorStateKind.BLOCKED, error_message="parked")
    )
    # A question the original system wrote badly is counted, and left out of the age.
    await pool.execute(
        "UPDATE supervisor_states SET pending_questions ="
        ' \'[{"id": "x", "question": "?", "askedAt": "yesterday"}]\''
        " WHERE id = $1",
        blocked.id,
    )
    assert await MetricsStore(pool).supervisors_by_state() == {
        "working": 1, "waiting_for_user": 1, "blocked": 1,
    }  # fmt: skip
    pending, oldest = await MetricsStore(pool).pending_questions()
    assert pending == 3
    assert 3600 <= oldest < 3600 + 60

    queue = PersistenceQueue(EventStore(pool))
    daemon_metrics = metrics.DaemonMetrics(queue, lambda: 0)
    registry = daemon_metrics.registry
    assert registry.get_sample_value("supervisor_daemon_questions_pending") is None  # unread
    async with anyio.create_task_group() as tg:
        tg.start_soon(metrics.refresh_from_database, MetricsStore(pool), daemon_metrics, 60.0)
        with anyio.fail_after(10):
            while registry.get_sample_value("supervisor_daemon_questions_pending") is None:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    families = parse_families(generate_latest(registry).decode())
    check_conventions(families)
    assert sample(families, "supervisor_daemon_supervisors", state="blocked") == 1
    assert sample(families, "supervisor_daemon_supervisors", state="completed") == 0
    assert sample(families, "supervisor_daemon_questions_pending") == 3
    assert sample(families, "supervisor_daemon_question_oldest_pending_age_seconds") >= 3600


async def test_restorations_are_counted_by_action_source_and_outcome(
    pool: asyncpg.Pool[Any], store: Store
) -> None:

    await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    broken = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    await corrupt(pool, broken.id)  # invalid, no checkpoint: started fresh
    daemon_metrics = metrics.DaemonMetrics(PersistenceQueue(EventStore(pool)), lambda: 0)
    await DaemonRegistry(pool).register("d1", hostname="h", pid=1, version="0", lease_s=30)
    await restore_all(RestorationStore(pool), "d1", on_outcome=daemon_metrics.restored)
    registry = daemon_metrics.registry
    name = "supervisor_daemon_restorations_total"
    for action in ("proceed", "start_fresh"):
        labels = {"action": action, "source": "daemon_restart", "outcome": "restored"}
        assert registry.get_sample_value(name, labels) == 1


def test_agent_restarts_are_counted_from_their_log_line(pool: asyncpg.Pool[Any]) -> None:
    daemon_metrics = metrics.DaemonMetrics(PersistenceQueue(EventStore(pool)), lambda: 0)
    out = io.StringIO()
    logs.configure(log_format="json", level="info", stream=out)
    daemon_metrics.listen()
    try:
        logs.get_logger().warning("agent.restarting", exit_code=1, restarts=1, delay_s=0.5)
        logs.get_logger().info("agent.started", agent="cmd:x")
        daemon_metrics.stop_listening()
        logs.get_logger().warning("agent.restarting", exit_code=1, restarts=2, delay_s=1.0)
    finally:
        daemon_metrics.stop_listening()
        structlog.reset_defaults()
    assert daemon_metrics.registry.get_sample_value("supervisor_daemon_agent_restarts_total") == 1
    assert out.getvalue().count("agent.restarting") == 2  # the lines themselves unchanged
