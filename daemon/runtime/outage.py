"""Waiting out a database outage where a running supervisor reads or writes directly.

The persistence queue retries its own writes. Everything else a running supervisor
does against the database (waiting for an answer or a task, recording a task's
status) goes through `through_outage`: a transient failure (a restart, a failover, a
killed backend) is logged once per outage and retried with backoff for as long as the
daemon runs, so an outage delays a supervisor and never fails it. A permanent error is
raised at once.
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
            failures += 1
            if failures == 1:
                log.warning("database.waiting", what=what, error=str(exc), **fields)
            await anyio.sleep(wait * random.uniform(1.0, 1.5))  # noqa: S311 - jitter
            wait = min(wait * 2, max_s)
            continue
        if failures:
            log.info("database.back", what=what, failures=failures, **fields)
        return result
