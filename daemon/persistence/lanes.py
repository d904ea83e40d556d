"""The persistence queue's parts: its errors, counters and drain report, and the lanes
(one flusher's share of the supervisors) with the rule that keeps a coalesced report
after the events older than it. Owned by daemon/persistence/queue.py, which imports them from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from daemon.errors import (
    DaemonError,
)
from daemon.logs import get_logger
from daemon.persistence.events import Event

log = get_logger()

T = TypeVar("T")


class QueueClosedError(DaemonError):
    """The queue stopped taking events, or stopped before writing this one."""


class EventRejectedError(DaemonError):
    """The database refused this event (a constraint, an unknown supervisor)."""


class SupervisorLostError(EventRejectedError):
    """The supervisor is not this writer's any more: another daemon owns it under a newer
    epoch, or it is gone. Its owner here stops driving it (see `on_lost`)."""


@dataclasses.dataclass(slots=True)
class QueueCounters:
    """Counters readable in-process (later exported as metrics)."""

    submitted: int = 0  # critical events accepted
    coalesced: int = 0  # heartbeat/progress accepted
    written: int = 0  # critical events committed and acknowledged
    rejected: int = 0  # critical events failed by the database
    abandoned: int = 0  # critical events never written (stop deadline)
    batches: int = 0
    batch_events_max: int = 0
    flush_seconds_total: float = 0.0
    flush_seconds_max: float = 0.0
    retries: int = 0
    backpressure_waits: int = 0

    def snapshot(self, queued: int) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["queued"] = queued
        data["batch_events_mean"] = self.written / self.batches if self.batches else 0.0
        return data


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DrainReport:
    written: int
    abandoned: int
    seconds: float


def take_coalesced(lane: Lane, count: int) -> list[tuple[int, Event]]:
    """The heartbeat/progress entries that go with the lane's first `count` events.

    An entry is newer than the events queued before it (its position) only. One that
    arrived after the `count`-th event waits for the batch holding those events, its
    position counted from there: written now, it would go before older events.
    """
    entries = lane.coalesced
    if not lane.events:  # the batch holds every queued event (`count` were taken out)
        lane.coalesced = {}
        return list(entries.values())
    taken: list[tuple[int, Event]] = []
    kept: dict[uuid.UUID, tuple[int, Event]] = {}
    for supervisor_id, (position, event) in entries.items():
        if position <= count:
            taken.append((position, event))
        else:
            kept[supervisor_id] = (position - count, event)
    lane.coalesced = kept
    return taken


def set_result(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled submitter's event is still written
        future.set_result(None)


def set_exception(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Lane:
    """One flusher's share of the supervisors: its own queue, written in order."""

    __slots__ = ("busy", "coalesced", "events", "futures", "inflight", "parked", "wakeup")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.futures: list[asyncio.Future[None]] = []
        # supervisor id -> (position in `events` when it arrived, newest event)
        self.coalesced: dict[uuid.UUID, tuple[int, Event]] = {}
        self.wakeup = asyncio.Event()
        # True while the flusher waits for work: only then does a submitter need to set
        # `wakeup` (a method call per event otherwise).
        self.parked = False
        self.inflight: Sequence[asyncio.Future[None]] = ()
        # True while a batch holding this lane's events is being written (its own, or
        # one of another lane that took them along): the lane writes nothing else then.
        self.busy = False

    def wake(self) -> None:
        if self.parked:
            self.parked = False
            self.wakeup.set()
