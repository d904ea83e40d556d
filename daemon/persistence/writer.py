"""Writing one batch of the persistence queue: folded into one statement, retried
through outages, split on a permanent error until the bad event is alone; each event's
submitter acknowledged, or told why not.

The promises it keeps (retries, no batch applied twice, bisection) are the queue's
contract: see daemon/persistence/queue.py.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from daemon.db import outage
from daemon.errors import NotFoundError, PermanentDatabaseError, TransientDatabaseError
from daemon.logs import get_logger
from daemon.persistence.events import Event
from daemon.persistence.fold import fold
from daemon.persistence.lanes import (
    EventRejectedError,
    QueueCounters,
    SupervisorLostError,
    set_exception,
    set_result,
)
from daemon.store import EventStore

log = get_logger()

T = TypeVar("T")


class BatchWriter:
    """Writes the queue's batches through `store`; counts into the queue's counters."""

    def __init__(
        self,
        store: EventStore,
        counters: QueueCounters,
        *,
        retry_initial_s: float,
        retry_max_s: float,
        contract_of: Callable[[uuid.UUID], uuid.UUID | None],
        on_lost: Callable[[uuid.UUID, int | None], object],
        queued: Callable[[], int],
    ) -> None:
        self._store = store
        self.counters = counters
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self.contract_of = contract_of
        self.on_lost = on_lost
        self._queued = queued  # for the retry log line
        # When each database call under way began (the watchdog asks for the oldest).
        self._calls: dict[int, float] = {}
        self._call_ids = itertools.count()

    async def write(
        self,
        events: Sequence[Event],
        futures: Sequence[asyncio.Future[None]],
        coalesced: Sequence[tuple[int, Event]],
    ) -> None:
        """Write one batch; on a permanent error, split it until the bad event is alone."""
        try:
            missing = await self._apply_with_retries(events, coalesced)
        except (PermanentDatabaseError, TypeError, ValueError) as exc:
            # TypeError/ValueError: an event that cannot be encoded; also fails alone.
            if not events:
                log.error("queue.coalesced_dropped", count=len(coalesced), error=str(exc))
                return
            if len(events) == 1:
                self._reject(events[0], futures[0], exc)
                if coalesced:  # newer than the refused event: written on their own
                    await self.write((), (), coalesced)
                return
            # Each coalesced entry goes with the half whose events it is newer than, so a
            # report is never written before an older event (progress never goes back).
            half = len(events) // 2
            first = [(position, e) for position, e in coalesced if position <= half]
            second = [(position - half, e) for position, e in coalesced if position > half]
            await self.write(events[:half], futures[:half], first)
            await self.write(events[half:], futures[half:], second)
            return
        if not missing:  # the common case: every event written
            self._acknowledge(futures)
            self.counters.written += len(futures)
            return
        written = 0
        lost: dict[uuid.UUID, int | None] = {}
        for event, future in zip(events, futures, strict=True):
            if event.supervisor_id in missing:
                lost.setdefault(event.supervisor_id, event.epoch)
                self._reject(
                    event,
                    future,
                    NotFoundError(
                        f"supervisor {event.supervisor_id} does not exist or is owned by another"
                        " daemon (epoch mismatch)"
                    ),
                    lost=True,
                )
            else:
                written += 1
                set_result(future)
        self.counters.written += written
        for supervisor_id, epoch in lost.items():
            self.on_lost(supervisor_id, epoch)

    @staticmethod
    def _acknowledge(futures: Sequence[asyncio.Future[None]]) -> None:
        # One call per future; a cancelled submitter's future (its event is written all
        # the same) raises, and the rest are then checked one by one.
        try:
            for future in futures:
                future.set_result(None)
        except asyncio.InvalidStateError:
            for future in futures:
                set_result(future)

    def _reject(
        self, event: Event, future: asyncio.Future[None], exc: Exception, *, lost: bool = False
    ) -> None:
        self.counters.rejected += 1
        log.warning(
            "queue.event_rejected",
            supervisor_id=str(event.supervisor_id),
            contract_id=str(self.contract_of(event.supervisor_id)),
            event_id=str(event.id),
            kind=event.kind.value,
            error=str(exc),
        )
        kind = SupervisorLostError if lost else EventRejectedError
        set_exception(future, kind(f"{event.kind.value} rejected: {exc}"))

    async def _apply_with_retries(
        self, events: Sequence[Event], coalesced: Sequence[tuple[int, Event]]
    ) -> set[uuid.UUID]:
        """Apply a batch, retrying transient failures; the supervisors it was refused for.

        A retry simply applies the batch again: the statement itself skips a supervisor
        whose row already holds the batch's last event (an attempt whose commit the
        client never saw, even one still running on the server). A supervisor left
        untouched is then asked about once more, in a statement of its own, which sees
        every commit the batch waited for: refused (fenced, gone) or applied before.
        """
        batch = fold(events, coalesced)
        untouched = await self._retrying(lambda: self._store.apply_batch(batch))
        if not untouched:
            return set()
        asked = {sid: batch.last_event[sid] for sid in untouched if sid in batch.last_event}
        # A row of heartbeat/progress only has no retry check: left untouched, it was
        # refused (fenced, gone). Nobody waits for those, but the owner must hear of it.
        for _position, event in coalesced:
            if event.supervisor_id in untouched and event.supervisor_id not in asked:
                self.on_lost(event.supervisor_id, event.epoch)
        if not asked:
            return set()
        return await self._retrying(lambda: self._store.supervisors_not_at_event(asked))

    async def _retrying(
        self, call: Callable[[], Awaitable[Collection[uuid.UUID]]]
    ) -> set[uuid.UUID]:
        # The first attempt goes straight to the store: nearly every batch succeeds at
        # once, and a retry loop set up per batch would cost more than encoding it.
        try:
            result = set(await self._timed(call()))
        except TransientDatabaseError as exc:
            first_wait = self._retry_initial_s * random.uniform(1.0, 2.0)  # noqa: S311 - jitter
            self._log_retry_error(1, exc, first_wait)
        else:
            outage.answered()
            return result
        # Between attempts, a call that gets through elsewhere ends the wait (outage.py).
        await outage.sleep_out(first_wait)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientDatabaseError),
            # Attempt n+1 waits about initial * 2**n, plus jitter.
            wait=wait_exponential_jitter(
                multiplier=2 * self._retry_initial_s,
                jitter=self._retry_initial_s,
                max=self._retry_max_s,
            ),
            stop=stop_never,
            before_sleep=self._log_retry,
            sleep=outage.sleep_out,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                result = set(await self._timed(call()))
        outage.answered()  # tenacity ends its loop only on success (it retries forever)
        return result

    async def _timed(self, call: Awaitable[T]) -> T:
        key = next(self._call_ids)
        self._calls[key] = time.monotonic()
        try:
            return await call
        finally:
            del self._calls[key]

    def longest_call_s(self) -> float:
        """How long the oldest database call under way has been running (0 when none):
        a call that neither returns nor fails means a connection the network lost."""
        if not self._calls:
            return 0.0
        return time.monotonic() - min(self._calls.values())

    def _log_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        # Attempt 1 was made before the retry loop began.
        self._log_retry_error(state.attempt_number + 1, error, state.upcoming_sleep)

    def _log_retry_error(self, attempt: int, error: BaseException | None, sleep_s: float) -> None:
        outage.failed()
        self.counters.retries += 1
        log.warning(
            "queue.retry",
            attempt=attempt,
            error=str(error),
            sleep_s=round(sleep_s, 3),
            queued=self._queued(),
        )
