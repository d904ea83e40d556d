"""The API an agent drives a supervisor with.

Every call that changes state goes through the persistence queue and returns once it
is durable (progress and heartbeats excepted: they are coalesced). Events carry the
supervisor's ownership epoch, so a daemon that lost the supervisor cannot write over
its new owner. Arguments are checked before anything is recorded (daemon.limits): a bad
one raises InvalidInputError (a ValueError) and leaves the supervisor as it was.

Nothing a supervisor holds grows with its age: its state carries the length of its
history and the number of tasks it spawned, not the messages or the ids (those are
rows in the database); `read_history` pages the conversation from there.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from daemon import limits
from daemon.errors import InvalidInputError
from daemon.models import (
    HistoryMessage,
    PendingQuestion,
    QuestionType,
    SupervisorRestorationContext,
    SupervisorState,
    SupervisorStateKind,
)
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue, SupervisorLostError
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner

DeliverFn = Callable[[uuid.UUID, PendingQuestion], Awaitable[None]]
MAX_HISTORY_PAGE = 1000


class Reads(Protocol):
    """What a supervisor reads back from the database (daemon.store.Store does)."""

    async def read_history(
        self, supervisor_id: uuid.UUID, *, before: int | None = None, limit: int = 50
    ) -> list[HistoryMessage]: ...

    async def spawned_task_ids(self, supervisor_id: uuid.UUID) -> list[uuid.UUID]: ...


class Supervisor:
    """One running supervisor: its last known state and the calls that change it."""

    def __init__(
        self,
        state: SupervisorState,
        *,
        queue: PersistenceQueue,
        hub: Hub,
        runner: TaskRunner,
        deliver: DeliverFn,
        restoration: SupervisorRestorationContext | None = None,
        reads: Reads | None = None,
        history_tail: int = 50,
    ) -> None:
        # No messages and no task ids are held (see the module docstring): a state
        # loaded whole keeps only their counts.
        if state.conversation_history or state.spawned_task_ids:
            state = state.evolve(conversation_history=(), spawned_task_ids=())
        self.state = state
        # The context's messages are not kept either: read_history pages them.
        if restoration is not None:
            restoration = restoration.evolve(conversation_history=())
        self.restoration = restoration
        self._queue = queue
        self._hub = hub
        self._runner = runner
        self._deliver = deliver
        self._reads = reads
        # The page read_history returns by default: SUPERVISOR_DAEMON_HISTORY_TAIL.
        self.history_tail = history_tail
        self._epoch = state.owner_epoch
        # Set by the host when this daemon stops driving the supervisor under this epoch
        # (another daemon owns it now, or the lease lapsed): nothing more is submitted.
        self.lost = False

    @property
    def id(self) -> uuid.UUID:
        return self.state.id

    @property
    def epoch(self) -> int:
        """The ownership epoch every write of this supervisor object names."""
        return self._epoch

    def _check_owned(self) -> None:
        if self.lost:
            raise SupervisorLostError(f"supervisor {self.id} is no longer this daemon's")

    async def _submit(self, event: events.Event) -> None:
        self._check_owned()
        await self._queue.submit(event)

    async def spawn_task(self, spec: Any = None, *, awaited: bool = True) -> uuid.UUID:
        """Record a new task (durably), then start it when it is a command task."""
        task_id = uuid.uuid4()
        await self._submit(
            events.task_spawned(self.id, task_id, spec=spec, awaited=awaited, epoch=self._epoch)
        )
        self.state = self.state.evolve(
            spawned_task_count=self.state.spawned_task_count + 1,
            pending_task_ids=(*self.state.pending_task_ids, task_id) if awaited
            else self.state.pending_task_ids,
        )  # fmt: skip
        self._runner.start(task_id, spec, supervisor_id=self.id,
                           contract_id=self.state.contract_id, epoch=self._epoch)  # fmt: skip
        return task_id

    async def wait_for_tasks(
        self, task_ids: Sequence[uuid.UUID] | None = None
    ) -> dict[uuid.UUID, str]:
        """Wait until the tasks (default: every awaited one) finished; their statuses."""
        ids = list(self.state.pending_task_ids) if task_ids is None else limits.task_ids(task_ids)
        if not ids:
            return {}
        await self.set_state(SupervisorStateKind.WAITING_FOR_TASKS)
        statuses = await self._hub.wait_tasks(ids)
        await self._submit(events.tasks_collected(self.id, ids, epoch=self._epoch))
        self.state = self.state.evolve(
            pending_task_ids=tuple(t for t in self.state.pending_task_ids if t not in ids)
        )
        await self.set_state(SupervisorStateKind.WORKING)
        return statuses

    async def ask(
        self,
        question: str,
        *,
        choices: Sequence[str] = (),
        context: str | None = None,
        question_type: QuestionType = QuestionType.GENERAL,
    ) -> str:
        """Ask a person; return their answer. Durable before it is delivered; delivery is
        best effort (a failed NOTIFY is logged, the question stays pending)."""
        pending = PendingQuestion(
            id=uuid.uuid4(), question=question, choices=limits.choices(choices),
            context=context, question_type=limits.question_type(question_type),
            asked_at=datetime.now(UTC),
        )  # fmt: skip
        await self._submit(events.question_asked(self.id, pending, epoch=self._epoch))
        self.state = self.state.evolve(
            pending_questions=(*self.state.pending_questions, pending),
            state=SupervisorStateKind.WAITING_FOR_USER,
        )
        await self._deliver(self.id, pending)
        return await self.await_answer(pending.id)

    async def await_answer(self, question_id: uuid.UUID) -> str:
        """Wait for the answer to a pending question (one asked before a restart too).

        A question no longer pending whose answer this supervisor already applied (a
        restoration applies one given while no daemon ran) gives that answer at once,
        recorded once. Any other question is an InvalidInputError: waiting for it
        would never end.
        """
        if not any(q.id == question_id for q in self.state.pending_questions):
            found = await self._hub.answer_of(question_id)
            if found is None or found[2] != self.id:
                raise InvalidInputError(
                    f"question {question_id} is not pending on supervisor {self.id}"
                )
            return found[0]
        answer, answered_by = await self._hub.wait_answer(question_id)
        await self._submit(
            events.question_answered(
                self.id, question_id, answer, answered_by=answered_by, epoch=self._epoch
            )
        )
        remaining = tuple(q for q in self.state.pending_questions if q.id != question_id)
        self.state = self.state.evolve(
            pending_questions=remaining,
            state=SupervisorStateKind.WORKING if not remaining else self.state.state,
        )
        return answer

    async def change_phase(self, phase: str) -> None:
        await self._submit(events.phase_changed(self.id, phase, epoch=self._epoch))
        self.state = self.state.evolve(phase=phase)

    async def report_activity(self, activity: str) -> None:
        await self._submit(events.activity_reported(self.id, activity, epoch=self._epoch))
        self.state = self.state.evolve(current_activity=activity)

    def report_progress(self, progress: int, activity: str | None = None) -> None:
        """Coalesced: returns at once; only the newest per flush is written."""
        self._check_owned()
        self._queue.submit_nowait(
            events.progress_reported(self.id, progress, activity=activity, epoch=self._epoch)
        )
        self.state = self.state.evolve(progress=progress)

    async def append_message(self, message: Any) -> None:
        """Append one message to the conversation: one inserted row, durable on return."""
        await self._submit(events.message_appended(self.id, message, epoch=self._epoch))
        self.state = self.state.evolve(history_length=self.state.history_length + 1)

    async def read_history(
        self, before: int | None = None, limit: int | None = None
    ) -> list[HistoryMessage]:
        """A page of the conversation, oldest first: the newest `limit` messages (at most
        MAX_HISTORY_PAGE; default `history_tail`) before sequence number `before`
        (messages are numbered from 1; None: the newest of all). An empty page means
        there is nothing older."""
        if limit is None:
            limit = self.history_tail
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 0 < limit <= MAX_HISTORY_PAGE
        ):
            raise ValueError(
                f"limit must be an integer from 1 to {MAX_HISTORY_PAGE}, not {limit!r}"
            )
        if before is not None and (
            isinstance(before, bool) or not isinstance(before, int) or before < 1
        ):
            raise ValueError(f"before must be a positive integer, not {before!r}")
        if self._reads is None:
            return []
        return await self._reads.read_history(self.id, before=before, limit=limit)

    async def spawned_task_ids(self) -> list[uuid.UUID]:
        """Every task it spawned, oldest first (read from the database: not held)."""
        if self._reads is None:
            return []
        return await self._reads.spawned_task_ids(self.id)

    async def set_state(self, state: SupervisorStateKind, *, activity: str | None = None) -> None:
        if state == self.state.state and activity is None:
            return
        await self._submit(
            events.state_changed(self.id, state, activity=activity, epoch=self._epoch)
        )
        self.state = self.state.evolve(state=state)

    async def complete(self) -> None:
        await self._submit(events.completed(self.id, epoch=self._epoch))
        self.state = self.state.evolve(state=SupervisorStateKind.COMPLETED, progress=100)

    async def fail(self, error_message: str) -> None:
        await self._submit(events.failed(self.id, error_message, epoch=self._epoch))
        self.state = self.state.evolve(
            state=SupervisorStateKind.FAILED, error_message=error_message
        )

    async def park(self, reason: str) -> None:
        """Blocked, for an operator (`supervisor-daemon restore ID` brings it back)."""
        await self._submit(
            events.state_changed(
                self.id, SupervisorStateKind.BLOCKED, error_message=reason, epoch=self._epoch
            )
        )
        self.state = self.state.evolve(state=SupervisorStateKind.BLOCKED, error_message=reason)

    def describe(self, why: str) -> str:
        """A context message for an agent restarted within a running daemon."""
        s = self.state
        lines = [
            f"You are supervisor {s.id}, restarted because {why}.",
            f"State: {s.state.value}", f"Phase: {s.phase}", f"Progress: {s.progress}%",
            f"Last activity: {s.current_activity or 'none recorded'}", "",
            f"Questions still waiting for an answer ({len(s.pending_questions)}):",
        ]  # fmt: skip
        lines += [f"- [{q.id}] {q.question}" for q in s.pending_questions] or ["- none"]
        lines += ["", f"Tasks you were waiting for ({len(s.pending_task_ids)}):"]
        lines += [f"- {t}" for t in s.pending_task_ids] or ["- none"]
        lines += ["", "Resume from this state."]
        return "\n".join(lines) + "\n"

    def heartbeat(self) -> None:
        self._check_owned()
        self._queue.submit_nowait(events.heartbeat(self.id, epoch=self._epoch))
