"""The running daemon's parts, made from the settings in one place.

Settings become the parts' arguments here; the lifecycle itself reads only those that
say how it runs (claiming, capacity, retention, metrics, release on stop). The lifecycle
(daemon/runtime/lifecycle.py) makes `Components` once, at start, over the daemon's
database: the stores, the persistence queue, the hub, the lease keeper and the
metrics. The parts that live in a task group of the running daemon (question delivery,
the task runner, the host of the agents) are made by `delivery()`, `runner()` and
`host()` once that group exists. Each part is given the stores it needs, never a pool.
People's commands (the CLI, the web page) take their crash-loop guard from here too.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from datetime import timedelta

import anyio.abc

from daemon import __version__
from daemon.config import Settings
from daemon.db.database import Database
from daemon.ops.metrics import DaemonMetrics
from daemon.persistence.queue import PersistenceQueue
from daemon.restoration.records import CrashLoopGuard
from daemon.runtime.host import Host
from daemon.runtime.lease import LeaseKeeper, LeaseTiming, Registration
from daemon.store import Stores
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner


def crash_loop_guard(settings: Settings) -> CrashLoopGuard:
    return CrashLoopGuard(
        max_restorations=settings.crash_loop_max_restorations,
        window=timedelta(seconds=settings.crash_loop_window_s),
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Components:
    settings: Settings
    stores: Stores
    queue: PersistenceQueue
    hub: Hub
    keeper: LeaseKeeper
    metrics: DaemonMetrics
    guard: CrashLoopGuard
    hosts: list[Host]  # the host, once agents run (the metrics count its supervisors)

    @classmethod
    def build(cls, db: Database, settings: Settings, daemon_id: str) -> Components:
        stores = Stores.of(db)
        queue = PersistenceQueue(
            stores.events,
            max_events=settings.queue_max_events,
            batch_size=settings.queue_batch_size,
            flush_delay_s=settings.queue_flush_delay_ms / 1000,
            drain_timeout_s=settings.drain_timeout_s,
            lanes=settings.queue_lanes,
        )
        hosts: list[Host] = []
        daemon_metrics = DaemonMetrics(queue, lambda: sum(len(h.running) for h in hosts))
        registration = Registration(daemon_id=daemon_id, hostname=socket.gethostname(),
                                    pid=os.getpid(), version=__version__,
                                    capacity=settings.capacity)  # fmt: skip
        keeper = LeaseKeeper(stores.daemons, registration, LeaseTiming(settings.lease_s),
                             id_wait_s=min(settings.lease_s, 10.0),
                             renewal_failed=daemon_metrics.lease_renewals_failed.inc)  # fmt: skip
        return cls(
            settings=settings, stores=stores, queue=queue,
            hub=Hub(stores.work, poll_s=settings.poll_interval_s), keeper=keeper,
            metrics=daemon_metrics, guard=crash_loop_guard(settings), hosts=hosts,
        )  # fmt: skip

    @property
    def daemon_id(self) -> str:
        return self.keeper.daemon_id

    def delivery(self, tg: anyio.abc.TaskGroup) -> Delivery:
        """Question delivery; its webhook POSTs run in `tg`."""
        return Delivery(self.stores.work, tg, webhook_url=self.settings.webhook_url,
                        use_proxy=self.settings.webhook_use_proxy)  # fmt: skip

    def runner(self, tg: anyio.abc.TaskGroup) -> TaskRunner:
        """The task runner; its tasks run in `tg`."""
        return TaskRunner(self.stores.work, tg, daemon_id=self.daemon_id,
                          timeout_s=self.settings.task_timeout_s,
                          finished=self.metrics.task_finished)  # fmt: skip

    def host(self, runner: TaskRunner, delivery: Delivery, tg: anyio.abc.TaskGroup) -> Host:
        """The host of the agents, which run in `tg` (one per daemon: the metrics count
        the supervisors it runs)."""
        host = Host(self.stores.supervisors, self.stores.work, self.daemon_id,
                    queue=self.queue, hub=self.hub, runner=runner, delivery=delivery, tg=tg,
                    heartbeat_s=self.settings.heartbeat_interval_s,
                    history_tail=self.settings.history_tail, guard=self.guard)  # fmt: skip
        self.hosts.append(host)
        return host
