"""One campaign's world: a database of its own on the bench's server, the load, the
daemons, the operator and the ledger check."""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import asyncpg

from bench.campaigns.cluster import (
    DB_ERRORS,
    DaemonProcess,
    Operator,
    Server,
    daemon_env,
    open_pool,
)
from bench.campaigns.ledger import Check, Findings
from daemon.services import Services
from daemon.store import Stores

AGENT = Path(__file__).resolve().parent / "agent.py"


class Rig:
    def __init__(
        self, server: Server, root: Path, name: str, tg: anyio.abc.TaskGroup, seed: int
    ) -> None:
        self.server = server
        self.root = root / name
        self.name = name
        self.tg = tg
        self.rng = random.Random(f"{seed}:{name}")
        self.ledger_dir = self.root / "ledger"
        self.runs_file = self.root / "task-runs.txt"
        self.dsn = ""
        self.pool: asyncpg.Pool[Any] | None = None
        self.load: set[uuid.UUID] = set()
        self.check = Check(self.ledger_dir)
        self.daemons: list[DaemonProcess] = []
        self.operator: Operator | None = None

    async def open(self) -> None:
        self.ledger_dir.mkdir(parents=True)
        self.runs_file.touch()
        self.dsn = await self.server.create_database(f"rel_{self.name}")
        self.pool = await open_pool(self.dsn)
        self.operator = Operator(self.pool)
        self.tg.start_soon(self.operator.run)

    @property
    def db(self) -> asyncpg.Pool[Any]:
        if self.pool is None:
            raise RuntimeError("the rig is not open")
        return self.pool

    def agent(self, mode: str, *args: str | Path, ledger_dir: Path | None = None) -> str:
        ledger = ledger_dir or self.ledger_dir
        words = [sys.executable, "-S", "-u", AGENT, ledger, mode, *args]
        return "cmd:" + " ".join(shlex.quote(str(word)) for word in words)

    async def add_load(self, count: int, interval_ms: int) -> list[uuid.UUID]:
        """`count` supervisors driven by the ledger agent, one request per interval."""
        agent = self.agent("load", str(interval_ms), self.runs_file)
        services = Services(Stores.over(self.db))
        made = [(await services.create_supervisor(agent=agent)).id for _ in range(count)]
        self.load.update(made)
        self.check.supervisors.update(made)
        return made

    async def add_idle(self, count: int) -> None:
        """Supervisors with no agent and some history: restored at every start, which
        makes a restoration long enough to be killed in."""
        rows = [(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()) for _ in range(count)]
        await self.db.executemany(
            "INSERT INTO supervisor_states (id, contract_id, task_id, phase, state,"
            " conversation_history) VALUES ($1, $2, $3, 'implement', 'working',"
            ' \'[{"role": "user", "content": "hello"}]\'::jsonb)',
            rows,
        )

    def note(self, event: str, **fields: Any) -> None:
        """A line in the campaign's own log (bench.log): what it did, and when."""
        with (self.root / "bench.log").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")

    def daemon(self, daemon_id: str, **settings: Any) -> DaemonProcess:
        env = daemon_env(self.dsn, self.root / f"data-{daemon_id}", daemon_id, **settings)
        process = DaemonProcess(daemon_id, env, self.root / f"{daemon_id}.log")
        self.daemons.append(process)
        return process

    async def verify(self, deadline_s: float = 120) -> Findings:
        """The ledger check now, waiting out a database that is not back yet."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                return await self.check.update(self.db)
            except DB_ERRORS:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.2)

    async def wait_for_acks(self, since: float, share: float = 1.0, deadline_s: float = 60) -> None:
        """Until `share` of the load supervisors were acknowledged since `since`."""
        deadline = time.monotonic() + deadline_s
        want = max(1, int(len(self.load) * share))
        while len(self.check.acked_since(since) & {str(s) for s in self.load}) < want:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: fewer than {want} supervisors acknowledged within {deadline_s} s"
                )
            await anyio.sleep(0.1)
            await self.verify()

    async def silent_after(self, since: float, deadline_s: float) -> int:
        """Wait up to `deadline_s` for every load supervisor to be acknowledged since
        `since`; how many were not (stranded: nobody runs them)."""
        try:
            await self.wait_for_acks(since, deadline_s=deadline_s)
        except TimeoutError:
            return len({str(s) for s in self.load} - self.check.acked_since(since))
        return 0

    def tasks_run_twice(self) -> int:
        runs = Counter(self.runs_file.read_text().split())
        return sum(1 for n in runs.values() if n > 1)

    async def close(self) -> None:
        for process in self.daemons:
            process.kill()
            with contextlib.suppress(TimeoutError, RuntimeError, AttributeError):
                if process.proc is not None:
                    await process.wait_exit(30)
            process.close()
        if self.pool is not None:
            await self.pool.close()


@contextlib.asynccontextmanager
async def rig(server: Server, root: Path, name: str, seed: int) -> AsyncIterator[Rig]:
    async with anyio.create_task_group() as tg:
        world = Rig(server, root, name, tg, seed)
        try:
            await world.open()
            yield world
        finally:
            with anyio.CancelScope(shield=True):
                await world.close()
            tg.cancel_scope.cancel()
