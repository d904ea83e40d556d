"""The restoration context message an agent is handed (pure): what happened, where the
supervisor stands, and what to do next.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from daemon.models import (
    FINISHED_TASK_STATES,
    PendingQuestion,
    RestorationSource,
    StateRecoveryAction,
)

_WHY = {
    RestorationSource.DAEMON_RESTART: "the daemon restarted",
    RestorationSource.TASK_REASSIGNMENT: "the daemon that ran you stopped answering and "
    "another took over",
    RestorationSource.MANUAL: "an operator asked for it",
}
_HOW = {
    StateRecoveryAction.PROCEED: "Your saved state was valid and is restored as it was.",
    StateRecoveryAction.USE_CHECKPOINT: "Your saved state was invalid; you resume from the "
    "last valid checkpoint, so work after it may be missing.",
    StateRecoveryAction.START_FRESH: "Your saved state was invalid and no checkpoint was "
    "usable; you start fresh from the first phase.",
    StateRecoveryAction.MANUAL_INTERVENTION: "You were parked for an operator.",
}


def context_message(
    *,
    supervisor_id: uuid.UUID,
    source: RestorationSource,
    count: int,
    previous_state: str | None,
    state: str,
    phase: str,
    progress: int,
    last_activity: str | None,
    action: StateRecoveryAction,
    pending: Sequence[PendingQuestion],
    answered: Sequence[tuple[PendingQuestion, Mapping[str, Any]]],
    awaited: Mapping[uuid.UUID, str],
    warnings: Sequence[str],
    issues: Sequence[str],
) -> str:
    """Plain text an LLM agent can act on; stable layout (golden-file tested)."""
    times = "time" if count == 1 else "times"
    lines = [
        f"You are supervisor {supervisor_id}, restored because {_WHY[source]}.",
        f"This is restoration number {count} ({count} {times} in total).",
        _HOW[action],
        "",
        f"State: {state} (before: {previous_state or 'unknown'})",
        f"Phase: {phase}",
        f"Progress: {progress}%",
        f"Last activity: {last_activity or 'none recorded'}",
    ]
    if issues:
        lines += ["", "Problems found in the saved state:"]
        lines += [f"- {issue}" for issue in issues]
    lines += ["", f"Questions still waiting for an answer ({len(pending)}):"]
    if pending:
        for q in pending:
            choices = f" Choices: {', '.join(q.choices)}." if q.choices else ""
            lines.append(f"- [{q.id}] ({q.question_type.value}) {q.question}{choices}")
        lines.append("They have been delivered again; wait for their answers.")
    else:
        lines.append("- none")
    if answered:
        lines += ["", "Answers that arrived while you were down (already applied):"]
        lines += [f"- [{q.id}] {q.question} -> {a['answer']}" for q, a in answered]
    lines += ["", f"Tasks you were waiting for ({len(awaited)}):"]
    if awaited:
        for task_id, status in awaited.items():
            note = " (finished while you were down)" if status in FINISHED_TASK_STATES else ""
            lines.append(f"- {task_id}: {status}{note}")
    else:
        lines.append("- none")
    if warnings:
        lines += ["", "Warnings:"]
        lines += [f"- {w}" for w in warnings]
    lines += ["", "Resume from this state."]
    return "\n".join(lines) + "\n"
