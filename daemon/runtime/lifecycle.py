"""`supervisor-daemon run`: open the database, migrate, register, serve until a signal.

A signal asks; it does not kill: SIGTERM or SIGINT starts an orderly stop, a second
SIGINT forces it. Background jobs run in one anyio task group, so a crash in any of
them stops the daemon loudly instead of dying silently.
"""

from __future__ import annotations

import os
import signal
import socket
from datetime import timedelta
from typing import Any

import anyio

from daemon import __version__, systemd
from daemon.config import Settings, resolve_daemon_id
from daemon.db import migrations
from daemon.db.database import open_database
from daemon.errors import DaemonError
from daemon.logs import get_logger, set_daemon_id
from daemon.queue import PersistenceQueue
from daemon.restoration import CrashLoopGuard
from daemon.runtime.gc_tuning import tune_for_throughput
from daemon.runtime.restore import restore_all
from daemon.store import DaemonRegistry, EventStore

LEASE_S = 30.0


def crash_loop_guard(settings: Settings) -> CrashLoopGuard:
    return CrashLoopGuard(
        max_restorations=settings.crash_loop_max_restorations,
        window=timedelta(seconds=settings.crash_loop_window_s),
    )


LEASE_RENEW_S = 10.0


async def _renew_lease(registry: DaemonRegistry, daemon_id: str, log: Any) -> None:
    while True:
        await anyio.sleep(LEASE_RENEW_S)
        try:
            if not await registry.renew_lease(daemon_id, LEASE_S):
                log.warning("daemon.lease_lost")
        except DaemonError as exc:
            log.warning("daemon.lease_renewal_failed", error=str(exc))


async def _wait_for_stop(log: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            systemd.stopping()
            return


async def run_daemon(settings: Settings) -> None:
    daemon_id = resolve_daemon_id(settings)
    set_daemon_id(daemon_id)
    log = get_logger()
    log.info("daemon.starting", version=__version__, pid=os.getpid())
    systemd.status("opening the database")
    async with open_database(settings) as db:
        async with db.pool.acquire() as conn:
            applied = await migrations.migrate(conn)
        log.info("database.ready", embedded=db.embedded, migrations_applied=len(applied))
        registry = DaemonRegistry(db.pool)
        await registry.register(
            daemon_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            lease_s=LEASE_S,
        )
        systemd.status("restoring supervisors")
        summary = await restore_all(
            db.pool, daemon_id, guard=crash_loop_guard(settings), capacity=settings.capacity
        )
        queue = PersistenceQueue.from_settings(EventStore(db.pool), settings)
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            tg.start_soon(_renew_lease, registry, daemon_id, log)
            tune_for_throughput()
            log.info("daemon.ready")
            systemd.ready(f"ready: {summary.supervisors} supervisor(s) restored")
            await _wait_for_stop(log)
            # Stop intake, write what is queued (shielded, within the deadline), and
            # only then stop the other background jobs.
            await queue.drain()
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await registry.mark_stopped(daemon_id)
        log.info("daemon.stopped", **queue.counters.snapshot(queue.queued))
