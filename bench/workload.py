"""The save points a long-running supervisor makes, as the benchmarks replay them."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

from daemon.models import PendingQuestion, QuestionType, SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.events import Event

KINDS = ["task", "ask", "answer", "phase", "activity", "state", "message"]
# A long-running supervisor mostly reports activity and state and spawns tasks; it
# asks now and then and changes phase rarely (each phase change stores a checkpoint).
WEIGHTS = [25, 8, 8, 1, 34, 20, 4]
PHASES = ["plan", "implement", "review"]
AWAITED_TASKS = 4  # a supervisor waits for its tasks once it has spawned this many
STATES = [
    SupervisorStateKind.WORKING,
    SupervisorStateKind.WAITING_FOR_TASKS,
    SupervisorStateKind.IDLE,
]


class Workload:
    """Per-supervisor event generator: the same sequence logic for every method."""

    def __init__(self, supervisor_id: uuid.UUID, seed: int) -> None:
        self.sid = supervisor_id
        self.rng = random.Random(seed)
        self.open_questions: list[uuid.UUID] = []
        self.awaited_tasks: list[str] = []
        self.n = 0
        self.kinds = self.rng.choices(KINDS, WEIGHTS, k=256)

    def next_kind(self) -> str:
        kind = self.kinds[self.n % 256]
        self.n += 1
        if kind == "answer" and not self.open_questions:
            return "activity"
        if kind == "task" and len(self.awaited_tasks) >= AWAITED_TASKS:
            return "collect"
        if kind == "ask" and len(self.open_questions) >= 2:
            return "answer"
        return kind

    def event(self) -> Event:  # noqa: PLR0911 - one return per event kind
        kind = self.next_kind()
        sid = self.sid
        if kind == "task":
            task_id = events.new_id()
            self.awaited_tasks.append(task_id)
            return events.task_spawned(sid, task_id, spec={"command": "true"})
        if kind == "collect":
            # As the daemon does when a wait for tasks returns: they are no longer
            # awaited (otherwise pending_task_ids would only ever grow).
            collected, self.awaited_tasks = self.awaited_tasks, []
            return events.tasks_collected(sid, collected)
        if kind == "ask":
            question = PendingQuestion(
                id=uuid.uuid4(),
                question="Proceed?",
                choices=("yes", "no"),
                question_type=QuestionType.PHASE_CONFIRMATION,
                asked_at=_NOW,
            )
            self.open_questions.append(question.id)
            return events.question_asked(sid, question)
        if kind == "answer":
            return events.question_answered(sid, self.open_questions.pop(0), "yes")
        if kind == "phase":
            return events.phase_changed(sid, PHASES[self.n % 3])
        if kind == "activity":
            return events.activity_reported(sid, f"step {self.n}")
        if kind == "state":
            return events.state_changed(sid, STATES[self.n % 3])
        return events.message_appended(sid, {"role": "assistant", "content": f"note {self.n}"})


_NOW = datetime.now(UTC)


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
