"""Prometheus metrics: what an operator alerts on.

With SUPERVISOR_DAEMON_METRICS_ADDRESS set (host:port), the daemon serves /metrics over
HTTP from a thread of prometheus-client, from a registry of its own. Where each number
comes from is chosen so that the hot path pays next to nothing:
- the persistence queue's counters are read when scraped; its flush latency and batch
  size are observed once per batch (never per event) through `PersistenceQueue.on_flush`;
- restorations, lease renewals that failed and task outcomes are counted where they
  happen; agent restarts from their `agent.restarting` log line, the one place the
  command agent reports them;
- supervisors by state and the pending questions describe the whole database (every
  daemon's): `refresh_from_database` reads them every METRICS_REFRESH_S, so a scrape
  never costs the database a scan, and each daemon reports the same values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from structlog.typing import EventDict

from daemon import logs
from daemon.errors import DaemonError
from daemon.logs import get_logger
from daemon.models import SupervisorStateKind
from daemon.persistence.queue import PersistenceQueue
from daemon.restoration.records import RestorationOutcome
from daemon.store import MetricsStore

PREFIX = "supervisor_daemon_"
log = get_logger()
# No `_created` series beside each counter and histogram: in the text format they are
# gauges of their own that nobody alerts on, and they double what a scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

# Queue counter -> (metric name, help). Counters only ever grow.
_QUEUE_COUNTERS = {
    "submitted": ("queue_events_submitted", "Critical events accepted by the queue."),
    "written": ("queue_events_written", "Critical events committed and acknowledged."),
    "rejected": ("queue_events_rejected", "Critical events the database refused."),
    "abandoned": ("queue_events_abandoned", "Critical events never written (stop deadline)."),
    "coalesced": ("queue_coalesced_submitted", "Heartbeat and progress reports accepted."),
    "batches": ("queue_batches", "Batches written, one transaction each."),
    "retries": ("queue_retries", "Batch attempts retried after a transient error."),
    "backpressure_waits": ("queue_backpressure_waits", "Submits that waited for room."),
    "flush_seconds_total": ("queue_flush_seconds", "Time spent writing batches."),
}
# A batch takes about a millisecond on an idle local server and seconds during an outage
# (retries included); a batch holds 1 to QUEUE_BATCH_SIZE (5,000) events plus heartbeats.
FLUSH_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)
TASK_OUTCOMES = ("succeeded", "failed", "timed_out", "interrupted", "stopped", "error")


class DaemonMetrics:
    """Every metric of one daemon, in its own registry (several daemons may share a
    test process; the global registry would mix them)."""

    def __init__(self, queue: PersistenceQueue, hosted: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._database = _DatabaseGauges()
        self.registry.register(_ReadAtScrape(queue, hosted, self._database))
        r = self.registry
        self.flush_seconds = Histogram(
            PREFIX + "queue_flush_duration_seconds",
            "Time from taking a batch to acknowledging it, retries included.",
            buckets=FLUSH_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.batch_events = Histogram(
            PREFIX + "queue_batch_events",
            "Events in one batch (save points, heartbeats and progress reports).",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.restorations = Counter(
            PREFIX + "restorations",
            "Supervisors restored by this daemon, by decision, source and outcome.",
            ["action", "source", "outcome"], registry=r,
        )  # fmt: skip
        self.lease_renewals_failed = Counter(
            PREFIX + "lease_renewals_failed",
            "Renewals of this daemon's lease that failed or hung.", registry=r,
        )  # fmt: skip
        self.agent_restarts = Counter(
            PREFIX + "agent_restarts",
            "Command agent processes restarted after they exited.", registry=r,
        )  # fmt: skip
        self.tasks_finished = Counter(
            PREFIX + "tasks_finished",
            "Command tasks this daemon ran, by outcome.", ["outcome"], registry=r,
        )  # fmt: skip
        for outcome in TASK_OUTCOMES:  # every series exists from the start, at zero
            self.tasks_finished.labels(outcome)
        queue.on_flush = self._flushed

    def _flushed(self, seconds: float, events: int) -> None:
        self.flush_seconds.observe(seconds)
        self.batch_events.observe(events)

    def restored(self, outcome: RestorationOutcome) -> None:
        self.restorations.labels(
            outcome.action.value, outcome.write["source"], outcome.outcome
        ).inc()

    def task_finished(self, outcome: str) -> None:
        self.tasks_finished.labels(outcome).inc()

    def _agent_restarted(self, _: EventDict) -> None:
        self.agent_restarts.inc()

    def listen(self) -> None:
        """Count what only log lines report (until `stop_listening`)."""
        logs.on_event("agent.restarting", self._agent_restarted)

    def stop_listening(self) -> None:
        logs.on_event("agent.restarting", None)

    def database_gauges(self, states: dict[str, int], pending: int, oldest_age_s: float) -> None:
        self._database.set(states, pending, oldest_age_s)


class _DatabaseGauges:
    """The last values read from the database, and when (monotonic)."""

    def __init__(self) -> None:
        self.read_at: float | None = None
        self.states: dict[str, int] = {}
        self.pending = 0
        self.oldest_age_s = 0.0

    def set(self, states: dict[str, int], pending: int, oldest_age_s: float) -> None:
        self.states, self.pending, self.oldest_age_s = states, pending, oldest_age_s
        self.read_at = time.monotonic()


class _ReadAtScrape(Collector):
    """The numbers kept elsewhere, read when scraped: nothing is counted twice."""

    def __init__(
        self, queue: PersistenceQueue, hosted: Callable[[], int], database: _DatabaseGauges
    ) -> None:
        self._queue = queue
        self._hosted = hosted
        self._database = database

    def collect(self) -> Iterator[Metric]:
        counters = self._queue.counters
        for field, (name, help_text) in _QUEUE_COUNTERS.items():
            yield CounterMetricFamily(PREFIX + name, help_text, value=getattr(counters, field))
        yield GaugeMetricFamily(
            PREFIX + "queue_events_queued",
            "Critical events waiting to be written.",
            value=self._queue.queued,
        )
        yield GaugeMetricFamily(
            PREFIX + "queue_flush_max_seconds",
            "Longest batch write so far.",
            value=counters.flush_seconds_max,
        )
        yield GaugeMetricFamily(
            PREFIX + "queue_longest_call_seconds",
            "How long the oldest database call of the queue under way has run.",
            value=self._queue.longest_call_s(),
        )
        yield GaugeMetricFamily(
            PREFIX + "supervisors_running",
            "Supervisors whose agent runs in this daemon.",
            value=self._hosted(),
        )
        yield from self._database_gauges()

    def _database_gauges(self) -> Iterator[Metric]:
        database = self._database
        if database.read_at is None:
            return  # not read yet: no value is better than a wrong zero
        by_state = GaugeMetricFamily(
            PREFIX + "supervisors",
            "Supervisors in the database (every daemon's), by state.",
            labels=["state"],
        )
        for state in SupervisorStateKind:
            by_state.add_metric([state.value], database.states.get(state.value, 0))
        yield by_state
        yield GaugeMetricFamily(
            PREFIX + "questions_pending",
            "Questions waiting for an answer in the database.",
            value=database.pending,
        )
        # The age the database reported, plus the time since: no clock but ours moves it.
        age = database.oldest_age_s
        if database.pending:
            age += time.monotonic() - database.read_at
        yield GaugeMetricFamily(
            PREFIX + "question_oldest_pending_age_seconds",
            "How long the oldest pending question has waited (0 when none waits).",
            value=age,
        )
        yield GaugeMetricFamily(
            PREFIX + "database_gauges_age_seconds",
            "Seconds since supervisors and questions were last read from the database.",
            value=time.monotonic() - database.read_at,
        )


async def refresh_from_database(
    store: MetricsStore, metrics: DaemonMetrics, interval_s: float
) -> None:
    """Read the database's gauges now and every `interval_s`. A failed read keeps the
    previous values (their age grows) and is logged once until a read succeeds."""
    failing = False
    while True:
        try:
            # A read the network lost would hang; the next one is due anyway.
            with anyio.fail_after(max(interval_s, 5.0)):
                states = await store.supervisors_by_state()
                pending, oldest_age_s = await store.pending_questions()
        except (DaemonError, TimeoutError) as exc:
            if not failing:
                log.warning("metrics.refresh_failed", error=str(exc) or type(exc).__name__)
            failing = True
        else:
            metrics.database_gauges(states, pending, oldest_age_s)
            failing = False
        await anyio.sleep(interval_s)


def serve(address: tuple[str, int], metrics: DaemonMetrics) -> WSGIServer:
    """Serve /metrics at `address` from a background thread; returns the server (call
    its shutdown() to stop)."""
    server, _thread = start_http_server(address[1], addr=address[0], registry=metrics.registry)
    return server
