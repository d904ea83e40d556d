"""Shared set-up for the benchmarks: a fresh embedded PostgreSQL, migrated."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from daemon import logs
from daemon.cli.entry import loop_options
from daemon.db import embedded, migrations
from daemon.db.database import ensure_database
from daemon.db.pool import SERVER_SETTINGS, init_connection


def run(main: Callable[..., Awaitable[dict[str, Any]]], *args: Any) -> None:
    """Run a benchmark as the daemon runs (uvloop, JSON logs, to /dev/null here) and
    print its result as the last line, one JSON object."""
    with open(os.devnull, "w") as devnull:
        logs.configure(log_format="json", level="info", stream=devnull)
        result = anyio.run(main, *args, backend_options=loop_options())
    print(json.dumps(result))


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """DSN of a new, migrated database on an embedded server in a temp directory."""
    dsn_env = os.environ.get("BENCH_DATABASE_URL")
    if dsn_env:
        yield dsn_env
        return
    root = Path(tempfile.mkdtemp(prefix="sd-bench-"))
    handle = embedded.start(root)
    try:
        await ensure_database(embedded.database_url(handle, "postgres"), "bench")
        dsn = embedded.database_url(handle, "bench")
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        handle.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def history(n: int = 20) -> list[dict[str, Any]]:
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i}: " + "lorem ipsum dolor sit amet " * 4,
        }
        for i in range(n)
    ]


async def create_supervisors(
    pool: asyncpg.Pool[Any], count: int, *, history_len: int = 20, tasks: int = 0
) -> list[uuid.UUID]:
    """`count` supervisors in state working, phase plan, each with a history of
    `history_len` messages and `tasks` spawned tasks (rows, as the daemon stores them)."""
    ids = [uuid.uuid4() for _ in range(count)]
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO supervisors (id, contract_id, task_id, phase, last_activity, state,"
        " message_seq, task_seq)"
        " SELECT i, gen_random_uuid(), gen_random_uuid(), 'plan', $2, 'working', $3, $4"
        " FROM unnest($1::uuid[]) AS i",
        ids,
        now,
        history_len,
        tasks,
    )
    text = json.dumps(history(history_len))
    step = max(1, 100_000 // max(history_len, tasks, 1))
    for first in range(0, count, step):
        chunk = ids[first : first + step]
        await pool.execute(
            "INSERT INTO supervisor_messages (supervisor_id, seq, message)"
            " SELECT i, m.seq, m.message::json FROM unnest($1::uuid[]) AS i"
            " CROSS JOIN jsonb_array_elements($2::text::jsonb) WITH ORDINALITY AS m(message, seq)",
            chunk,
            text,
        )
        if tasks:
            await pool.execute(
                "INSERT INTO supervisor_tasks (id, supervisor_id, status, spec, spawn_seq)"
                " SELECT gen_random_uuid(), i, 'succeeded', '{\"command\": \"true\"}', n"
                " FROM unnest($1::uuid[]) AS i CROSS JOIN generate_series(1, $2::int) AS n",
                chunk,
                tasks,
            )
    return ids


async def open_pool(dsn: str, size: int = 10) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        dsn, min_size=size, max_size=size, init=init_connection, server_settings=SERVER_SETTINGS
    )
    if pool is None:
        raise RuntimeError("asyncpg returned no pool")
    return pool


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


class ServerCpu:
    """CPU seconds used by a local PostgreSQL server's processes (all of them: backends,
    WAL writer, checkpointer). CPU time per event is far steadier than events/s on a
    shared machine. None when the server runs elsewhere (its processes are not ours to
    read)."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._tick = os.sysconf("SC_CLK_TCK")

    @classmethod
    async def of(cls, pool: asyncpg.Pool[Any]) -> ServerCpu:
        rows = await pool.fetch("SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL")
        return cls([row[0] for row in rows if _is_postgres(row[0])])

    def seconds(self) -> float | None:
        if not self._pids:
            return None
        total = 0
        for pid in self._pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a backend that ended: its time is lost, which is rare and small
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / self._tick
