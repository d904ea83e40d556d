"""`supervisor-daemon run`: open the database, migrate, register, serve until a signal.

A signal asks; it does not kill: SIGTERM or SIGINT starts an orderly stop, a second
SIGINT forces it, and the stop hands the supervisors over to other daemons unless told
not to (RELEASE_ON_STOP). Background jobs run in one anyio task group, so a crash in
any of them stops the daemon loudly instead of dying silently. A lease that lapses
(daemon/runtime/lease.py) stops every agent and task, and once the lease is regained
the next claim round takes the daemon's supervisors back under new epochs: the process
itself never exits for it. Its parts are made once, from the settings, by
daemon/runtime/components.py.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

import anyio
import anyio.abc

from daemon import __version__
from daemon.config import Settings, resolve_daemon_id
from daemon.db import embedded
from daemon.db.database import open_database
from daemon.errors import ConfigError, DaemonCrashedError, DaemonError, DaemonIdInUseError
from daemon.logs import get_logger, set_daemon_id
from daemon.models import PHASES, SupervisorRestorationContext, SupervisorState
from daemon.ops import metrics, systemd, watchdog
from daemon.ops.gc_tuning import collect_on_a_clock, restore_defaults, tune_for_throughput
from daemon.persistence.queue import PersistenceQueue
from daemon.restoration.records import RestorationOutcome
from daemon.restoration.run import RestorationSummary, restore_all
from daemon.runtime import retention
from daemon.runtime.components import Components
from daemon.runtime.host import Host
from daemon.runtime.lease import LeaseKeeper
from daemon.store import Store
from daemon.work import environment
from daemon.work.tasks import TaskRunner

E = TypeVar("E", bound=BaseException)
Signals = AsyncIterator[signal.Signals]
# Lines carry the daemon id from the start on (daemon.logs.set_daemon_id).
log = get_logger()


def _serve_metrics(parts: Components) -> WSGIServer | None:
    """Start the metrics server when configured; an address that cannot be served is a
    configuration error (exit 78), found before any supervisor is restored."""
    address = parts.settings.metrics_address
    if address is None:
        return None
    host, port = address
    try:
        server = metrics.serve(address, parts.metrics)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics at {host}:{port}: {exc}") from None
    log.info("metrics.serving", address=f"{host}:{port}", path="/metrics")
    return server


async def _wait_for_stop(signals: Signals) -> None:
    async for signum in signals:
        log.info("daemon.stopping", signal=signal.Signals(signum).name)
        systemd.stopping()
        return


Contracts = dict[uuid.UUID, uuid.UUID | None]


async def _restore(
    parts: Components, *, include_own: bool = True
) -> tuple[RestorationSummary, dict[uuid.UUID, SupervisorRestorationContext], Contracts]:
    """Claim and restore supervisors under the daemon's crash-loop guard; also return
    the restoration context of each one restored, for its agent, and its contract (for
    the log lines of its webhook redeliveries)."""
    contexts: dict[uuid.UUID, SupervisorRestorationContext] = {}
    contracts: Contracts = {}

    def keep(outcome: RestorationOutcome) -> None:
        contexts[outcome.supervisor_id] = outcome.context
        contracts[outcome.supervisor_id] = outcome.contract_id
        parts.metrics.restored(outcome)

    # history_tail=0: the contexts carry the history's length, not its newest messages.
    # A running supervisor holds none (its agent gets them when its process starts, or
    # pages them with read_history); decoded here for thousands of supervisors at once,
    # they only left the heap fragmented (51 against 7 KiB per idle supervisor hosted).
    summary = await restore_all(
        parts.stores.restoration, parts.daemon_id, guard=parts.guard,
        capacity=parts.settings.capacity, include_own=include_own, on_outcome=keep,
        token=parts.keeper.token, history_tail=0,
    )  # fmt: skip
    return summary, contexts, contracts


async def _claim_new(
    parts: Components, host: Host, runner: TaskRunner, *, claimed_under: int
) -> None:
    """While running, take new supervisors (`supervisors create`) and orphans of daemons
    whose lease expired or that stopped, restore them, and start their agents. After the
    lease lapsed and was regained, take this daemon's own supervisors back too: with new
    epochs, restored, their agents started again (the old ones were stopped)."""
    keeper = parts.keeper
    while True:
        await keeper.wait_changed(parts.settings.claim_interval_s)
        if not keeper.held:
            continue
        generation = keeper.generation
        regained = generation != claimed_under
        try:
            summary, contexts, contracts = await _restore(parts, include_own=regained)
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


async def _force_on_second_sigint(signals: Signals, queue: PersistenceQueue) -> None:
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
    log.info("daemon.starting", version=__version__, pid=os.getpid())
    systemd.status("opening the database")
    async with open_database(settings, wait_s=settings.connect_wait_s) as db:
        applied = await db.migrate()
        log.info("database.ready", embedded=db.embedded, migrations_applied=len(applied))
        parts = Components.build(db, settings, daemon_id)
        try:
            await _run_registered(parts, embedded_server=db.embedded, demo=demo)
        finally:
            await parts.keeper.close()


async def _run_registered(parts: Components, *, embedded_server: bool, demo: bool) -> None:
    """Hold the daemon id and its lease, restore, serve until a signal, then hand the
    supervisors over (or keep them for a restart: RELEASE_ON_STOP)."""
    keeper, queue = parts.keeper, parts.queue
    try:
        await keeper.acquire()
    except DaemonIdInUseError as exc:  # a second process with this id stops here: exit 78
        log.critical("daemon.id_in_use", error=str(exc))
        raise
    if demo and (created := await ensure_demo_supervisors(parts.stores.supervisors)):
        log.info("demo.created", supervisors=created)
    metrics_server = _serve_metrics(parts)
    parts.metrics.listen()
    try:
        # The lease is renewed from registration on: restoring many supervisors can
        # take longer than the lease lasts.
        async with anyio.create_task_group() as lease:
            lease.start_soon(keeper.run)
            systemd.status("restoring supervisors")
            generation = keeper.generation
            summary, contexts, contracts = await _restore(parts)
            await _serve(parts, (contexts, contracts, generation), summary.supervisors,
                         embedded_server=embedded_server)  # fmt: skip
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
        parts.metrics.stop_listening()
        if metrics_server is not None:
            metrics_server.shutdown()
    if parts.settings.release_on_stop:
        await _release(parts)
    log.info("daemon.stopped", **queue.counters.snapshot(queue.queued))


async def _release(parts: Components) -> None:
    """Hand the supervisors over: other daemons claim them at their next round."""
    keeper = parts.keeper
    with anyio.CancelScope(shield=True), anyio.move_on_after(10):
        try:
            released = await parts.stores.daemons.release(keeper.daemon_id, keeper.token)
        except DaemonError as exc:
            log.warning("daemon.release_failed", error=str(exc))
            return
        log.info("daemon.released", supervisors=released or 0)


Startup = tuple[dict[uuid.UUID, SupervisorRestorationContext], Contracts, int]


async def _serve(
    parts: Components, startup: Startup, restored: int, *, embedded_server: bool
) -> None:
    """Every background job in one task group, until a signal asks to stop. `startup`:
    the restoration contexts and contracts of the supervisors restored at start, and the
    lease generation they were claimed under."""
    contexts, contracts, generation = startup
    settings, keeper, queue = parts.settings, parts.keeper, parts.queue
    agents_scope = anyio.CancelScope()
    # Listening for SIGTERM before saying ready: one sent as soon as the daemon is ready
    # must ask for a stop, not kill the process (the signal's default action).
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            await tg.start(parts.hub.run)
            if settings.metrics_address is not None:
                tg.start_soon(metrics.refresh_from_database, parts.stores.metrics,
                              parts.metrics, settings.metrics_refresh_s)  # fmt: skip
            delivery = parts.delivery(tg)
            delivery.webhook_redeliveries(contexts, contracts)

            async def run_agents(*, task_status: anyio.abc.TaskStatus[int]) -> None:
                with agents_scope:
                    async with anyio.create_task_group() as atg:
                        runner = parts.runner(atg)
                        host = parts.host(runner, delivery, atg)
                        _wire(keeper, queue, runner, host)
                        started = 0
                        # Claimed under a lease that lapsed meanwhile: the claim loop takes
                        # them back under new epochs.
                        if keeper.held and keeper.generation == generation:
                            await runner.resume()
                            started = await host.start(contexts, list(contexts))
                        atg.start_soon(host.heartbeats)
                        task_status.started(started)
                        await _claim_new(parts, host, runner, claimed_under=generation)

            agents_started = await tg.start(run_agents)
            contexts.clear()
            contracts.clear()
            tune_for_throughput()
            tg.start_soon(collect_on_a_clock)
            if embedded_server:
                tg.start_soon(embedded.keep_running, settings.data_dir)
            log.info("daemon.ready", supervisors=restored, agents=agents_started)
            systemd.ready(f"ready: {restored} supervisor(s) restored,"
                          f" {agents_started} agent(s) running")  # fmt: skip
            if (interval := watchdog.interval_s()) is not None:
                tg.start_soon(watchdog.ping_while_healthy, queue, interval)
            if settings.retention_days is not None:
                tg.start_soon(retention.prune_forever, parts.stores.retention,
                              settings.retention_days)  # fmt: skip
            await _wait_for_stop(signals)
            tg.start_soon(_force_on_second_sigint, signals, queue)
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
