"""Small builders for records and values used across tests, and the rows no event makes
(a faked owner, a corrupt state) written as another tool would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from daemon.models import PendingQuestion, QuestionType, SupervisorState


def now() -> datetime:
    return datetime.now(UTC)


def new_state(**overrides: Any) -> SupervisorState:
    moment = now()
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "contract_id": uuid.uuid4(),
        "task_id": uuid.uuid4(),
        "phase": "plan",
        "last_activity": moment,
        "created_at": moment,
        "updated_at": moment,
        "conversation_history": ({"role": "user", "content": "start"},),
    }
    values.update(overrides)
    return SupervisorState(**values)


def new_question(**overrides: Any) -> PendingQuestion:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "question": "Proceed to implementation?",
        "choices": ("yes", "no"),
        "context": "the plan is ready",
        "question_type": QuestionType.PHASE_CONFIRMATION,
        "asked_at": now(),
    }
    values.update(overrides)
    return PendingQuestion(**values)


async def own(pool: Any, daemon_id: str, *supervisor_ids: uuid.UUID, epoch: int = 1) -> None:
    """Register `daemon_id` with a live lease (when it is not) and make it the owner of
    `supervisor_ids` under `epoch`: what a claim leaves behind, for tests of the runner
    and the host, whose side effects are fenced by ownership."""
    await pool.execute(
        "INSERT INTO daemons (id, hostname, pid, version, lease_expires_at)"
        " VALUES ($1, 'h', 1, '0', now() + interval '1 minute') ON CONFLICT (id) DO NOTHING",
        daemon_id,
    )
    await pool.execute(
        "UPDATE supervisor_states SET owner_daemon_id = $1, owner_epoch = $2"
        " WHERE id = ANY ($3::uuid[])",
        daemon_id,
        epoch,
        list(supervisor_ids),
    )


async def corrupt(pool: Any, supervisor_id: uuid.UUID) -> None:
    """A state restoration must refuse: waiting_for_user without a question, and an
    awaited task never spawned. Another tool writing bad values (fault injection), not
    a write the daemon makes."""
    await pool.execute(
        "UPDATE supervisor_states SET state = 'waiting_for_user', phase = 'review',"
        " conversation_history = '[\"later\"]', pending_task_ids = ARRAY[$2::uuid]"
        " WHERE id = $1",
        supervisor_id,
        uuid.uuid4(),
    )


def new_message(n: int) -> dict[str, Any]:
    """The `n`th message of a conversation (user and assistant by turns)."""
    return {"role": "assistant" if n % 2 else "user", "content": f"message {n}"}


WEB_TOKEN = "test-token-0123456789abcdef"  # noqa: S105 - a test token

# Any JSON value, for fuzzing what agents may send.
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
