"""Retention: rows of supervisors finished long ago go; nothing else is touched."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import anyio
import asyncpg
import pytest

from daemon import events
from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.models import SupervisorStateKind
from daemon.queue import PersistenceQueue
from daemon.runtime.retention import parse_age, prune, prune_forever
from daemon.store import EventStore, Store
from tests.factories import new_question, new_state
from tests.test_cli import run_cli
from tests.test_queue import running

ROWS = {
    "messages": "supervisor_messages",
    "journal": "supervisor_events",
    "tasks": "supervisor_tasks",
    "checkpoints": "supervisor_checkpoints",
}


async def _counts(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> dict[str, int]:
    return {
        name: await pool.fetchval(f"SELECT count(*) FROM {table} WHERE supervisor_id = $1", sid)
        for name, table in ROWS.items()
    }


async def _supervisor(
    pool: asyncpg.Pool[Any], store: Store, final: str | None, *, days_ago: float
) -> uuid.UUID:
    """A supervisor with 7 messages, 3 tasks, 1 checkpoint and a journal, ended in
    `final` (None: still working), last changed `days_ago` days ago."""
    sid = (await store.save_supervisor_state_full(new_state(conversation_history=()))).id
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(events.state_changed(sid, SupervisorStateKind.WORKING))
        for n in range(7):
            await queue.submit(events.message_appended(sid, {"n": n}))
        for _ in range(3):
            await queue.submit(events.task_spawned(sid, uuid.uuid4(), awaited=False))
        await queue.submit(events.phase_changed(sid, "implement"))
        if final == "completed":
            await queue.submit(events.completed(sid))
        elif final == "failed":
            await queue.submit(events.failed(sid, "gave up"))
    await pool.execute(
        "UPDATE supervisors SET updated_at = now() - make_interval(days => $2) WHERE id = $1",
        sid,
        days_ago,
    )
    return sid


@pytest.fixture
async def population(pool: asyncpg.Pool[Any], store: Store) -> dict[str, uuid.UUID]:
    found = {
        "completed_long_ago": await _supervisor(pool, store, "completed", days_ago=40),
        "failed_long_ago": await _supervisor(pool, store, "failed", days_ago=31),
        "completed_recently": await _supervisor(pool, store, "completed", days_ago=5),
        "running_long_idle": await _supervisor(pool, store, None, days_ago=90),
        "failed_with_a_question": await _supervisor(pool, store, "failed", days_ago=60),
    }
    asking = found["failed_with_a_question"]
    await store.add_supervisor_pending_question(asking, new_question())
    await pool.execute(
        "UPDATE supervisors SET state = 'failed', updated_at = now() - interval '60 days'"
        " WHERE id = $1",
        asking,
    )
    return found


async def test_prune_deletes_only_the_rows_of_supervisors_finished_long_ago(
    pool: asyncpg.Pool[Any], population: dict[str, uuid.UUID]
) -> None:
    before = {name: await _counts(pool, sid) for name, sid in population.items()}
    assert all(counts["messages"] == 7 for counts in before.values())

    dry = await prune(pool, timedelta(days=30), dry_run=True)
    assert (dry.supervisors, dry.messages, dry.tasks, dry.checkpoints) == (2, 14, 6, 2)
    assert dry.journal_segments >= 2
    assert {name: await _counts(pool, sid) for name, sid in population.items()} == before

    report = await prune(pool, timedelta(days=30), batch_rows=2)  # many small statements
    assert (report.supervisors, report.messages, report.tasks, report.checkpoints) == (
        2,
        14,
        6,
        2,
    )
    assert (report.journal_segments, report.journal_events) == (
        dry.journal_segments,
        dry.journal_events,
    )
    for name, sid in population.items():
        counts = await _counts(pool, sid)
        if name in ("completed_long_ago", "failed_long_ago"):
            assert counts == dict.fromkeys(ROWS, 0), name
            row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", sid)
            assert row is not None
            assert row["state"] in ("completed", "failed")
            assert (row["conversation_history"], row["spawned_task_ids"]) == ([], [])
        else:
            assert counts == before[name], name
    # The question is still there to be answered.
    asking = await Store(pool).get_supervisor(population["failed_with_a_question"])
    assert asking is not None
    assert len(asking.pending_questions) == 1
    # Once pruned, a supervisor is not counted again.
    again = await prune(pool, timedelta(days=30))
    assert again.supervisors == 0


async def test_a_running_daemon_prunes_on_a_clock(
    pool: asyncpg.Pool[Any], population: dict[str, uuid.UUID]
) -> None:
    gone, kept = population["completed_long_ago"], population["completed_recently"]
    before = await _counts(pool, kept)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: prune_forever(pool, 30, interval_s=0.05))
        with anyio.fail_after(30):
            while (await _counts(pool, gone))["messages"]:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert await _counts(pool, kept) == before


def test_ages_parse_or_fail_clearly() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("2") == timedelta(days=2)
    for bad in ("30 days", "-1d", "0d", "d"):
        with pytest.raises(ValueError, match=r"duration|longer than zero"):
            parse_age(bad)


async def test_prune_cli_says_what_it_removed(
    dsn: str, pool: asyncpg.Pool[Any], population: dict[str, uuid.UUID]
) -> None:
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}

    def cli(*args: str) -> Any:
        return anyio.to_thread.run_sync(lambda: run_cli("prune", *args, env=env))

    dry = await cli("--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would prune 2 supervisor(s): 14 messages,")
    assert (await _counts(pool, population["completed_long_ago"]))["messages"] == 7
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


def test_settings_for_tails_and_retention() -> None:
    assert (load_settings({}).history_tail, load_settings({}).retention_days) == (50, None)
    settings = load_settings(
        {"SUPERVISOR_DAEMON_HISTORY_TAIL": "20", "SUPERVISOR_DAEMON_RETENTION_DAYS": "30"}
    )
    assert (settings.history_tail, settings.retention_days) == (20, 30.0)
    for env, name in (
        ({"SUPERVISOR_DAEMON_HISTORY_TAIL": "0"}, "HISTORY_TAIL"),
        ({"SUPERVISOR_DAEMON_RETENTION_DAYS": "-3"}, "RETENTION_DAYS"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings(env)
