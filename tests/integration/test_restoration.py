"""Restoration, step by step and rule by rule, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.models import (
    PendingQuestion,
    QuestionType,
    RestorationSource,
    StateRecoveryAction,
    SupervisorStateKind,
)
from daemon.restoration import context as restoration_context
from daemon.restoration import plan as restoration
from daemon.restoration import validation
from daemon.restoration.records import CrashLoopGuard, RestorationInput, RestorationOutcome
from daemon.restoration.run import restore_manually
from daemon.services import Services
from daemon.store import DaemonRegistry, RestorationStore, Store, Stores
from tests.factories import corrupt, new_question, new_state
from tests.queues import ask, restore_outcomes, spawn

GOLDEN = Path(__file__).parent / "golden"


async def _raw(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM supervisor_states WHERE id = $1", sid
    )
    assert row is not None
    return row


# -- validation rules (pure) ------------------------------------------------------------


def _valid_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.uuid4(), "state": "working", "phase": "plan", "progress": 10,
        "error_message": None, "pending_questions": [], "conversation_history": [],
        "spawned_task_ids": [], "pending_task_ids": [],
    }  # fmt: skip
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("changes", "issue"),
    [
        ({"state": "sleeping"}, "unknown state 'sleeping'"),
        ({"phase": "party"}, "unknown phase 'party'"),
        ({"progress": 140}, "progress 140 is outside 0-100"),
        ({"progress": -1}, "progress -1 is outside 0-100"),
        ({"state": "failed"}, "state failed has no error message"),
        ({"state": "blocked", "error_message": ""}, "state blocked has no error message"),
        ({"state": "waiting_for_user"}, "waiting_for_user with no pending question"),
        ({"pending_questions": {"not": "a list"}}, "pending_questions is not a JSON array"),
        ({"pending_questions": [{"id": "x"}]}, "pending question 0 does not parse"),
        ({"conversation_history": {"role": "user"}}, "conversation_history is not a JSON"),
        ({"pending_task_ids": [uuid.UUID(int=1)]}, "awaited tasks not spawned"),
        ({"spawned_task_ids": [uuid.UUID(int=2)]}, "spawned tasks that do not exist"),
        ({"spawned_task_ids": ["nope"]}, "not a task id"),
    ],
)
def test_each_validation_rule_names_its_issue(changes: dict[str, Any], issue: str) -> None:
    issues = validation.validate(_valid_row(**changes), tasks={})
    assert any(issue in found for found in issues), issues


def test_a_valid_row_has_no_issues() -> None:
    task = uuid.uuid4()
    row = _valid_row(spawned_task_ids=[task], pending_task_ids=[task])
    assert validation.validate(row, tasks={task: "running"}) == []


def test_every_problem_is_named_not_just_the_first() -> None:
    issues = validation.validate(_valid_row(state="nope", phase="nope", progress=500), {})
    assert len(issues) == 3


# -- protocol steps (real PostgreSQL) ---------------------------------------------------


async def test_valid_state_proceeds_and_is_recorded(pool: asyncpg.Pool[Any], store: Store) -> None:
    state = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    outcomes = await restore_outcomes(pool)
    outcome = outcomes[state.id]
    assert outcome.outcome == "restored"
    assert outcome.action is StateRecoveryAction.PROCEED
    assert outcome.validation.is_valid
    assert outcome.context.conversation_history == state.conversation_history
    assert outcome.context.restoration_count == 1
    row = await _raw(pool, state.id)
    assert row["restoration_count"] == 1
    assert row["restoration_source"] == "daemon_restart"
    assert row["last_restored_at"] is not None
    assert row["owner_daemon_id"] == "d1"
    assert row["state"] == "working"


async def test_unknown_supervisor_is_reported_not_invented(pool: asyncpg.Pool[Any]) -> None:
    assert await restore_manually(RestorationStore(pool), uuid.uuid4()) is None


async def _checkpoint(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> None:
    """A checkpoint as one written before positions: copies in its snapshot."""
    await pool.execute(
        "INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot)"
        " SELECT id, phase, to_jsonb(s) FROM supervisor_states s WHERE id = $1",
        sid,
    )


async def test_invalid_state_falls_back_to_the_last_valid_checkpoint(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = await store.save_supervisor_state_full(
        new_state(state=SupervisorStateKind.WORKING, phase="implement", progress=40)
    )
    await _checkpoint(pool, state.id)
    await corrupt(pool, state.id)
    outcome = (await restore_outcomes(pool))[state.id]
    assert outcome.action is StateRecoveryAction.USE_CHECKPOINT
    assert not outcome.validation.is_valid
    assert len(outcome.validation.issues) == 2
    row = await _raw(pool, state.id)
    assert (row["state"], row["phase"], row["progress"]) == ("working", "implement", 40)
    assert row["conversation_history"] == list(state.conversation_history)
    assert row["pending_task_ids"] == []


async def test_invalid_state_without_checkpoint_starts_fresh(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    await corrupt(pool, state.id)
    outcome = (await restore_outcomes(pool))[state.id]
    assert outcome.action is StateRecoveryAction.START_FRESH
    row = await _raw(pool, state.id)
    assert (row["state"], row["phase"], row["progress"]) == ("initializing", "research", 0)
    assert row["conversation_history"] == []
    assert row["restoration_count"] == 1


async def test_unsafe_fresh_start_parks_for_an_operator(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    running_task = await spawn(pool, state.id, spec={"command": "sleep 100"})
    # Left running by a daemon that died (only an owner starts a task).
    await pool.execute(
        "UPDATE supervisor_tasks SET status = 'running' WHERE id = $1", running_task.id
    )
    await corrupt(pool, state.id)
    outcome = (await restore_outcomes(pool))[state.id]
    assert outcome.outcome == "blocked"
    assert outcome.action is StateRecoveryAction.MANUAL_INTERVENTION
    row = await _raw(pool, state.id)
    assert row["state"] == "blocked"
    assert "tasks still running" in row["error_message"]
    assert row["restoration_count"] == 0


async def test_pending_questions_are_redelivered_with_their_ids(
    pool: asyncpg.Pool[Any],
    store: Store,
    dsn: str,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    question = new_question()
    await ask(pool, state.id, question)
    listener = await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("supervisor_questions", lambda *args: received.put_nowait(args[3]))
    try:
        outcome = (await restore_outcomes(pool))[state.id]
        payload = await asyncio.wait_for(received.get(), timeout=10)
    finally:
        await listener.close()
    assert [q.id for q in outcome.redeliver] == [question.id]
    notified = json.loads(payload)
    assert (notified["questionId"], notified["redelivery"]) == (str(question.id), True)
    delivered = [line for line in captured_logs if line["event"] == "question.delivered"]
    assert [line["question_id"] for line in delivered] == [str(question.id)]
    row = await _raw(pool, state.id)
    assert row["state"] == "waiting_for_user"


async def test_answers_given_while_down_are_applied_not_redelivered(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    answered, open_one = new_question(), new_question(question="And the tests?")
    await ask(pool, state.id, answered, open_one)
    await Services(Stores.over(pool)).answer(answered.id, "yes")  # no daemon runs
    outcome = (await restore_outcomes(pool))[state.id]
    assert [q.id for q in outcome.redeliver] == [open_one.id]
    assert outcome.applied_answers == (answered.id,)
    assert "-> yes" in outcome.context.restoration_context_message
    row = await _raw(pool, state.id)
    assert [q["id"] for q in row["pending_questions"]] == [str(open_one.id)]
    applied = await pool.fetchval(
        "SELECT applied_at FROM question_answers WHERE question_id = $1", answered.id
    )
    assert applied is not None


async def test_awaited_tasks_are_rechecked(pool: asyncpg.Pool[Any], store: Store) -> None:
    state = await store.save_supervisor_state_full(
        new_state(state=SupervisorStateKind.WAITING_FOR_TASKS)
    )
    done = await spawn(pool, state.id, awaited=True)
    busy = await spawn(pool, state.id, awaited=True)
    await Services(Stores.over(pool)).complete_task(done.id)
    # Left running by a daemon that died (only an owner starts a task).
    await pool.execute("UPDATE supervisor_tasks SET status = 'running' WHERE id = $1", busy.id)
    outcome = (await restore_outcomes(pool))[state.id]
    assert outcome.context.awaited_task_ids == (busy.id,)
    assert f"{done.id}: succeeded (finished while you were down)" in (
        outcome.context.restoration_context_message
    )
    row = await _raw(pool, state.id)
    assert row["pending_task_ids"] == [busy.id]
    assert row["state"] == "waiting_for_tasks"


async def test_crash_loop_parks_and_manual_restore_unparks(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    guard = CrashLoopGuard(max_restorations=3, window=timedelta(minutes=5))
    for expected in (1, 2, 3):
        outcome = (await restore_outcomes(pool, guard=guard))[state.id]
        assert outcome.outcome == "restored"
        assert (await _raw(pool, state.id))["restoration_count"] == expected
    outcome = (await restore_outcomes(pool, guard=guard))[state.id]
    assert outcome.outcome == "blocked"
    row = await _raw(pool, state.id)
    assert row["state"] == "blocked"
    assert "crash loop" in row["error_message"]
    assert f"supervisor-daemon restore {state.id}" in row["error_message"]
    assert state.id not in await restore_outcomes(pool, guard=guard)  # parked stays parked

    manual = await restore_manually(RestorationStore(pool), state.id, guard=guard)
    assert manual is not None
    assert manual.outcome == "restored"
    row = await _raw(pool, state.id)
    assert (row["state"], row["error_message"]) == ("working", None)
    assert row["restoration_source"] == "manual"
    assert row["restoration_count"] == 4


async def test_orphans_of_a_dead_daemon_are_taken_over(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    registry = DaemonRegistry(pool)
    await registry.register("dead", hostname="h", pid=1, version="0", lease_s=30)
    await registry.register("alive", hostname="h", pid=2, version="0", lease_s=30)
    await pool.execute(
        "UPDATE daemons SET lease_expires_at = now() - interval '1 minute' WHERE id = 'dead'"
    )
    orphan = await store.save_supervisor_state_full(new_state())
    kept = await store.save_supervisor_state_full(new_state())
    await pool.execute(
        "UPDATE supervisor_states SET owner_daemon_id = 'dead' WHERE id = $1", orphan.id
    )
    await pool.execute(
        "UPDATE supervisor_states SET owner_daemon_id = 'alive' WHERE id = $1", kept.id
    )
    outcomes = await restore_outcomes(pool, daemon_id="d1")
    assert set(outcomes) == {orphan.id}
    row = await _raw(pool, orphan.id)
    assert (row["owner_daemon_id"], row["restoration_source"]) == ("d1", "task_reassignment")
    assert row["owner_epoch"] == 1


async def test_one_failure_never_stops_the_others(
    pool: asyncpg.Pool[Any], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [(await store.save_supervisor_state_full(new_state())).id for _ in range(5)]
    doomed = ids[2]
    real_plan = restoration.plan

    def flaky(item: RestorationInput, guard: CrashLoopGuard) -> RestorationOutcome:
        if item.row["id"] == doomed:
            raise RuntimeError("disk on fire")
        return real_plan(item, guard)

    monkeypatch.setattr(restoration, "plan", flaky)
    outcomes = await restore_outcomes(pool)
    assert outcomes[doomed].outcome == "failed"
    assert all(outcomes[i].outcome == "restored" for i in ids if i != doomed)
    row = await _raw(pool, doomed)
    assert row["state"] == "blocked"
    assert "disk on fire" in row["error_message"]


async def test_summary_is_logged(
    pool: asyncpg.Pool[Any], store: Store, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    for _ in range(3):
        await store.save_supervisor_state_full(new_state())
    await restore_outcomes(pool)
    summaries = [line for line in captured_logs if line["event"] == "restoration.summary"]
    assert len(summaries) == 1
    assert summaries[0]["supervisors"] == 3
    assert summaries[0]["actions"] == {"proceed": 3}
    restored = [line for line in captured_logs if line["event"] == "supervisor.restored"]
    assert len(restored) == 3
    assert {line["source"] for line in restored} == {"daemon_restart"}


# -- the context message ------------------------------------------------------------------


def test_context_message_matches_golden_file() -> None:
    asked = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    pending = PendingQuestion(
        id=uuid.UUID(int=11),
        question="Ship the plan?",
        choices=("yes", "no"),
        question_type=QuestionType.PHASE_CONFIRMATION,
        asked_at=asked,
    )
    answered = PendingQuestion(id=uuid.UUID(int=12), question="Which database?", asked_at=asked)
    message = restoration_context.context_message(
        supervisor_id=uuid.UUID(int=1), source=RestorationSource.DAEMON_RESTART, count=3,
        previous_state="waiting_for_user", state="waiting_for_user", phase="plan",
        progress=35, last_activity="drafting the plan",
        action=StateRecoveryAction.USE_CHECKPOINT, pending=[pending],
        answered=[(answered, {"answer": "PostgreSQL"})],
        awaited={uuid.UUID(int=21): "succeeded", uuid.UUID(int=22): "running"},
        warnings=["stored state invalid; restored the checkpoint of phase plan"],
        issues=["progress 140 is outside 0-100"],
    )  # fmt: skip
    golden = GOLDEN / "context_message.txt"
    assert message == golden.read_text()
