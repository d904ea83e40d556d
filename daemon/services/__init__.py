"""People's commands and their rules, for every interface (the CLI, the web page, its API).

Answer a question, finish a task, create, restore, list and show supervisors, read a
journal or a conversation, follow the questions as daemons deliver them, prune the
rows of supervisors finished long ago. Each takes ids as people type them (a whole UUID or a
unique prefix), checks the rules, writes through the stores in daemon/store/, reads
through daemon/store/people.py, and raises the daemon's own errors: NotFoundError,
ConflictError, BadChoiceError, AmbiguousIdError. It never prints and never renders:
an interface turns results and errors into text, HTML or JSON.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio.abc

from daemon import limits
from daemon.errors import (
    AmbiguousIdError,
    BadChoiceError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from daemon.logs import get_logger
from daemon.models import (
    PHASES,
    HistoryMessage,
    PendingQuestion,
    SupervisorState,
    SupervisorStateKind,
    SupervisorTask,
    TaskStatus,
)
from daemon.restoration.run import restore_manually
from daemon.runtime.retention import PruneReport, parse_age, prune
from daemon.services import question_channel
from daemon.services.ids import TypedId, parse_id
from daemon.services.views import (
    AnswerReceipt,
    ConversationPage,
    InboxQuestion,
    JournalPage,
    SupervisorPage,
)
from daemon.store import Stores

if TYPE_CHECKING:
    from daemon.restoration.records import CrashLoopGuard, RestorationOutcome

__all__ = [
    "AnswerReceipt",
    "ConversationPage",
    "InboxQuestion",
    "JournalPage",
    "Services",
    "SupervisorPage",
    "TypedId",
    "parse_id",
    "pick_choice",
]

log = get_logger()
Id = str | uuid.UUID | TypedId
CANDIDATES_SHOWN = 10  # an ambiguous prefix names at most this many candidates


def pick_choice(question_id: uuid.UUID, choices: tuple[str, ...], text: str) -> str:
    """The answer `text` stands for: a choice by its text or its number (1-based), or
    any non-empty text when the question has no choices. BadChoiceError otherwise."""
    if not text.strip():
        raise BadChoiceError(f"an answer to question {question_id} cannot be empty", choices)
    if not choices or text in choices:
        return text
    if text.strip().isdigit() and 1 <= int(text) <= len(choices):
        return choices[int(text) - 1]
    numbered = ", ".join(f"{n} {choice}" for n, choice in enumerate(choices, 1))
    raise BadChoiceError(
        f"{text!r} is not among the choices of question {question_id}: {numbered}", choices
    )


class Services:
    """People's commands over the stores of one database (daemon.store.Stores, made
    once per process). `guard`: the crash-loop guard a manual restoration reports by;
    `retention_days`: the configured retention, what `prune` deletes by default."""

    def __init__(
        self,
        stores: Stores,
        *,
        guard: CrashLoopGuard | None = None,
        retention_days: float | None = None,
    ) -> None:
        self._guard = guard
        self._retention_days = retention_days
        self._retention = stores.retention
        self._store = stores.supervisors
        self._work = stores.work
        self._events = stores.events
        self._people = stores.people
        self._restoration = stores.restoration

    # -- ids as people type them ------------------------------------------------------

    async def _resolve(
        self, kind: str, typed: Id, lookup: Callable[[str, str, int], Awaitable[list[str]]]
    ) -> uuid.UUID:
        if isinstance(typed, uuid.UUID):
            return typed
        parsed = typed if isinstance(typed, TypedId) else parse_id(typed)
        if parsed.whole is not None:
            return parsed.whole  # the command itself says when nothing has that id
        found = await lookup(parsed.low, parsed.high, CANDIDATES_SHOWN + 1)
        if not found:
            raise NotFoundError(f"no {kind} id starts with {parsed.text}")
        if len(found) > 1:
            shown = ", ".join(found[:CANDIDATES_SHOWN])
            more = " and more" if len(found) > CANDIDATES_SHOWN else ""
            raise AmbiguousIdError(
                f"{parsed.text} is the start of several {kind} ids: {shown}{more}", tuple(found)
            )
        return uuid.UUID(found[0])

    async def supervisor_id(self, typed: Id) -> uuid.UUID:
        return await self._resolve("supervisor", typed, self._people.supervisor_ids)

    async def question_id(self, typed: Id) -> uuid.UUID:
        return await self._resolve("question", typed, self._people.question_ids)

    async def task_id(self, typed: Id) -> uuid.UUID:
        return await self._resolve("task", typed, self._people.task_ids)

    # -- commands ---------------------------------------------------------------------

    async def answer(self, question: Id, text: str, *, by: str | None = None) -> AnswerReceipt:
        """Record a person's answer; the owning daemon applies it (or a restoration does).

        Unknown question: NotFoundError. Answered already: ConflictError. Not one of
        the choices: BadChoiceError. Too long or not text: InvalidInputError. Nothing is
        written in any of those cases.
        """
        limits.text("answer", text)  # what the supervisor will record, checked now
        question_id = await self.question_id(question)
        found = await self._work.find_pending_question(question_id)
        if found is None:
            if await self._work.get_answer(question_id) is not None:
                raise ConflictError(f"question {question_id} was already answered")
            raise NotFoundError(f"no supervisor waits on question {question_id}")
        raw_choices = found["question"].get("choices") or []
        chosen = pick_choice(question_id, tuple(map(str, raw_choices)), text)
        supervisor_id: uuid.UUID = found["supervisor_id"]
        if not await self._work.record_answer(question_id, supervisor_id, chosen, by):
            raise ConflictError(f"question {question_id} was already answered")
        return AnswerReceipt(
            question_id=question_id, supervisor_id=supervisor_id, answer=chosen, answered_by=by
        )

    async def complete_task(
        self, task: Id, status: TaskStatus = TaskStatus.SUCCEEDED, result: Any = None
    ) -> SupervisorTask:
        """Finish a task from outside. Unknown: NotFoundError; finished: ConflictError."""
        task_id = await self.task_id(task)
        found = await self._store.get_task(task_id)
        if found is None:
            raise NotFoundError(f"task {task_id} does not exist")
        if not await self._work.set_task_status(task_id, status, result):
            raise ConflictError(f"task {task_id} has already finished ({found.status.value})")
        return found.evolve(status=status, result=result if result is not None else found.result)

    async def create_supervisor(
        self, *, agent: str, contract_id: uuid.UUID | None = None, phase: str = PHASES[0]
    ) -> SupervisorState:
        """A new supervisor, unowned: a running daemon claims it within its interval."""
        if phase not in PHASES:
            raise BadChoiceError(f"phase {phase!r} is not one of {', '.join(PHASES)}", PHASES)
        if not agent.strip():
            raise BadChoiceError("a supervisor needs an agent (module:callable or cmd:...)", ())
        now = datetime.now(UTC)
        state = SupervisorState(
            id=uuid.uuid4(), contract_id=contract_id or uuid.uuid4(), task_id=uuid.uuid4(),
            phase=phase, last_activity=now, created_at=now, updated_at=now, agent=agent,
        )  # fmt: skip
        return await self._store.save_supervisor_state_full(state)

    async def restore(self, supervisor: Id) -> RestorationOutcome:
        """An operator's restoration (source `manual`): unparks a blocked supervisor.
        The outcome carries the restoration context its agent is given."""
        supervisor_id = await self.supervisor_id(supervisor)
        outcome = await restore_manually(self._restoration, supervisor_id, guard=self._guard)
        if outcome is None:
            raise NotFoundError(f"supervisor {supervisor_id} does not exist")
        return outcome

    async def prune(
        self, older_than: str | None = None, *, dry_run: bool = False
    ) -> tuple[timedelta, PruneReport]:
        """Delete the rows of supervisors completed or failed longer ago than
        `older_than` (30d, 12h, 90m, 45s; the configured retention when None), or only
        count them in a dry run. The age it used and what went. InvalidInputError when
        the age is not a duration, or when there is neither an age nor a retention."""
        if older_than is not None:
            try:
                age = parse_age(older_than)
            except ValueError as exc:
                raise InvalidInputError(f"--older-than: {exc}") from None
        elif self._retention_days is not None:
            age = timedelta(days=self._retention_days)
        else:
            raise InvalidInputError(
                "say how old: --older-than 30d (or set SUPERVISOR_DAEMON_RETENTION_DAYS)"
            )
        return age, await prune(self._retention, age, dry_run=dry_run)

    # -- reads ------------------------------------------------------------------------

    async def pending_questions(self, supervisor: Id | None = None) -> list[InboxQuestion]:
        """Every pending question (of one supervisor when given), oldest first."""
        supervisor_id = None if supervisor is None else await self.supervisor_id(supervisor)
        found: list[InboxQuestion] = []
        for row in await self._people.pending_questions(supervisor_id):
            try:
                question = PendingQuestion.from_json(row["question"])
            except ValueError as exc:  # restoration names it; a list shows the others
                log.warning("question.unreadable", supervisor_id=str(row["supervisor_id"]),
                            error=str(exc))  # fmt: skip
                continue
            found.append(
                InboxQuestion(
                    supervisor_id=row["supervisor_id"],
                    contract_id=row["contract_id"],
                    phase=row["phase"],
                    supervisor_state=row["state"],
                    owner_daemon_id=row["owner_daemon_id"],
                    question=question,
                    answer=row["answer"],
                    answered_by=row["answered_by"],
                    answered_at=row["answered_at"],
                )
            )
        found.sort(key=lambda item: (item.question.asked_at, str(item.question.id)))
        return found

    async def list_supervisors(
        self,
        *,
        state: SupervisorStateKind | None = None,
        phase: str | None = None,
        daemon_id: str | None = None,
        limit: int = 100,
    ) -> list[SupervisorState]:
        """Newest first, without conversations."""
        return await self._people.list_supervisors(
            state=state, phase=phase, daemon_id=daemon_id, limit=limit
        )

    async def count_supervisors(
        self, *, phase: str | None = None, daemon_id: str | None = None
    ) -> dict[str, int]:
        """How many supervisors are in each state (states with none are left out)."""
        return await self._people.count_by_state(phase=phase, daemon_id=daemon_id)

    async def supervisor(self, supervisor: Id, *, journal_limit: int = 20) -> SupervisorPage:
        supervisor_id = await self.supervisor_id(supervisor)
        found = await self._people.supervisor(supervisor_id)
        if found is None:
            raise NotFoundError(f"supervisor {supervisor_id} does not exist")
        state, conversation_length, journal_length = found
        return SupervisorPage(
            state=state,
            tasks=tuple(await self._store.list_tasks_for_supervisor(supervisor_id)),
            questions=tuple(await self.pending_questions(supervisor_id)),
            journal=await self._journal(supervisor_id, journal_length, None, journal_limit),
            conversation_length=conversation_length,
        )

    async def _length(self, supervisor_id: uuid.UUID) -> tuple[int, int]:
        found = await self._people.supervisor(supervisor_id)
        if found is None:
            raise NotFoundError(f"supervisor {supervisor_id} does not exist")
        return found[1], found[2]

    async def history(
        self, supervisor: Id, *, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The journal oldest first, after sequence number `after`."""
        supervisor_id = await self.supervisor_id(supervisor)
        await self._length(supervisor_id)
        return await self._events.list_events(supervisor_id, after_seq=after, limit=limit)

    async def journal(
        self, supervisor: Id, *, before: int | None = None, limit: int = 50
    ) -> JournalPage:
        """The journal newest first, before sequence number `before` (the newest when None)."""
        supervisor_id = await self.supervisor_id(supervisor)
        _, length = await self._length(supervisor_id)
        return await self._journal(supervisor_id, length, before, limit)

    async def _journal(
        self, supervisor_id: uuid.UUID, length: int, before: int | None, limit: int
    ) -> JournalPage:
        end = length + 1 if before is None else min(before, length + 1)
        after = max(0, end - 1 - limit)
        entries = await self._events.list_events(
            supervisor_id, after_seq=after, limit=end - 1 - after
        )
        entries.reverse()
        return JournalPage(
            entries=tuple(entries), length=length, older=after + 1 if after else None
        )

    async def conversation(
        self, supervisor: Id, *, before: int | None = None, limit: int = 50
    ) -> ConversationPage:
        """Messages newest first, before position `before` (the newest when None)."""
        supervisor_id = await self.supervisor_id(supervisor)
        length, _ = await self._length(supervisor_id)
        end = length + 1 if before is None else min(before, length + 1)
        messages = await self._people.conversation(supervisor_id, before=end, limit=limit)
        oldest = messages[-1][0] if messages else 1
        return ConversationPage(
            messages=tuple(messages), length=length, older=oldest if oldest > 1 else None
        )

    async def messages_after(
        self, supervisor: Id, *, after: int = 0, limit: int = 1000
    ) -> tuple[int, list[HistoryMessage]]:
        """The conversation's length and its messages after position `after`, oldest
        first (`history ID --messages`)."""
        supervisor_id = await self.supervisor_id(supervisor)
        summary = await self._store.get_supervisor_summary(supervisor_id)
        if summary is None:
            raise NotFoundError(f"supervisor {supervisor_id} does not exist")
        page = await self._store.read_history_after(supervisor_id, after=after, limit=limit)
        return summary.history_length, page

    # -- the questions channel (daemon/services/question_channel.py) -------------------

    def question_feed(
        self,
    ) -> contextlib.AbstractAsyncContextManager[anyio.abc.ObjectReceiveStream[dict[str, Any]]]:
        """Questions as daemons deliver them (each a bounded preview), for as long as
        the context lasts; the stream ends when its connection is lost."""
        return self._work.question_feed()

    @contextlib.asynccontextmanager
    async def follow_questions(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """The pending questions, then each new one as a daemon delivers it, whole, once
        each, as delivered bodies; ends when the connection to the database is lost."""
        async with self._work.question_feed() as feed:
            yield question_channel.follow(self._work, feed, self.pending_questions)

    async def daemons(self) -> list[dict[str, Any]]:
        """Every registered daemon: lease, capacity, how many supervisors it owns."""
        return await self._people.daemons()
