"""`supervisor-daemon run`: open the database, migrate, register, serve until a signal.

A signal asks; it does not kill: SIGTERM or SIGINT starts an orderly stop, a second
SIGINT forces it, and the stop hands the supervisors over to other daemons unless told
not to (RELEASE_ON_STOP). Background jobs run in one anyio task group, so a crash in
any of them stops the daemon loudly instead of dying silently. A lease that lapses
(daemon/runtime/lease.py) stops every agent and task, and once the lease is regained
the next claim round takes the daemon's supervisors back under new epochs: the process
itself never exits for it.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import anyio.abc

from daemon import __version__
from daemon.config import Settings, resolve_daemon_id
from daemon.db import embedded
from daemon.db.database import Database, open_database
from daemon.errors import ConfigError, DaemonCrashedError, DaemonError, DaemonIdInUseError
from daemon.logs import get_logger, set_daemon_id
from daemon.models import PHASES, SupervisorRestorationContext, SupervisorState
from daemon.ops import metrics, systemd, watchdog
from daemon.ops.gc_tuning import collect_on_a_clock, restore_defaults, tune_for_throughput
from daemon.persistence.queue import PersistenceQueue
from daemon.restoration.plan import CrashLoopGuard, RestorationOutcome
from daemon.restoration.run import RestorationSummary, restore_all
from daemon.runtime import retention
from daemon.runtime.host import Host
from daemon.runtime.lease import LeaseKeeper, LeaseTiming, Registration
from daemon.store import DaemonRegistry, EventStore, MetricsStore, Store, WorkStore
from daemon.work import environment
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner

E = TypeVar("E", bound=BaseException)


def crash_loop_guard(settings: Settings) -> CrashLoopGuard:
    return CrashLoopGuard(
        max_restorations=settings.crash_loop_max_restorations,
        window=timedelta(seconds=settings.crash_loop_window_s),
    )


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


async def _wait_for_stop(signals: Any, log: Any) -> None:
    async for signum in signals:
        log.info("daemon.stopping", signal=signal.Signals(signum).name)
        systemd.stopping()
        return


Contracts = dict[uuid.UUID, uuid.UUID | None]


async def _restore(
    db: Database,
    settings: Settings,
    keeper: LeaseKeeper,
    daemon_metrics: metrics.DaemonMetrics,
    *,
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
        db.pool, keeper.daemon_id, guard=crash_loop_guard(settings), capacity=settings.capacity,
        include_own=include_own, on_outcome=keep, token=keeper.token, history_tail=0,
    )  # fmt: skip
    return summary, contexts, contracts


async def _claim_new(
    db: Database,
    settings: Settings,
    keeper: LeaseKeeper,
    host: Host,
    runner: TaskRunner,
    *,
    claimed_under: int,
    daemon_metrics: metrics.DaemonMetrics,
) -> None:
    """While running, take new supervisors (`supervisors create`) and orphans of daemons
    whose lease expired or that stopped, restore them, and start their agents. After the
    lease lapsed and was regained, take this daemon's own supervisors back too: with new
    epochs, restored, their agents started again (the old ones were stopped)."""
    log = get_logger()
    while True:
        await keeper.wait_changed(settings.claim_interval_s)
        if not keeper.held:
            continue
        generation = keeper.generation
        regained = generation != claimed_under
        try:
            summary, contexts, contracts = await _restore(
                db, settings, keeper, daemon_metrics, include_own=regained
            )
            if keeper.generation != generation or not keeper.held:
                continue  # lost again meanwhile: the next round claims again
            if regained:
                systemd.status(f"lease regained: {summary.supervisors} supervisor(s) claimed")
            claimed_under = generation
            if summary.supervisors:
                # Only the newcomers' tasks: the running supervisors' tasks are ours.
                await runner.resume(supervisors=set(contexts))
                host.delivery.webhook_redeliveries(contexts, contracts)
                await host.start(contexts, list(contexts))
        except DaemonError as exc:
            log.warning("daemon.claim_failed", error=str(exc))


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


async def _force_on_second_sigint(signals: Any, queue: PersistenceQueue, log: Any) -> None:
    """During an orderly stop, a second SIGINT (Ctrl-C again) cuts the drain short."""
    async for signum in signals:
        if signum == signal.SIGINT:
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
        applied = await db.migrate()
        log.info("database.ready", embedded=db.embedded, migrations_applied=len(applied))
        queue = PersistenceQueue.from_settings(EventStore(db.pool), settings)
        hosts: list[Host] = []  # the Host, once agents run (for the metrics)
        daemon_metrics = metrics.DaemonMetrics(queue, lambda: sum(len(h.running) for h in hosts))
        registration = Registration(daemon_id=daemon_id, hostname=socket.gethostname(),
                                    pid=os.getpid(), version=__version__,
                                    capacity=settings.capacity)  # fmt: skip
        keeper = LeaseKeeper(db.dsn, registration, LeaseTiming(settings.lease_s),
                             id_wait_s=min(settings.lease_s, 10.0),
                             renewal_failed=daemon_metrics.lease_renewals_failed.inc)  # fmt: skip
        try:
            await _run_registered(db, settings, keeper, queue, hosts, daemon_metrics, demo=demo)
        finally:
            await keeper.close()


async def _run_registered(  # noqa: PLR0917 - the daemon's parts, made once in run_daemon
    db: Database,
    settings: Settings,
    keeper: LeaseKeeper,
    queue: PersistenceQueue,
    hosts: list[Host],
    daemon_metrics: metrics.DaemonMetrics,
    *,
    demo: bool,
) -> None:
    """Hold the daemon id and its lease, restore, serve until a signal, then hand the
    supervisors over (or keep them for a restart: RELEASE_ON_STOP)."""
    log = get_logger()
    try:
        await keeper.acquire()
    except DaemonIdInUseError as exc:  # a second process with this id stops here: exit 78
        log.critical("daemon.id_in_use", error=str(exc))
        raise
    if demo and (created := await ensure_demo_supervisors(Store(db.pool))):
        log.info("demo.created", supervisors=created)
    metrics_server = _serve_metrics(settings, daemon_metrics, log)
    daemon_metrics.listen()
    try:
        # The lease is renewed from registration on: restoring many supervisors can
        # take longer than the lease lasts.
        async with anyio.create_task_group() as lease:
            lease.start_soon(keeper.run)
            systemd.status("restoring supervisors")
            generation = keeper.generation
            summary, contexts, contracts = await _restore(db, settings, keeper, daemon_metrics)
            await _serve(db, settings, keeper, queue, (contexts, contracts, generation),
                         summary.supervisors, hosts, daemon_metrics, log)  # fmt: skip
            lease.cancel_scope.cancel()
    except Exception as exc:
        in_use = _find(exc, DaemonIdInUseError)
        if in_use is not None:
            log.critical("daemon.id_in_use", error=str(in_use))
            raise in_use from None
        error = _describe(exc)
        log.critical("daemon.crashed", error=error, exc_info=True)
        raise DaemonCrashedError(f"a background job crashed: {error}") from exc
    finally:
        restore_defaults()  # the collector as it was (the daemon may run in-process)
        daemon_metrics.stop_listening()
        if metrics_server is not None:
            metrics_server.shutdown()
    if settings.release_on_stop:
        await _release(DaemonRegistry(db.pool), keeper, log)
    log.info("daemon.stopped", **queue.counters.snapshot(queue.queued))


async def _release(registry: DaemonRegistry, keeper: LeaseKeeper, log: Any) -> None:
    """Hand the supervisors over: other daemons claim them at their next round."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(10):
        try:
            released = await registry.release(keeper.daemon_id, keeper.token)
        except DaemonError as exc:
            log.warning("daemon.release_failed", error=str(exc))
            return
        log.info("daemon.released", supervisors=released or 0)


Startup = tuple[dict[uuid.UUID, SupervisorRestorationContext], Contracts, int]


async def _serve(  # noqa: PLR0917 - the one place that wires the running daemon together
    db: Database,
    settings: Settings,
    keeper: LeaseKeeper,
    queue: PersistenceQueue,
    startup: Startup,
    restored: int,
    hosts: list[Host],
    daemon_metrics: metrics.DaemonMetrics,
    log: Any,
) -> None:
    """Every background job in one task group, until a signal asks to stop. `startup`:
    the restoration contexts and contracts of the supervisors restored at start, and the
    lease generation they were claimed under."""
    contexts, contracts, generation = startup
    hub = Hub(db.pool, db.dsn, poll_s=settings.poll_interval_s)
    agents_scope = anyio.CancelScope()
    # Listening for SIGTERM before saying ready: one sent as soon as the daemon is ready
    # must ask for a stop, not kill the process (the signal's default action).
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            await tg.start(hub.run)
            if settings.metrics_address is not None:
                tg.start_soon(metrics.refresh_from_database, MetricsStore(db.pool),
                              daemon_metrics, settings.metrics_refresh_s)  # fmt: skip
            delivery = Delivery(db.pool, tg, webhook_url=settings.webhook_url,
                                use_proxy=settings.webhook_use_proxy)  # fmt: skip
            delivery.webhook_redeliveries(contexts, contracts)

            async def run_agents(*, task_status: anyio.abc.TaskStatus[int]) -> None:
                with agents_scope:
                    async with anyio.create_task_group() as atg:
                        runner = TaskRunner(WorkStore(db.pool), atg, daemon_id=keeper.daemon_id,
                                            timeout_s=settings.task_timeout_s,
                                            finished=daemon_metrics.task_finished)  # fmt: skip
                        host = Host(db.pool, keeper.daemon_id, queue=queue, hub=hub,
                                    runner=runner, delivery=delivery, tg=atg,
                                    heartbeat_s=settings.heartbeat_interval_s,
                                    history_tail=settings.history_tail)  # fmt: skip
                        hosts.append(host)
                        _wire(keeper, queue, runner, host)
                        started = 0
                        # Claimed under a lease that lapsed meanwhile: the claim loop takes
                        # them back under new epochs.
                        if keeper.held and keeper.generation == generation:
                            await runner.resume()
                            started = await host.start(contexts, list(contexts))
                        atg.start_soon(host.heartbeats)
                        task_status.started(started)
                        await _claim_new(db, settings, keeper, host, runner,
                                         claimed_under=generation,
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
            await _wait_for_stop(signals, log)
            tg.start_soon(_force_on_second_sigint, signals, queue, log)
            # Stop intake (agents), write what is queued (shielded, within the deadline),
            # and only then stop the other background jobs.
            agents_scope.cancel()
            await queue.drain()
            tg.cancel_scope.cancel()


def _wire(keeper: LeaseKeeper, queue: PersistenceQueue, runner: TaskRunner, host: Host) -> None:
    """Whoever learns that this daemon lost a supervisor (a refused write, a fenced
    task write) or its lease tells the host, which stops the agents and tasks."""
    queue.contract_of = host.contract_of
    queue.on_lost = lambda sid, epoch: host.drop(sid, epoch, reason="a write was refused")
    runner.on_lost = lambda sid, epoch: host.drop(sid, epoch, reason="a task write was fenced")

    def lost(reason: str) -> None:
        host.drop_all(reason=reason)
        systemd.status("lease lost: agents stopped, waiting to register again")

    keeper.on_lost = lost
    if not keeper.held:  # lost while restoring at start: nothing of it may run
        host.drop_all(reason="the lease lapsed during the start")
