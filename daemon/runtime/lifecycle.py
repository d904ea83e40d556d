"""`supervisor-daemon run`: open the database, migrate, register, serve until a signal.

A signal asks; it does not kill: SIGTERM or SIGINT starts an orderly stop, a second
SIGINT forces it. Background jobs run in one anyio task group, so a crash in any of
them stops the daemon loudly instead of dying silently.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import anyio.abc

from daemon import __version__, systemd
from daemon.config import Settings, resolve_daemon_id
from daemon.db import embedded, migrations
from daemon.db.database import Database, open_database
from daemon.errors import ConfigError, DaemonCrashedError, DaemonError, LeaseLostError
from daemon.logs import get_logger, set_daemon_id
from daemon.models import PHASES, SupervisorRestorationContext, SupervisorState
from daemon.queue import PersistenceQueue
from daemon.restoration import CrashLoopGuard, RestorationOutcome
from daemon.runtime import environment, metrics, retention, watchdog
from daemon.runtime.delivery import Delivery
from daemon.runtime.gc_tuning import collect_on_a_clock, restore_defaults, tune_for_throughput
from daemon.runtime.host import Host
from daemon.runtime.hub import Hub
from daemon.runtime.restore import RestorationSummary, restore_all
from daemon.runtime.tasks import TaskRunner
from daemon.store import DaemonRegistry, EventStore, MetricsStore, Store, WorkStore

E = TypeVar("E", bound=BaseException)


def crash_loop_guard(settings: Settings) -> CrashLoopGuard:
    return CrashLoopGuard(
        max_restorations=settings.crash_loop_max_restorations,
        window=timedelta(seconds=settings.crash_loop_window_s),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How a lease of `lease_s` seconds is kept: renewed every third of it; once a
    renewal failed, retried every second (or faster for short leases) until a sixth of
    the lease before it expires, when the daemon stops on its own. Other daemons may
    claim its supervisors only after expiry, so none is ever driven by two. The margin
    is counted on the daemon's own clock from when it sent the last renewal that
    succeeded, before the server could stamp it."""

    lease_s: float

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 3

    @property
    def margin_s(self) -> float:
        return self.lease_s / 6

    @property
    def retry_every_s(self) -> float:
        return min(1.0, self.lease_s / 30)


async def _renew_lease(
    registry: DaemonRegistry,
    daemon_id: str,
    log: Any,
    renewed_at: float,
    timing: LeaseTiming,
    *,
    failed: Callable[[], object] = lambda: None,
) -> None:
    """Keep the lease; raise LeaseLostError when it cannot be counted on any more (not
    renewed in time, or the daemon marked stopped). `renewed_at`: when (monotonic) the
    request that last set the lease was sent; `failed` is told of each renewal that
    failed or hung (metrics)."""
    wait = timing.renew_every_s
    while True:
        await anyio.sleep(wait)
        deadline = renewed_at + timing.lease_s - timing.margin_s
        sent = time.monotonic()
        renewed = None
        # A renewal that hangs (a connection the network dropped) must not outlive
        # the lease: give up on it at the deadline.
        with anyio.move_on_after(max(0.0, deadline - sent)):
            try:
                renewed = await registry.renew_lease(daemon_id, timing.lease_s)
            except DaemonError as exc:
                log.warning("daemon.lease_renewal_failed", error=str(exc),
                            seconds_left=round(deadline - time.monotonic(), 1))  # fmt: skip
        if renewed is None:
            failed()
        if renewed:
            renewed_at, wait = sent, timing.renew_every_s
        elif renewed is False:
            raise LeaseLostError(
                f"daemon {daemon_id} is marked stopped in the database: another daemon may"
                " take its supervisors over"
            )
        elif time.monotonic() >= deadline:
            raise LeaseLostError(
                f"the lease of daemon {daemon_id} could not be renewed for"
                f" {time.monotonic() - renewed_at:.0f} s: it expires in"
                f" {timing.margin_s:.0f} s, after which another daemon may take its"
                " supervisors over"
            )
        else:
            wait = min(timing.retry_every_s, max(0.0, deadline - time.monotonic()))


def _serve_metrics(settings: Settings, daemon_metrics: metrics.DaemonMetrics, log: Any) -> Any:
    """Start the metrics server when configured; an address that cannot be served is a
    configuration error (exit 78), found before any supervisor is restored."""
    if settings.metrics_address is None:
        return None
    host, port = settings.metrics_address
    try:
        server = metrics.serve(settings.metrics_address, daemon_metrics)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics at {host}:{port}: {exc}") from None
    log.info("metrics.serving", address=f"{host}:{port}", path="/metrics")
    return server


async def _wait_for_stop(log: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            systemd.stopping()
            return


Contracts = dict[uuid.UUID, uuid.UUID | None]


async def _restore(
    db: Database,
    settings: Settings,
    daemon_id: str,
    daemon_metrics: metrics.DaemonMetrics,
    *,
    capacity: int,
    include_own: bool = True,
) -> tuple[RestorationSummary, dict[uuid.UUID, SupervisorRestorationContext], Contracts]:
    """Claim and restore supervisors under the daemon's crash-loop guard; also return
    the restoration context of each one restored, for its agent, and its contract (for
    the log lines of its webhook redeliveries)."""
    contexts: dict[uuid.UUID, SupervisorRestorationContext] = {}
    contracts: Contracts = {}

    def keep(outcome: RestorationOutcome) -> None:
        contexts[outcome.supervisor_id] = outcome.context
        contracts[outcome.supervisor_id] = outcome.contract_id
        daemon_metrics.restored(outcome)

    # history_tail=0: the contexts carry the history's length, not its newest messages.
    # A running supervisor holds none (its agent gets them when its process starts, or
    # pages them with read_history); decoded here for thousands of supervisors at once,
    # they only left the heap fragmented (51 against 7 KiB per idle supervisor hosted).
    summary = await restore_all(
        db.pool, daemon_id, guard=crash_loop_guard(settings), capacity=capacity,
        include_own=include_own, on_outcome=keep, history_tail=0,
    )  # fmt: skip
    return summary, contexts, contracts


async def _claim_new(
    db: Database,
    settings: Settings,
    daemon_id: str,
    host: Host,
    runner: TaskRunner,
    *,
    daemon_metrics: metrics.DaemonMetrics,
) -> None:
    """While running, take new supervisors (`supervisors create`) and orphans of daemons
    whose lease expired, restore them, and start their agents."""
    while True:
        await anyio.sleep(settings.claim_interval_s)
        try:
            summary, contexts, contracts = await _restore(
                db, settings, daemon_id, daemon_metrics,
                capacity=max(settings.capacity - len(host.running), 0), include_own=False,
            )  # fmt: skip
            if summary.supervisors:
                # Only the newcomers' tasks: the running supervisors' tasks are ours.
                await runner.resume(daemon_id, supervisors=set(contexts))
                host.delivery.webhook_redeliveries(contexts, contracts)
                await host.start(contexts, list(contexts))
        except DaemonError as exc:
            get_logger().warning("daemon.claim_failed", error=str(exc))


def _find(exc: BaseException, kind: type[E]) -> E | None:
    """The first `kind` error in `exc` or in its (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None


def _describe(exc: BaseException) -> str:
    """The errors inside (nested) exception groups, named: what a person needs to read."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def _force_on_second_sigint(queue: PersistenceQueue, log: Any) -> None:
    """During an orderly stop, a second SIGINT (Ctrl-C again) cuts the drain short."""
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            log.warning("daemon.forced_stop", queued=queue.queued)
            queue.force_stop()
            return


async def ensure_demo_supervisors(store: Store, count: int = 2) -> int:
    """Create `count` demo supervisors when none exist; how many were created."""
    if any(state.agent == "demo" for state in await store.list_supervisor_summaries(limit=100_000)):
        return 0
    now = datetime.now(UTC)
    for _ in range(count):
        await store.save_supervisor_state_full(SupervisorState(
            id=uuid.uuid4(), contract_id=uuid.uuid4(), task_id=uuid.uuid4(), phase=PHASES[1],
            last_activity=now, created_at=now, updated_at=now, agent="demo",
        ))  # fmt: skip
    return count


async def run_daemon(settings: Settings, *, demo: bool = False) -> None:
    daemon_id = resolve_daemon_id(settings)
    set_daemon_id(daemon_id)
    environment.allow(settings.agent_env)
    log = get_logger()
    log.info("daemon.starting", version=__version__, pid=os.getpid())
    systemd.status("opening the database")
    async with open_database(settings, wait_s=settings.connect_wait_s) as db:
        async with db.pool.acquire() as conn:
            applied = await migrations.migrate(conn)
        log.info("database.ready", embedded=db.embedded, migrations_applied=len(applied))
        registry = DaemonRegistry(db.pool)
        registered_at = time.monotonic()
        await registry.register(daemon_id, hostname=socket.gethostname(), pid=os.getpid(),
                                version=__version__, lease_s=settings.lease_s,
                                capacity=settings.capacity)  # fmt: skip
        if demo and (created := await ensure_demo_supervisors(Store(db.pool))):
            log.info("demo.created", supervisors=created)
        queue = PersistenceQueue.from_settings(EventStore(db.pool), settings)
        hosts: list[Host] = []  # the Host, once agents run (for the metrics)
        daemon_metrics = metrics.DaemonMetrics(queue, lambda: sum(len(h.running) for h in hosts))
        metrics_server = _serve_metrics(settings, daemon_metrics, log)
        daemon_metrics.listen()
        try:
            # The lease is renewed from registration on: restoring many supervisors
            # can take longer than the lease lasts.
            async with anyio.create_task_group() as lease:
                lease.start_soon(functools.partial(
                    _renew_lease, registry, daemon_id, log, registered_at,
                    LeaseTiming(settings.lease_s), failed=daemon_metrics.lease_renewals_failed.inc,
                ))  # fmt: skip
                systemd.status("restoring supervisors")
                summary, contexts, contracts = await _restore(
                    db, settings, daemon_id, daemon_metrics, capacity=settings.capacity
                )
                await _serve(db, settings, daemon_id, queue, contexts, contracts,
                             summary.supervisors, hosts, daemon_metrics, log)  # fmt: skip
                lease.cancel_scope.cancel()
        except Exception as exc:
            lost = _find(exc, LeaseLostError)
            if lost is not None:
                log.critical("daemon.lease_lost", error=str(lost))
                raise lost from None
            error = _describe(exc)
            log.critical("daemon.crashed", error=error, exc_info=True)
            raise DaemonCrashedError(f"a background job crashed: {error}") from exc
        finally:
            restore_defaults()  # the collector as it was (the daemon may run in-process)
            daemon_metrics.stop_listening()
            if metrics_server is not None:
                metrics_server.shutdown()
        with anyio.CancelScope(shield=True):
            await registry.mark_stopped(daemon_id)
        log.info("daemon.stopped", **queue.counters.snapshot(queue.queued))


async def _serve(  # noqa: PLR0917 - the one place that wires the running daemon together
    db: Database,
    settings: Settings,
    daemon_id: str,
    queue: PersistenceQueue,
    contexts: dict[uuid.UUID, SupervisorRestorationContext],
    contracts: Contracts,
    restored: int,
    hosts: list[Host],
    daemon_metrics: metrics.DaemonMetrics,
    log: Any,
) -> None:
    """Every background job in one task group, until a signal asks to stop."""
    hub = Hub(db.pool, db.dsn, poll_s=settings.poll_interval_s)
    agents_scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        await tg.start(hub.run)
        if settings.metrics_address is not None:
            tg.start_soon(metrics.refresh_from_database, MetricsStore(db.pool), daemon_metrics,
                          settings.metrics_refresh_s)  # fmt: skip
        delivery = Delivery(db.pool, tg, webhook_url=settings.webhook_url,
                            use_proxy=settings.webhook_use_proxy)  # fmt: skip
        delivery.webhook_redeliveries(contexts, contracts)

        async def run_agents(*, task_status: anyio.abc.TaskStatus[int]) -> None:
            with agents_scope:
                async with anyio.create_task_group() as atg:
                    runner = TaskRunner(WorkStore(db.pool), atg, timeout_s=settings.task_timeout_s,
                                        finished=daemon_metrics.task_finished)  # fmt: skip
                    host = Host(db.pool, daemon_id, queue=queue, hub=hub, runner=runner,
                                delivery=delivery, tg=atg,
                                heartbeat_s=settings.heartbeat_interval_s,
                                history_tail=settings.history_tail)  # fmt: skip
                    hosts.append(host)
                    queue.contract_of = host.contract_of
                    await runner.resume(daemon_id)
                    started = await host.start(contexts, list(contexts))
                    atg.start_soon(host.heartbeats)
                    task_status.started(started)
                    await _claim_new(db, settings, daemon_id, host, runner,
                                     daemon_metrics=daemon_metrics)  # fmt: skip

        agents_started = await tg.start(run_agents)
        contexts.clear()
        contracts.clear()
        tune_for_throughput()
        tg.start_soon(collect_on_a_clock)
        if db.embedded:
            tg.start_soon(embedded.keep_running, settings.data_dir)
        log.info("daemon.ready", supervisors=restored, agents=agents_started)
        systemd.ready(f"ready: {restored} supervisor(s) restored,"
                      f" {agents_started} agent(s) running")  # fmt: skip
        if (interval := watchdog.interval_s()) is not None:
            tg.start_soon(watchdog.ping_while_healthy, queue, interval, log)
        if settings.retention_days is not None:
            tg.start_soon(retention.prune_forever, db.pool, settings.retention_days)
        await _wait_for_stop(log)
        tg.start_soon(_force_on_second_sigint, queue, log)
        # Stop intake (agents), write what is queued (shielded, within the deadline),
        # and only then stop the other background jobs.
        agents_scope.cancel()
        await queue.drain()
        tg.cancel_scope.cancel()
