"""Records: camelCase JSON round trips (property-based) and strict decoding."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.models import (
    PendingQuestion,
    QuestionType,
    RestorationSource,
    StateRecoveryAction,
    StateValidationResult,
    SupervisorRestorationContext,
    SupervisorState,
    SupervisorStateKind,
)

aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
texts = st.text(max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)
uuids = st.uuids()

questions = st.builds(
    PendingQuestion,
    id=uuids,
    question=texts,
    choices=st.tuples(texts) | st.just(()),
    context=st.none() | texts,
    question_type=st.sampled_from(QuestionType),
    asked_at=aware_datetimes,
)
states = st.builds(
    SupervisorState,
    id=uuids,
    contract_id=uuids,
    task_id=uuids,
    conversation_history=st.lists(json_values, max_size=5).map(tuple),
    pending_task_ids=st.lists(uuids, max_size=3).map(tuple),
    phase=texts,
    last_activity=aware_datetimes,
    created_at=aware_datetimes,
    updated_at=aware_datetimes,
    state=st.sampled_from(SupervisorStateKind),
    current_activity=st.none() | texts,
    progress=st.integers(0, 100),
    error_message=st.none() | texts,
    spawned_task_ids=st.lists(uuids, max_size=3).map(tuple),
    pending_questions=st.lists(questions, max_size=3).map(tuple),
    restoration_count=st.integers(0, 1000),
    last_restored_at=st.none() | aware_datetimes,
    restoration_source=st.none() | st.sampled_from(RestorationSource),
    owner_daemon_id=st.none() | texts,
    owner_epoch=st.integers(0, 2**40),
    agent=st.none() | texts,
    history_length=st.integers(0, 100_000),
    spawned_task_count=st.integers(0, 100_000),
)


def _wire(value: dict[str, Any]) -> dict[str, Any]:
    """Through real JSON text, as it would cross a socket."""
    decoded: dict[str, Any] = json.loads(json.dumps(value))
    return decoded


@given(states)
def test_supervisor_state_round_trips(state: SupervisorState) -> None:
    assert SupervisorState.from_json(_wire(state.to_json())) == state


@given(questions)
def test_pending_question_round_trips(question: PendingQuestion) -> None:
    assert PendingQuestion.from_json(_wire(question.to_json())) == question


@given(
    st.builds(
        SupervisorRestorationContext,
        success=st.booleans(),
        previous_state=st.none() | st.sampled_from(SupervisorStateKind),
        conversation_history=st.lists(json_values, max_size=3).map(tuple),
        history_length=st.integers(0, 100_000),
        pending_questions=st.lists(questions, max_size=2).map(tuple),
        awaited_task_ids=st.lists(uuids, max_size=2).map(tuple),
        spawned_task_count=st.integers(0, 100_000),
        restoration_count=st.integers(0, 100),
        restoration_context_message=texts,
        warnings=st.lists(texts, max_size=2).map(tuple),
    )
)
def test_restoration_context_round_trips(context: SupervisorRestorationContext) -> None:
    assert SupervisorRestorationContext.from_json(_wire(context.to_json())) == context


@given(
    st.builds(
        StateValidationResult,
        is_valid=st.booleans(),
        issues=st.lists(texts, max_size=3).map(tuple),
        recovery_action=st.sampled_from(StateRecoveryAction),
    )
)
def test_validation_result_round_trips(result: StateValidationResult) -> None:
    assert StateValidationResult.from_json(_wire(result.to_json())) == result


def test_wire_names_are_camel_case() -> None:
    question = PendingQuestion(
        id=uuid.uuid4(),
        question="ok?",
        asked_at=datetime.now(UTC),
        question_type=QuestionType.CONTRACT_COMPLETE,
    )
    wire = question.to_json()
    assert set(wire) == {"id", "question", "choices", "context", "questionType", "askedAt"}
    assert wire["questionType"] == "contract_complete"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"questionType": "shouting"}, "questionType"),
        ({"askedAt": "2026-01-01T00:00:00"}, "time zone"),
        ({"id": 12}, "UUID"),
        ({"choices": "yes"}, "array"),
    ],
)
def test_bad_question_json_names_the_field(change: dict[str, Any], message: str) -> None:
    wire = PendingQuestion(id=uuid.uuid4(), question="ok?", asked_at=datetime.now(UTC)).to_json()
    wire.update(change)
    with pytest.raises(ValueError, match=message):
        PendingQuestion.from_json(wire)


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ValueError, match="'question'"):
        PendingQuestion.from_json({"id": str(uuid.uuid4()), "askedAt": "2026-01-01T00:00:00Z"})


def test_records_are_immutable() -> None:
    question = PendingQuestion(id=uuid.uuid4(), question="ok?", asked_at=datetime.now(UTC))
    with pytest.raises(AttributeError):
        setattr(question, "question", "changed")  # noqa: B010 - bypass the type checker on purpose
    assert question.evolve(question="changed").question == "changed"
