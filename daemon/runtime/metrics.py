"""Prometheus metrics, read from the daemon's own counters when scraped.

With SUPERVISOR_DAEMON_METRICS_ADDRESS set (host:port), the daemon serves /metrics over
HTTP from a thread of prometheus-client. Nothing is counted twice: a collector reads the
persistence queue's counters at scrape time, so the hot path pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.queue import PersistenceQueue

PREFIX = "supervisor_daemon_"

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


class DaemonCollector(Collector):
    def __init__(self, queue: PersistenceQueue, hosted: Callable[[], int]) -> None:
        self._queue = queue
        self._hosted = hosted

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
            PREFIX + "queue_flush_seconds_max",
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


def serve(address: tuple[str, int], collector: DaemonCollector) -> Any:
    """Serve /metrics at `address` from a background thread; returns the server (call
    its shutdown() to stop)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    server, _thread = start_http_server(address[1], addr=address[0], registry=registry)
    return server
