"""Every store operation against a real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from daemon.errors import ConflictError
from daemon.models import SupervisorStateKind
from daemon.store import Store
from tests.factories import new_question, new_state
from tests.queues import apply_answer, ask, spawn


async def _journal_length(pool: asyncpg.Pool[Any], supervisor_id: uuid.UUID) -> int:
    return int(
        await pool.fetchval("SELECT last_event_seq FROM supervisors WHERE id = $1", supervisor_id)
    )


async def test_save_full_creates_and_never_overwrites(
    store: Store, pool: asyncpg.Pool[Any]
) -> None:
    state = new_state(progress=10, spawned_task_ids=(uuid.uuid4(),))
    saved = await store.save_supervisor_state_full(state)
    assert saved.id == state.id
    assert saved.conversation_history == state.conversation_history
    assert saved.spawned_task_ids == state.spawned_task_ids
    assert saved.state is SupervisorStateKind.INITIALIZING
    assert (saved.owner_daemon_id, saved.owner_epoch) == (None, 0)
    assert await _journal_length(pool, state.id) == 0

    # A supervisor that exists changes only through its events: never overwritten.
    changed = state.evolve(progress=55, conversation_history=())
    with pytest.raises(ConflictError, match="exists already"):
        await store.save_supervisor_state_full(changed)
    assert await store.get_supervisor(state.id) == saved
    assert len(await store.list_supervisors()) == 1


async def test_get_for_restoration_none_when_missing(store: Store) -> None:
    assert await store.get_supervisor_state_for_restoration(uuid.uuid4()) is None
    state = await store.save_supervisor_state_full(new_state())
    loaded = await store.get_supervisor_state_for_restoration(state.id)
    assert loaded == state


async def test_questions_asked_and_answered_through_events(
    store: Store, pool: asyncpg.Pool[Any]
) -> None:
    """An answer that leaves no question pending ends waiting_for_user (apply_batch)."""
    state = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    first, second = new_question(), new_question(question="Which database?", choices=())
    await ask(pool, state.id, first, second)
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.pending_questions == (first, second)
    assert loaded.state is SupervisorStateKind.WAITING_FOR_USER

    await apply_answer(pool, state.id, first.id, "yes")
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.pending_questions == (second,)
    assert loaded.state is SupervisorStateKind.WAITING_FOR_USER

    await apply_answer(pool, state.id, second.id, "Postgres")
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.pending_questions == ()
    assert loaded.state is SupervisorStateKind.WORKING
    assert await _journal_length(pool, state.id) == 4  # each change journaled


async def test_get_supervisors_with_pending_questions(
    store: Store, pool: asyncpg.Pool[Any]
) -> None:
    asking = await store.save_supervisor_state_full(new_state())
    await store.save_supervisor_state_full(new_state())
    await ask(pool, asking.id, new_question())
    found = await store.get_supervisors_with_pending_questions()
    assert [s.id for s in found] == [asking.id]


async def test_validate_spawned_tasks_finds_missing_rows(
    store: Store, pool: asyncpg.Pool[Any]
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    real = await spawn(pool, state.id, spec={"command": "true"})
    ghost = uuid.uuid4()
    # An id recorded as spawned without a task row, as an older writer left it.
    await pool.execute(
        "UPDATE supervisors SET unrecorded_task_ids = unrecorded_task_ids || $2::uuid"
        " WHERE id = $1",
        state.id,
        ghost,
    )
    check = await store.validate_spawned_tasks(state.id)
    assert check.found == (real.id,)
    assert check.missing == (ghost,)
    assert not check.all_exist
