"""The statement-level checks that replaced the foreign keys to supervisor_states
(migrations/20260701000000_set_based_supervisor_checks.sql): same guarantees, one query
per statement instead of one per row."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from daemon.store import Store
from tests.factories import new_state

pytestmark = pytest.mark.asyncio

INSERT_TASKS = (
    "INSERT INTO supervisor_tasks (id, supervisor_id) SELECT unnest($1::uuid[]), unnest($2::uuid[])"
)


async def _supervisor(store: Store) -> uuid.UUID:
    state = new_state()
    await store.save_supervisor_state_full(state)
    return state.id


async def _count(pool: asyncpg.Pool[Any], table: str, supervisor_id: uuid.UUID) -> int:
    value = await pool.fetchval(
        f"SELECT count(*) FROM {table} WHERE supervisor_id = $1",
        supervisor_id,
    )
    return int(value)


async def test_rows_of_a_missing_supervisor_are_refused_with_the_foreign_key_error(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    known, unknown = await _supervisor(store), uuid.uuid4()
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await pool.execute(
            INSERT_TASKS, [uuid.uuid4(), uuid.uuid4()], [known, unknown]
        )  # one good row, one bad: the whole statement fails
    assert str(unknown) in (caught.value.detail or "")
    assert await _count(pool, "supervisor_tasks", known) == 0
    for statement, args in [
        (
            "INSERT INTO question_answers (question_id, supervisor_id, answer)"
            " VALUES ($1, $2, 'yes')",
            (uuid.uuid4(), unknown),
        ),
        (
            "INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot)"
            " VALUES ($1, 'plan', '{}')",
            (unknown,),
        ),
    ]:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await pool.execute(statement, *args)


async def test_moving_a_row_to_a_missing_supervisor_is_refused(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    known, task = await _supervisor(store), uuid.uuid4()
    await pool.execute(INSERT_TASKS, [task], [known])
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            "UPDATE supervisor_tasks SET supervisor_id = $2 WHERE id = $1", task, uuid.uuid4()
        )
    # An update that keeps the supervisor passes.
    await pool.execute("UPDATE supervisor_tasks SET status = 'running' WHERE id = $1", task)


async def test_deleting_a_supervisor_deletes_its_rows(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    gone, kept = await _supervisor(store), await _supervisor(store)
    for supervisor_id in (gone, kept):
        await pool.execute(INSERT_TASKS, [uuid.uuid4()], [supervisor_id])
        await pool.execute(
            "INSERT INTO question_answers (question_id, supervisor_id, answer)"
            " VALUES ($1, $2, 'yes')",
            uuid.uuid4(),
            supervisor_id,
        )
        await pool.execute(
            "INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot)"
            " VALUES ($1, 'plan', '{}')",
            supervisor_id,
        )
    await pool.execute("DELETE FROM supervisor_states WHERE id = $1", gone)
    for table in ("supervisor_tasks", "question_answers", "supervisor_checkpoints"):
        assert await _count(pool, table, gone) == 0, table
        assert await _count(pool, table, kept) == 1, table


async def test_a_supervisor_id_never_changes(pool: asyncpg.Pool[Any], store: Store) -> None:
    supervisor_id = await _supervisor(store)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            "UPDATE supervisor_states SET id = $2 WHERE id = $1", supervisor_id, uuid.uuid4()
        )


async def test_a_supervisor_with_rows_being_written_cannot_be_deleted_meanwhile(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    """As with a foreign key, the writer holds the supervisor (KEY SHARE) until it ends."""
    supervisor_id = await _supervisor(store)
    async with pool.acquire() as writer, pool.acquire() as deleter, writer.transaction():
        await writer.execute(INSERT_TASKS, [uuid.uuid4()], [supervisor_id])
        await deleter.execute("SET lock_timeout = '200ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await deleter.execute("DELETE FROM supervisor_states WHERE id = $1", supervisor_id)
    assert await _count(pool, "supervisor_tasks", supervisor_id) == 1
