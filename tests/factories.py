"""Small builders for records used across tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

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
