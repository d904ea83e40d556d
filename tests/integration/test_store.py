"""Every store operation against a real PostgreSQL."""

from __future__ import annotations

import uuid

import anyio
import pytest

from daemon.errors import NotFoundError, PermanentDatabaseError
from daemon.models import (
    RestorationSource,
    SupervisorStateKind,
    UpdateSupervisorStateRequest,
)
from daemon.store import Store
from tests.factories import new_question, new_state


async def test_save_full_inserts_then_overwrites(store: Store) -> None:
    state = new_state(progress=10)
    saved = await store.save_supervisor_state_full(state)
    assert saved.id == state.id
    assert saved.conversation_history == state.conversation_history
    assert saved.state is SupervisorStateKind.INITIALIZING

    changed = state.evolve(progress=55, state=SupervisorStateKind.WORKING, phase="implement")
    again = await store.save_supervisor_state_full(changed)
    assert (again.progress, again.state, again.phase) == (
        55,
        SupervisorStateKind.WORKING,
        "implement",
    )
    assert again.created_at == saved.created_at
    assert len(await store.list_supervisors()) == 1


async def test_get_for_restoration_none_when_missing(store: Store) -> None:
    assert await store.get_supervisor_state_for_restoration(uuid.uuid4()) is None
    state = await store.save_supervisor_state_full(new_state())
    loaded = await store.get_supervisor_state_for_restoration(state.id)
    assert loaded == state


async def test_update_detailed_state_leaves_unset_columns(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state(current_activity="planning"))
    updated = await store.update_supervisor_detailed_state(
        state.id, UpdateSupervisorStateRequest(state=SupervisorStateKind.WORKING, progress=40)
    )
    assert updated.state is SupervisorStateKind.WORKING
    assert updated.progress == 40
    assert updated.current_activity == "planning"
    assert updated.last_activity >= state.last_activity


async def test_update_detailed_state_rejects_bad_progress(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state())
    with pytest.raises(PermanentDatabaseError, match="CheckViolation"):
        await store.update_supervisor_detailed_state(
            state.id, UpdateSupervisorStateRequest(progress=101)
        )


async def test_unknown_supervisor_is_not_found(store: Store) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFoundError):
        await store.update_supervisor_phase(missing, "review")
    with pytest.raises(NotFoundError):
        await store.add_supervisor_spawned_task(missing, uuid.uuid4())
    with pytest.raises(NotFoundError):
        await store.mark_supervisor_restored(missing, RestorationSource.MANUAL)


async def test_add_spawned_task_is_idempotent_and_awaited(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state())
    task, quiet = uuid.uuid4(), uuid.uuid4()
    await store.add_supervisor_spawned_task(state.id, task)
    await store.add_supervisor_spawned_task(state.id, task)
    await store.add_supervisor_spawned_task(state.id, quiet, await_task=False)
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.spawned_task_ids == (task, quiet)
    assert loaded.pending_task_ids == (task,)


async def test_pending_question_add_and_remove(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    first, second = new_question(), new_question(question="Which database?", choices=())
    await store.add_supervisor_pending_question(state.id, first)
    await store.add_supervisor_pending_question(state.id, first)  # same id: once
    await store.add_supervisor_pending_question(state.id, second)
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.pending_questions == (first, second)
    assert loaded.state is SupervisorStateKind.WAITING_FOR_USER

    await store.remove_supervisor_pending_question(state.id, first.id)
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.pending_questions == (second,)
    assert loaded.state is SupervisorStateKind.WAITING_FOR_USER

    await store.remove_supervisor_pending_question(state.id, second.id)
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.pending_questions == ()
    assert loaded.state is SupervisorStateKind.WORKING

    with pytest.raises(NotFoundError, match="not pending"):
        await store.remove_supervisor_pending_question(state.id, second.id)


async def test_get_supervisors_with_pending_questions(store: Store) -> None:
    asking = await store.save_supervisor_state_full(new_state())
    await store.save_supervisor_state_full(new_state())
    await store.add_supervisor_pending_question(asking.id, new_question())
    found = await store.get_supervisors_with_pending_questions()
    assert [s.id for s in found] == [asking.id]


async def test_mark_restored_counts(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state())
    assert await store.mark_supervisor_restored(state.id, RestorationSource.DAEMON_RESTART) == 1
    assert await store.mark_supervisor_restored(state.id, RestorationSource.MANUAL) == 2
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.restoration_source is RestorationSource.MANUAL
    assert loaded.last_restored_at is not None


async def test_validate_spawned_tasks_finds_missing_rows(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state())
    real = await store.create_task(state.id, spec={"command": "true"})
    ghost = uuid.uuid4()
    await store.add_supervisor_spawned_task(state.id, real.id)
    await store.add_supervisor_spawned_task(state.id, ghost)
    check = await store.validate_spawned_tasks(state.id)
    assert check.found == (real.id,)
    assert check.missing == (ghost,)
    assert not check.all_exist


async def test_update_phase_and_checkpoint(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state())
    moved = await store.update_supervisor_phase(state.id, "implement")
    assert moved.phase == "implement"
    checkpoint_id = await store.save_checkpoint(state.id)
    latest = await store.latest_checkpoint(state.id)
    assert latest is not None
    assert latest["id"] == checkpoint_id
    assert latest["phase"] == "implement"
    assert latest["snapshot"]["id"] == str(state.id)


async def test_heartbeat_updates_last_activity_only_when_asked(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state(progress=5))
    await store.update_supervisor_heartbeat_state(state.id)
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert loaded.progress == 5
    assert loaded.last_activity > state.last_activity
    await store.update_supervisor_heartbeat_state(
        state.id, progress=70, state=SupervisorStateKind.WORKING
    )
    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert (loaded.progress, loaded.state) == (70, SupervisorStateKind.WORKING)


async def test_fifty_concurrent_writers_lose_nothing(store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state())
    task_ids = [uuid.uuid4() for _ in range(50)]
    questions = [new_question(question=f"q{i}") for i in range(50)]

    async def writer(i: int) -> None:
        await store.add_supervisor_spawned_task(state.id, task_ids[i])
        await store.add_supervisor_pending_question(state.id, questions[i])

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(writer, i)

    loaded = await store.get_supervisor(state.id)
    assert loaded is not None
    assert sorted(loaded.spawned_task_ids) == sorted(task_ids)
    assert sorted(loaded.pending_task_ids) == sorted(task_ids)
    assert {q.id for q in loaded.pending_questions} == {q.id for q in questions}
    assert len(loaded.pending_questions) == 50
