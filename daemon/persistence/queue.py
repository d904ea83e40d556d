"""The persistence queue: every save point of a running supervisor goes through here.

Contract (SPEC.md, "Durability contract"):
- `submit` of a critical event returns only after the transaction holding it committed;
  heartbeat and progress return at once and are coalesced (newest per supervisor).
- A flusher writes everything queued in its lane (up to a batch size) with one
  set-based statement, which is one implicit transaction: group commit. A lane's
  batches are written one after the other, so per-supervisor order holds; at light
  load one batch takes along what the other lanes hold (see `_run_lane`).
- Transient failures are retried with exponential backoff and jitter, for as long as
  the daemon runs. The batch statement compares each supervisor's newest applied event
  with the batch's under the row lock, so a retry never applies a batch twice, even
  when the failed attempt's commit is still running on the server (a connection cut
  by the network while the server goes on).
- A permanent failure is bisected until the bad event is alone: it fails its submitter,
  the rest of the batch commits.
- The queue is bounded; a full queue makes submitters wait. Nothing accepted is dropped.
- `drain` stops intake and writes what is queued within a deadline, shielded from
  cancellation; what it could not write was never acknowledged and is logged.

The queue runs on anyio's asyncio backend and uses asyncio futures for acknowledgements:
one future per critical event is the cheapest wake-up there is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection

import anyio

from daemon.logs import get_logger
from daemon.persistence.events import Event
from daemon.persistence.lanes import (  # the queue's parts, named here too
    DrainReport,
    EventRejectedError,
    Lane,
    QueueClosedError,
    QueueCounters,
    SupervisorLostError,
    set_exception,
    take_coalesced,
)
from daemon.persistence.writer import BatchWriter
from daemon.store import EventStore

log = get_logger()

# A lane holding fewer critical events than this waits for a batch being written and
# goes with the next one instead of writing beside it (see `_run_lane`). At 5,000
# events/s a lane holds a few; in a closed loop at full speed, thousands.
SHARE_BELOW = 256
# The longest a lane waits for another lane's batch before writing its own: a batch at
# light load takes a millisecond or two.
SHARE_WAIT_S = 0.02


__all__ = ["DrainReport", "EventRejectedError", "PersistenceQueue", "QueueClosedError",
           "QueueCounters", "SupervisorLostError"]  # fmt: skip


class PersistenceQueue:
    """Group commit for save points. See the module docstring for the contract.

    Supervisors are spread over `lanes` flushers by id; each lane writes its batches
    one after the other (per-supervisor order). Busy lanes write concurrently on their
    own connections, so encoding one batch overlaps with the database writing another;
    at light load a lane with a few events waits briefly for the batch under way, and
    the next batch takes them along (fewer statements, a shorter tail).
    Lanes never share a supervisor, so their transactions never touch the same rows.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        max_events: int = 100_000,
        batch_size: int = 5_000,
        flush_delay_s: float = 0.0,
        share_wait_s: float = SHARE_WAIT_S,
        drain_timeout_s: float = 10.0,
        lanes: int = 2,
        retry_initial_s: float = 0.05,
        # Short: a flusher's retry is one statement (or a refused connection) per lane,
        # and the first that gets through wakes every supervisor waiting out the outage.
        retry_max_s: float = 0.5,
    ) -> None:
        if lanes < 1:
            raise ValueError("a queue needs at least one lane")
        self._store = store
        self._max_events = max_events
        self._batch_size = batch_size
        self._flush_delay_s = flush_delay_s
        self._drain_timeout_s = drain_timeout_s
        self._lanes = [Lane() for _ in range(lanes)]
        # A small batch size leaves room to take little along.
        self._share_below = min(SHARE_BELOW, batch_size // 2)
        self._share_wait_s = share_wait_s
        self._flushing = 0  # batches being written, all lanes together
        # Pulsed (set, then cleared) each time a batch is written: lanes that wait for
        # one to end (see `_run_lane`) look again.
        self._written = asyncio.Event()
        self._queued = 0  # critical events waiting, all lanes together
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False
        self._stopped = asyncio.Event()
        self._scope: anyio.CancelScope | None = None
        # The loop `run` runs on. Looked up once: on Python 3.11 every
        # asyncio.get_running_loop() call makes a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters = QueueCounters()
        # Set by the running daemon. `on_flush(seconds, events)` is called once per batch
        # (never per event: this is the hot path) for the metrics' histograms;
        # `contract_of` names a supervisor's contract in the log line of a rejected event.
        self.on_flush: Callable[[float, int], None] | None = None
        self.contract_of: Callable[[uuid.UUID], uuid.UUID | None] = lambda _: None
        # Told of each supervisor a write was refused for (fenced by a newer epoch, or
        # gone), with the epoch the refused events named: the host stops that supervisor.
        self.on_lost: Callable[[uuid.UUID, int | None], object] = lambda _sid, _epoch: None
        # Lambdas: the callbacks are looked up when called, the daemon sets them later.
        self._writer = BatchWriter(
            store,
            self.counters,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            contract_of=lambda sid: self.contract_of(sid),  # noqa: PLW0108
            on_lost=lambda sid, epoch: self.on_lost(sid, epoch),  # noqa: PLW0108
            queued=lambda: self._queued,
        )

    # -- intake -------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    def _lane(self, supervisor_id: uuid.UUID) -> Lane:
        lanes = self._lanes
        return lanes[supervisor_id.int % len(lanes)]

    async def submit(self, event: Event) -> None:
        """Queue `event`; for a critical one, return once it is committed.

        Raises EventRejectedError when the database refuses the event, QueueClosedError
        when the queue stopped first. Cancelling the caller does not withdraw the event.
        """
        if not event.critical:
            self.submit_nowait(event)
            return
        if self._closed:
            raise QueueClosedError("the persistence queue is stopped")
        while self._queued >= self._max_events:
            self.counters.backpressure_waits += 1
            self._space.clear()
            await self._space.wait()
            if self._closed:
                raise QueueClosedError("the persistence queue is stopped")
        lane = self._lane(event.supervisor_id)
        future: asyncio.Future[None] = (self._loop or asyncio.get_running_loop()).create_future()
        lane.events.append(event)
        lane.futures.append(future)
        self._queued += 1
        self.counters.submitted += 1
        if lane.parked:
            lane.wake()
        await future

    def submit_nowait(self, event: Event) -> None:
        """Queue a heartbeat or progress event (never waits, never fails on a full queue).

        Only the newest per supervisor is kept until the next flush, so this needs no
        bound beyond the number of supervisors.
        """
        if event.critical:
            raise ValueError(f"{event.kind.value} is critical: use `await submit(...)`")
        if self._closed:
            raise QueueClosedError("the persistence queue is stopped")
        lane = self._lane(event.supervisor_id)
        lane.coalesced[event.supervisor_id] = (len(lane.events), event)
        self.counters.coalesced += 1
        if lane.parked:
            lane.wake()

    def withdraw(self, lost: Collection[tuple[uuid.UUID, int | None]]) -> int:
        """Take the queued, unwritten events of supervisors this daemon stopped driving
        (supervisor id, epoch) out of the queue, failing their submitters with
        SupervisorLostError; how many critical events. None was acknowledged, and written
        later they would share a batch (one row, one epoch) with the events of a newer
        epoch of the same supervisor, after a claim here."""
        if not lost:
            return 0
        wanted = set(lost)
        error = SupervisorLostError("this daemon no longer owns the supervisor")
        withdrawn = 0
        for lane in self._lanes:
            if not any((e.supervisor_id, e.epoch) in wanted for e in lane.events):
                for sid, (_position, event) in list(lane.coalesced.items()):
                    if (sid, event.epoch) in wanted:
                        del lane.coalesced[sid]
                continue
            kept_events: list[Event] = []
            kept_futures: list[asyncio.Future[None]] = []
            # A coalesced entry's position counts the events queued before it: it moves
            # down by the number withdrawn before it.
            removed_before: list[int] = []
            removed = 0
            for event, future in zip(lane.events, lane.futures, strict=True):
                removed_before.append(removed)
                if (event.supervisor_id, event.epoch) in wanted:
                    set_exception(future, error)
                    removed += 1
                else:
                    kept_events.append(event)
                    kept_futures.append(future)
            removed_before.append(removed)
            withdrawn += removed
            lane.events, lane.futures = kept_events, kept_futures
            lane.coalesced = {
                sid: (position - removed_before[position], event)
                for sid, (position, event) in lane.coalesced.items()
                if (sid, event.epoch) not in wanted
            }
        self._queued -= withdrawn
        self.counters.rejected += withdrawn
        if not self._space.is_set() and self._queued < self._max_events:
            self._space.set()
        return withdrawn

    # -- the flushers -------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The flushers. Start it in a task group; it returns once drained."""
        self._loop = asyncio.get_running_loop()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as tg:
                    for lane in self._lanes:
                        tg.start_soon(self._run_lane, lane)
                    task_status.started()
        finally:
            self._abandon_rest()
            try:
                await self._store.close()  # shielded inside
            finally:
                self._stopped.set()

    async def _run_lane(self, lane: Lane) -> None:
        while not (self._closed and not lane.events and not lane.coalesced):
            if not (lane.events or lane.coalesced or self._closed):
                lane.parked = True
                await lane.wakeup.wait()
                lane.wakeup.clear()
                lane.parked = False
            if self._flush_delay_s and not self._closed:
                await anyio.sleep(self._flush_delay_s)
            waited = False
            while lane.events or lane.coalesced:
                if lane.busy:  # its events ride in another lane's batch: order first
                    await self._written.wait()
                    continue
                # A few events wait for the batch being written (of any lane) instead of
                # starting one beside it: the next batch takes them along (`_flush_once`).
                # Each statement costs the server and this process about as much at one
                # event as at fifty, and on a small machine two of them at once fight
                # for the same cores: at light load one batch at a time acknowledges as
                # soon and its tail is shorter. Lanes write side by side once they fill.
                # Once only, and not for long: a lane the next batch cannot take along
                # (no room) or a batch that hangs (a connection the network lost) must
                # not hold this lane's events back.
                if not waited and self._flushing and len(lane.events) < self._share_below:
                    waited = True
                    with anyio.move_on_after(self._share_wait_s):
                        await self._written.wait()
                    continue
                waited = False
                await self._flush_once(lane)

    async def _flush_once(self, lane: Lane) -> None:
        count = min(len(lane.events), self._batch_size)
        events = lane.events[:count]
        futures = lane.futures[:count]
        del lane.events[:count]
        del lane.futures[:count]
        coalesced = take_coalesced(lane, count)
        # Take along what the other lanes hold, while it is little and none of it is
        # being written: lanes never share a supervisor, and a lane taken along writes
        # nothing until this batch ends, so per-supervisor order holds.
        joined: list[Lane] = []
        if not lane.events:  # this batch holds all the lane had: room for more
            for other in self._lanes:
                taken = len(other.events)
                if (
                    other is lane
                    or other.busy
                    or taken >= self._share_below  # its own flusher writes those (`_run_lane`)
                    or count + taken > self._batch_size
                    or not (taken or other.coalesced)
                ):
                    continue
                joined.append(other)
                events += other.events
                futures += other.futures
                other.events, other.futures = [], []
                # Its positions count its own events: shifted past the ones before them.
                coalesced += [(count + pos, e) for pos, e in take_coalesced(other, taken)]
                count += taken
                other.busy = True
        self._queued -= count
        if not self._space.is_set() and self._queued < self._max_events:
            self._space.set()
        started = time.perf_counter()
        lane.inflight = futures
        lane.busy = True
        self._flushing += 1
        try:
            await self._writer.write(events, futures, coalesced)
        finally:
            self._flushing -= 1
            lane.busy = False
            for other in joined:
                other.busy = False
            self._written.set()
            self._written.clear()
        # Not in `finally`: a cancelled batch's futures stay for `_abandon_rest` to fail.
        lane.inflight = ()
        elapsed = time.perf_counter() - started
        counters = self.counters
        counters.batches += 1
        counters.flush_seconds_total += elapsed
        counters.flush_seconds_max = max(counters.flush_seconds_max, elapsed)
        counters.batch_events_max = max(counters.batch_events_max, count)
        if self.on_flush is not None:
            self.on_flush(elapsed, count + len(coalesced))

    def longest_call_s(self) -> float:
        """See `BatchWriter.longest_call_s` (the watchdog asks)."""
        return self._writer.longest_call_s()

    # -- stop ---------------------------------------------------------------------------

    async def drain(self) -> DrainReport:
        """Stop intake and write what is queued within the deadline (shielded)."""
        started = time.perf_counter()
        written_before = self.counters.written
        self._closed = True
        for lane in self._lanes:
            lane.wakeup.set()
        self._space.set()  # submitters waiting for room see the queue is closed
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._drain_timeout_s):
                await self._stopped.wait()
            if not self._stopped.is_set() and self._scope is not None:
                self._scope.cancel()
                await self._stopped.wait()
        report = DrainReport(
            written=self.counters.written - written_before,
            abandoned=self.counters.abandoned,
            seconds=time.perf_counter() - started,
        )
        event = "queue.drained" if not report.abandoned else "queue.drain_incomplete"
        log.info(
            event,
            written=report.written,
            abandoned=report.abandoned,
            seconds=round(report.seconds, 3),
        )
        return report

    def force_stop(self) -> None:
        """Stop the flushers now (a second Ctrl-C): what is queued is not written."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    def _abandon_rest(self) -> None:
        """Fail everything not written: those events were never acknowledged."""
        # An interrupted in-flight batch may or may not have committed: either way it
        # was never acknowledged, which is all the contract promises.
        error = QueueClosedError("the persistence queue stopped before writing this event")
        critical = coalesced = 0
        for lane in self._lanes:
            pending = [f for f in (*lane.inflight, *lane.futures) if not f.done()]
            for future in pending:
                set_exception(future, error)
            critical += len(pending)
            coalesced += len(lane.coalesced)
            lane.events.clear()
            lane.futures.clear()
            lane.coalesced.clear()
            lane.inflight = ()
        self._queued = 0
        if critical or coalesced:
            self.counters.abandoned += critical
            log.error("queue.events_abandoned", critical=critical, coalesced=coalesced)
