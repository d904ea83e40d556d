"""Retention: rows of supervisors finished long ago go; nothing else is touched."""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg

from daemon.store import Store
from tests.processes import run_cli
from tests.retention_cases import retention_population, row_counts


async def test_prune_cli_says_what_it_removed(dsn: str, pool: asyncpg.Pool[Any]) -> None:
    population = await retention_population(pool, Store(pool))
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}

    def cli(*args: str) -> Any:
        return anyio.to_thread.run_sync(lambda: run_cli("prune", *args, env=env))

    dry = await cli("--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would prune 2 supervisor(s): 14 messages,")
    assert (await row_counts(pool, population["completed_long_ago"]))["messages"] == 7
    done = await cli("--older-than", "30d", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["supervisors"], report["messages"], report["dry_run"]) == (2, 14, False)
    bad = await cli("--older-than", "a while")
    assert bad.returncode == 1
    assert "--older-than" in bad.stderr
    unsaid = await cli()
    assert unsaid.returncode == 1
    assert "SUPERVISOR_DAEMON_RETENTION_DAYS" in unsaid.stderr
