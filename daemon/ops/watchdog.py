"""systemd's watchdog: ping while healthy, so that systemd restarts a wedged daemon.

With `WatchdogSec=` in the unit, systemd sets WATCHDOG_USEC and restarts the service
when no WATCHDOG=1 arrives within that time; the daemon pings at half the interval,
and only while it is healthy:
- its event loop runs: the pinger is a task on it, so a blocked loop pings nothing;
- no database call of the persistence queue has been under way for longer than the
  watchdog interval: a connection the network dropped without a reset never fails on
  its own, and events would wait behind it forever.
A database that refuses connections is not a reason to stop: the queue retries, keeps
every event and logs each attempt, and a restart would not bring the database back.
"""

from __future__ import annotations

import os

import anyio

from daemon.logs import get_logger
from daemon.ops import systemd
from daemon.persistence.queue import PersistenceQueue

log = get_logger()


def interval_s() -> float | None:
    """The watchdog interval systemd asks this process for, or None (no watchdog)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def diagnose(longest_call_s: float, interval: float) -> str | None:
    """What is wrong, in words for the log and systemctl status, or None when healthy."""
    if longest_call_s > interval:
        return (
            f"a database call of the persistence queue has been running for {longest_call_s:.0f} s"
        )
    return None


async def ping_while_healthy(queue: PersistenceQueue, interval: float) -> None:
    healthy = True
    while True:
        problem = diagnose(queue.longest_call_s(), interval)
        if problem is None:
            systemd.notify("WATCHDOG=1")
            if not healthy:
                log.info("daemon.healthy_again")
                systemd.status("ready")
                healthy = True
        elif healthy:
            log.error("daemon.unhealthy", problem=problem, watchdog_s=interval)
            systemd.status(f"unhealthy: {problem}")
            healthy = False
        await anyio.sleep(interval / 2)
