"""A daemon's hold on its id and its lease, kept for as long as the process runs.

One process per daemon id: the id is held with a PostgreSQL advisory lock on a
connection kept for the life of the process (a second process started with the same
id is refused with a clear error). A crashed process's connection closes and the lock
goes with it, so a restart takes the id at once.

The lease is renewed on that same connection every third of its length. A renewal
never extends a lease that already expired: the database refuses it (and a daemon
that claims the supervisors of an expired lease first marks that daemon stopped, in
the claim's transaction, so the two cannot race). When the lease can no longer be
counted on, because a renewal was refused or because none succeeded until a sixth of
the lease before it would expire, the daemon drops its supervisors (agents and tasks
stop: another daemon may own them by now), keeps trying the database for as long as
it takes, registers again and claims again, with new epochs. The process outlives a
database outage of any length.

Deadlines are counted on a clock that keeps counting while the machine is suspended
(CLOCK_BOOTTIME on Linux): after a paused VM or a closed laptop lid the daemon finds
its lease gone within a second of waking up, not a whole lease later. The database's
clock decides expiry for everyone else; the daemon's own deadline is earlier than that,
counted from when it sent the renewal.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from daemon.errors import DaemonError, DaemonIdInUseError
from daemon.logs import get_logger
from daemon.store import DaemonRegistry, DaemonSession

log = get_logger()


def boottime() -> float:
    """Seconds on a clock that counts suspended time (monotonic where there is none)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How a lease of `lease_s` seconds is kept: renewed every third of it; once a
    renewal failed, retried every second (or faster for short leases) until a sixth of
    the lease before it expires, when the daemon drops its supervisors. The margin is
    counted from when the last renewal that succeeded was sent, before the server could
    stamp it, on a clock that counts suspended time."""

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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """What a daemon announces about itself."""

    daemon_id: str
    hostname: str
    pid: int
    version: str
    capacity: int


class LeaseKeeper:
    """Holds the daemon id and its lease. `held` says whether the lease can be counted
    on now; `generation` grows at each registration, so that work claimed under an
    earlier lease can be told apart. `on_lost(reason)` is called (synchronously) when
    the lease can no longer be counted on."""

    def __init__(
        self,
        registry: DaemonRegistry,
        registration: Registration,
        timing: LeaseTiming,
        *,
        id_wait_s: float = 10.0,
        clock: Callable[[], float] = boottime,
        renewal_failed: Callable[[], object] = lambda: None,
    ) -> None:
        self._registry = registry  # opens the session that holds the id (it needs its DSN)
        self._reg = registration
        self._timing = timing
        self._id_wait_s = id_wait_s
        self._clock = clock
        self._renewal_failed = renewal_failed
        self.token = uuid.uuid4()
        self._session: DaemonSession | None = None
        self._backends: set[int] = set()  # server pids of our lock sessions, ever
        self.held = False
        self.generation = 0
        self.renewed_at = 0.0  # (clock) when the last successful renewal was sent
        self.on_lost: Callable[[str], object] = lambda _reason: None
        self._changed = anyio.Event()  # set (and replaced) when held changes

    @property
    def daemon_id(self) -> str:
        return self._reg.daemon_id

    async def wait_changed(self, timeout_s: float) -> None:
        """Return when `held` changes, or after `timeout_s`."""
        with anyio.move_on_after(timeout_s):
            await self._changed.wait()

    def _set_held(self, held: bool) -> None:
        self.held = held
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # -- the id --------------------------------------------------------------------------

    async def _lock_session(self, *, wait_s: float) -> DaemonSession:
        """The session that holds the id's lock, (re)opened and locked when needed.
        DaemonIdInUseError when another process holds the id for longer than `wait_s`."""
        if self._session is not None and not self._session.is_closed():
            return self._session
        self._drop_session()
        session = await self._registry.session()
        try:
            deadline = time.monotonic() + wait_s
            while not await session.lock_id(self.daemon_id):
                holders = await session.id_holders(self.daemon_id)
                stale = [h["pid"] for h in holders if h["pid"] in self._backends]
                for pid in stale:
                    # A connection of ours the server still holds (the network dropped
                    # it): it holds nothing this process can use any more.
                    await session.terminate_backend(pid)
                if not stale and time.monotonic() >= deadline:
                    raise DaemonIdInUseError(await self._in_use(session, holders))
                await anyio.sleep(0.25)
        except BaseException:
            session.terminate()  # the session, and any lock it took, end with it
            raise
        self._backends.add(session.server_pid)
        self._session = session
        return session

    async def _in_use(self, registry: DaemonRegistry, holders: list[dict[str, Any]]) -> str:
        where = ", ".join(
            f"backend {h['pid']}" + (f" from {h['client_addr']}" if h["client_addr"] else "")
            for h in holders
        )
        row = next((d for d in await registry.list() if d["id"] == self.daemon_id), None)
        known = (
            f" (registered by pid {row['pid']} on {row['hostname']}, started {row['started_at']})"
            if row is not None
            else ""
        )
        return (
            f"daemon id {self.daemon_id!r} is in use by another running process{known};"
            f" its database session: {where or 'unknown'}. Stop that process, or give this"
            " one another id (SUPERVISOR_DAEMON_DAEMON_ID)"
        )

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.terminate()
            self._session = None

    async def close(self) -> None:
        """Give the id up (the lock goes with the session), cancelled or not."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the lease -----------------------------------------------------------------------

    async def acquire(self) -> None:
        """Take the id and register with a fresh lease (at start)."""
        await self._register(wait_s=self._id_wait_s)

    async def _register(self, *, wait_s: float) -> None:
        session = await self._lock_session(wait_s=wait_s)
        sent = self._clock()  # before the server stamps the lease: the safe side
        reg = self._reg
        await session.register(
            reg.daemon_id, hostname=reg.hostname, pid=reg.pid, version=reg.version,
            lease_s=self._timing.lease_s, capacity=reg.capacity, token=self.token,
        )  # fmt: skip
        self.renewed_at = sent
        self.generation += 1
        self._set_held(True)

    def _deadline(self) -> float:
        return self.renewed_at + self._timing.lease_s - self._timing.margin_s

    async def run(self) -> None:
        """Keep the lease for as long as the daemon runs: renew it; when it is lost,
        drop everything (`on_lost`) and register again once the database answers."""
        while True:
            reason = await self._keep()
            log.error("daemon.lease_lost", error=reason)
            self._set_held(False)
            self.on_lost(reason)
            await self._regain()
            log.info("daemon.lease_regained", generation=self.generation)

    async def _sleep_until(self, when: float) -> None:
        """Sleep until `when` on the suspend-counting clock, in slices short enough
        to notice a suspension (the event loop's clock stops while suspended)."""
        while (left := when - self._clock()) > 0:  # noqa: ASYNC110 - a clock, not an event
            await anyio.sleep(min(left, self._timing.retry_every_s))

    async def _keep(self) -> str:
        """Renew until the lease cannot be counted on; why not."""
        timing = self._timing
        wait_until = self.renewed_at + timing.renew_every_s
        while True:
            await self._sleep_until(min(wait_until, self._deadline()))
            deadline = self._deadline()
            sent = self._clock()
            if sent >= deadline:
                return (
                    f"the lease of daemon {self.daemon_id} could not be renewed for"
                    f" {sent - self.renewed_at:.0f} s: it expires within"
                    f" {timing.margin_s:.0f} s, after which another daemon may take its"
                    " supervisors over"
                )
            renewed: float | None = None
            failed = True
            # A renewal that hangs (a connection the network dropped) must not outlive
            # the deadline: given up on then, and its connection with it.
            with anyio.move_on_after(max(0.0, deadline - sent)) as scope:
                try:
                    session = await self._lock_session(wait_s=0.0)
                    renewed = await session.renew_lease(self.daemon_id, timing.lease_s, self.token)
                    failed = False
                except DaemonIdInUseError:
                    raise
                except DaemonError as exc:
                    self._drop_session()
                    log.warning("daemon.lease_renewal_failed", error=str(exc),
                                seconds_left=round(deadline - self._clock(), 1))  # fmt: skip
            if scope.cancelled_caught:
                self._drop_session()
            if failed:
                self._renewal_failed()
                wait_until = self._clock() + timing.retry_every_s
                continue
            if renewed is None:
                return (
                    f"the database refused to renew the lease of daemon {self.daemon_id}:"
                    " it had expired, or the daemon was marked stopped; another daemon may"
                    " own its supervisors now"
                )
            self.renewed_at = sent
            wait_until = sent + timing.renew_every_s

    async def _regain(self) -> None:
        """Register again (a new lease), for as long as the database does not answer."""
        wait = 0.5
        failures = 0
        while True:
            try:
                await self._register(wait_s=self._id_wait_s)
                if failures:
                    log.info("database.back", what="the daemon's lease", failures=failures)
                return
            except DaemonIdInUseError:
                raise
            except DaemonError as exc:
                self._drop_session()
                failures += 1
                if failures == 1:
                    log.warning("database.waiting", what="the daemon's lease", error=str(exc))
            await anyio.sleep(wait * random.uniform(1.0, 1.5))  # noqa: S311 - jitter
            wait = min(wait * 2, 5.0)
