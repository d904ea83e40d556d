"""Waiting out a database outage where a running supervisor reads or writes directly.

The persistence queue retries its own writes. Everything else a running supervisor
does against the database (waiting for an answer or a task, recording a task's
status) goes through `through_outage`: a transient failure (a restart, a failover, a
killed backend) is logged once per outage and retried with backoff for as long as the
daemon runs, so an outage delays a supervisor and never fails it. A permanent error is
raised at once.

Each waiter backs off on its own, but they all wake together: the first call that
gets through after an outage (`answered()`, made by whoever succeeds first, most often
a flusher of the persistence queue, which tries at least twice a second) ends every
`sleep_out` under way. The database is back for all of them at once, and a supervisor
resumes within a moment of it rather than at the end of its own backoff.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from daemon.errors import TransientDatabaseError
from daemon.logs import get_logger

log = get_logger()
T = TypeVar("T")

# Who sleeps out an outage now, and whether a call failed since the last that got
# through. Module state: a daemon process talks to one database.
_sleepers: set[anyio.Event] = set()
_down = False


def failed() -> None:
    """A database call met a transient failure: an outage may be under way."""
    global _down  # noqa: PLW0603 - see above
    _down = True


def answered() -> None:
    """A database call got through: after a failure, wake everyone sleeping it out.
    Cheap when nothing failed (one test of a flag): it is called after every flush."""
    global _down  # noqa: PLW0603 - see above
    if _down:
        _down = False
        for sleeper in _sleepers:
            sleeper.set()
        _sleepers.clear()


async def sleep_out(seconds: float) -> None:
    """Sleep `seconds`, or until a call gets through again, whichever comes first."""
    woken = anyio.Event()
    _sleepers.add(woken)
    try:
        with anyio.move_on_after(seconds):
            await woken.wait()
    finally:
        _sleepers.discard(woken)


async def through_outage(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    initial_s: float = 0.1,
    max_s: float = 5.0,
    **fields: Any,
) -> T:
    """`await call()`, retried while it fails with a TransientDatabaseError."""
    wait = initial_s
    failures = 0
    while True:
        try:
            result = await call()
        except TransientDatabaseError as exc:
            failed()
            failures += 1
            if failures == 1:
                log.warning("database.waiting", what=what, error=str(exc), **fields)
            await sleep_out(wait * random.uniform(1.0, 1.5))  # noqa: S311 - jitter
            wait = min(wait * 2, max_s)
            continue
        answered()
        if failures:
            log.info("database.back", what=what, failures=failures, **fields)
        return result
