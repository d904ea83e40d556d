"""Retention: rows of supervisors finished long ago go; nothing else is touched."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.config import load_settings
from daemon.errors import ConfigError, InvalidInputError
from daemon.runtime.retention import parse_age, prune, prune_forever
from daemon.services import Services
from daemon.store import RetentionStore, Store, Stores
from tests.retention_cases import RETAINED_ROWS, retention_population, row_counts


@pytest.fixture
async def population(pool: asyncpg.Pool[Any], store: Store) -> dict[str, uuid.UUID]:
    return await retention_population(pool, store)


async def test_prune_deletes_only_the_rows_of_supervisors_finished_long_ago(
    pool: asyncpg.Pool[Any], population: dict[str, uuid.UUID]
) -> None:
    before = {name: await row_counts(pool, sid) for name, sid in population.items()}
    assert all(counts["messages"] == 7 for counts in before.values())

    dry = await prune(RetentionStore(pool), timedelta(days=30), dry_run=True)
    assert (dry.supervisors, dry.messages, dry.tasks, dry.checkpoints) == (2, 14, 6, 2)
    assert dry.journal_segments >= 2
    assert {name: await row_counts(pool, sid) for name, sid in population.items()} == before

    report = await prune(
        RetentionStore(pool), timedelta(days=30), batch_rows=2
    )  # many small statements
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
        counts = await row_counts(pool, sid)
        if name in ("completed_long_ago", "failed_long_ago"):
            assert counts == dict.fromkeys(RETAINED_ROWS, 0), name
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
    again = await prune(RetentionStore(pool), timedelta(days=30))
    assert again.supervisors == 0


async def test_a_running_daemon_prunes_on_a_clock(
    pool: asyncpg.Pool[Any], population: dict[str, uuid.UUID]
) -> None:
    gone, kept = population["completed_long_ago"], population["completed_recently"]
    before = await row_counts(pool, kept)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: prune_forever(RetentionStore(pool), 30, interval_s=0.05))
        with anyio.fail_after(30):
            while (await row_counts(pool, gone))["messages"]:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert await row_counts(pool, kept) == before


async def test_the_prune_command_takes_an_age_or_the_configured_retention(
    pool: asyncpg.Pool[Any], population: dict[str, uuid.UUID]
) -> None:
    configured = Services(Stores.over(pool), retention_days=30)
    age, dry = await configured.prune(dry_run=True)
    assert (age, dry.supervisors, dry.dry_run) == (timedelta(days=30), 2, True)
    age, dry = await configured.prune("1000d", dry_run=True)  # an age said wins
    assert (age, dry.supervisors) == (timedelta(days=1000), 0)

    unconfigured = Services(Stores.over(pool))
    with pytest.raises(InvalidInputError, match="SUPERVISOR_DAEMON_RETENTION_DAYS"):
        await unconfigured.prune()
    with pytest.raises(InvalidInputError, match="--older-than: 'a while' is not a duration"):
        await unconfigured.prune("a while")
    refused = await row_counts(pool, population["completed_long_ago"])
    assert refused["messages"] == 7  # nothing was deleted
    age, report = await unconfigured.prune("30d")
    assert (age, report.supervisors, report.messages) == (timedelta(days=30), 2, 14)


def test_ages_parse_or_fail_clearly() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("2") == timedelta(days=2)
    for bad in ("30 days", "-1d", "0d", "d"):
        with pytest.raises(ValueError, match=r"duration|longer than zero"):
            parse_age(bad)


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
