"""Restore every supervisor this daemon owns, set-based, before it reports ready.

Claim (one statement), then per chunk of supervisors: load rows, tasks and unapplied
answers (three statements), the checkpoints of the invalid ones (one more, only when
some are invalid), decide each supervisor's outcome (daemon.restoration, pure), and
write all outcomes and applied answers in one transaction. The redelivered questions'
NOTIFYs follow the commit, best effort: one that fails is logged and fails nothing.
One supervisor's failure is its own outcome; it never stops the others, and a value
the JSON decoder refuses is such a failure (daemon.jsonvalues: it parks that one).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import anyio
import anyio.abc
import asyncpg

from daemon.errors import ConflictError, DaemonError
from daemon.logs import get_logger
from daemon.models import RestorationSource
from daemon.restoration import (
    CrashLoopGuard,
    RestorationInput,
    RestorationOutcome,
    plan_safely,
    validate,
)
from daemon.runtime.delivery import log_delivered, notify_body
from daemon.store import RestorationStore

log = get_logger()
CHUNK = 2_000

OutcomeCallback = Callable[[RestorationOutcome], None]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RestorationSummary:
    supervisors: int
    by_outcome: dict[str, int]
    by_action: dict[str, int]
    questions_redelivered: int
    answers_applied: int
    seconds: float


async def restore_all(
    pool: asyncpg.Pool[Any],
    daemon_id: str,
    *,
    guard: CrashLoopGuard | None = None,
    capacity: int = 1_000_000,
    on_outcome: OutcomeCallback | None = None,
    include_own: bool = True,
    token: uuid.UUID | None = None,
) -> RestorationSummary:
    """Claim this daemon's supervisors and orphans, restore them all, log a summary.

    At start (and once a lapsed lease is regained) `include_own` takes back this
    daemon's own supervisors too, with new epochs; the periodic claim while running
    leaves them alone (they are running) and takes only new ones and those of daemons
    whose lease expired or that stopped, a fair share at a time. `token` is the one the
    daemon registered with: a daemon claims only while its own lease is live.
    """
    started = time.perf_counter()
    store = RestorationStore(pool)
    claimed = await store.claim(daemon_id, capacity, include_own=include_own, token=token)
    if not claimed and not include_own:
        return RestorationSummary(
            supervisors=0,
            by_outcome={},
            by_action={},
            questions_redelivered=0,
            answers_applied=0,
            seconds=0.0,
        )
    sources = {
        row["id"]: RestorationSource.DAEMON_RESTART
        if row["previous_owner"] in (None, daemon_id)
        else RestorationSource.TASK_REASSIGNMENT
        for row in claimed
    }
    return await restore(
        pool, sources, guard=guard or CrashLoopGuard(), on_outcome=on_outcome, started=started
    )


async def restore_manually(
    pool: asyncpg.Pool[Any], supervisor_id: uuid.UUID, *, guard: CrashLoopGuard | None = None
) -> RestorationOutcome | None:
    """An operator's restoration of one supervisor (source `manual`, guard bypassed).

    The supervisor is first taken from its owner, live or not: a new epoch, which the
    owner's next write runs into (it then stops the agent and its tasks), and no owner.
    The restoration is written under that new epoch, never under the owner's, and the
    next claim round of a daemon with room runs it; a parked supervisor becomes
    runnable again. None when the supervisor does not exist; ConflictError when a
    daemon claimed it between the two steps (that daemon restored it itself).
    """
    released = await RestorationStore(pool).release_for_manual_restore(supervisor_id)
    if released is None:
        return None
    if released["previous_owner"] is not None:
        log.warning("supervisor.taken_from_owner", supervisor_id=str(supervisor_id),
                    contract_id=str(released["contract_id"]),
                    previous_owner=released["previous_owner"],
                    owner_alive=released["owner_alive"], epoch=released["owner_epoch"])  # fmt: skip
    found: list[RestorationOutcome] = []
    await restore(
        pool,
        {supervisor_id: RestorationSource.MANUAL},
        guard=guard or CrashLoopGuard(),
        manual=True,
        on_outcome=found.append,
    )
    if not found:
        raise ConflictError(
            f"supervisor {supervisor_id} was claimed by a daemon while it was being restored;"
            " that daemon restored it"
        )
    return found[0]


async def restore(
    pool: asyncpg.Pool[Any],
    sources: dict[uuid.UUID, RestorationSource],
    *,
    guard: CrashLoopGuard,
    manual: bool = False,
    on_outcome: OutcomeCallback | None = None,
    started: float | None = None,
) -> RestorationSummary:
    started = time.perf_counter() if started is None else started
    store = RestorationStore(pool)
    outcomes: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    redelivered = applied = 0
    ids = list(sources)
    chunks = [ids[first : first + CHUNK] for first in range(0, len(ids), CHUNK)]
    # A pipeline: PostgreSQL loads the next chunk and writes the previous one while
    # this process decides the current one.
    send, receive = anyio.create_memory_object_stream[Loaded](1)
    writing: _Write | None = None

    def finish(done: _Write) -> None:
        nonlocal redelivered, applied
        for result in done.results:
            _log(result, done.written, sources[result.supervisor_id])
            outcomes[result.outcome] += 1
            actions[result.action.value] += 1
            redelivered += len(result.redeliver)
            applied += len(result.applied_answers)
            # Only what was written: a row whose epoch moved is another daemon's now.
            if on_outcome is not None and result.supervisor_id in done.written:
                on_outcome(result)

    async with anyio.create_task_group() as tg:
        tg.start_soon(_load_ahead, store, chunks, send)
        async with receive:
            async for loaded in receive:
                results = await _decide_chunk(store, loaded, sources, guard, manual)
                if writing is not None:
                    await writing.done.wait()
                    finish(writing)
                writing = _Write(results)
                tg.start_soon(writing.run, store)
        if writing is not None:
            await writing.done.wait()
            finish(writing)
    summary = RestorationSummary(
        supervisors=len(ids), by_outcome=dict(outcomes), by_action=dict(actions),
        questions_redelivered=redelivered, answers_applied=applied,
        seconds=time.perf_counter() - started,
    )  # fmt: skip
    log.info("restoration.summary", supervisors=summary.supervisors,
             outcomes=summary.by_outcome, actions=summary.by_action,
             questions_redelivered=redelivered, answers_applied=applied,
             elapsed_s=round(summary.seconds, 3))  # fmt: skip
    return summary


Loaded = dict[str, list[asyncpg.Record]]


async def _load_ahead(
    store: RestorationStore,
    chunks: list[list[uuid.UUID]],
    send: anyio.abc.ObjectSendStream[Loaded],
) -> None:
    async with send:
        for chunk in chunks:
            await send.send(await store.load(chunk))


class _Write:
    """One chunk's outcomes being written; `done` is set once they are."""

    def __init__(self, results: list[RestorationOutcome]) -> None:
        self.results = results
        self.written: set[uuid.UUID] = set()
        self.done = anyio.Event()

    async def run(self, store: RestorationStore) -> None:
        results = self.results
        self.written = await store.write(
            [r.write for r in results], [qid for r in results for qid in r.applied_answers]
        )
        bodies = _notifications([r for r in results if r.supervisor_id in self.written])
        if bodies:
            try:
                await store.notify_questions(bodies)
            except DaemonError as exc:
                # Restored all the same: the questions are pending, and were logged.
                log.warning("question.notify_failed", questions=len(bodies), error=str(exc))
        self.done.set()


async def _decide_chunk(
    store: RestorationStore,
    loaded: Loaded,
    sources: dict[uuid.UUID, RestorationSource],
    guard: CrashLoopGuard,
    manual: bool,
) -> list[RestorationOutcome]:
    tasks: dict[uuid.UUID, dict[uuid.UUID, str]] = {}
    for task in loaded["tasks"]:
        tasks.setdefault(task["supervisor_id"], {})[task["id"]] = task["status"]
    answers: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for answer in loaded["answers"]:
        answers.setdefault(answer["supervisor_id"], []).append(dict(answer))
    rows = [dict(row) for row in loaded["rows"]]

    # Checkpoints only for the supervisors whose state is invalid (a few percent).
    issues = {row["id"]: validate(row, tasks.get(row["id"], {})) for row in rows}
    invalid = [sid for sid, found in issues.items() if found]
    checkpoints: dict[uuid.UUID, list[Any]] = {}
    if invalid:
        for record in await store.checkpoints(invalid):
            checkpoints.setdefault(record["supervisor_id"], []).append(record["snapshot"])

    results = []
    for row in rows:
        sid = row["id"]
        now: datetime = row.pop("db_now")
        item = RestorationInput(
            row=row, tasks=tasks.get(sid, {}), checkpoints=checkpoints.get(sid, ()),
            answers=answers.get(sid, ()), source=sources[sid], now=now, manual=manual,
            issues=issues[sid],
        )  # fmt: skip
        results.append(plan_safely(item, guard))
    return results


def _notifications(results: Sequence[RestorationOutcome]) -> list[str]:
    return [
        notify_body(result.supervisor_id, question, redelivery=True)
        for result in results
        for question in result.redeliver
    ]


def _log(result: RestorationOutcome, written: set[uuid.UUID], source: RestorationSource) -> None:
    sid = str(result.supervisor_id)
    contract = str(result.contract_id)
    if result.supervisor_id not in written:
        log.warning(
            "supervisor.restore_skipped",
            supervisor_id=sid,
            contract_id=contract,
            reason="owned by another daemon (epoch moved)",
        )
        return
    if result.outcome == "new":
        log.info("supervisor.new", supervisor_id=sid, contract_id=contract, source=source.value)
        return
    level = log.info if result.outcome == "restored" else log.warning
    level(
        "supervisor.restored", supervisor_id=sid, contract_id=contract, outcome=result.outcome,
        action=result.action.value, issues=list(result.validation.issues),
        restoration_count=result.context.restoration_count, source=source.value,
        warnings=list(result.context.warnings),
    )  # fmt: skip
    for question in result.redeliver:
        log_delivered(result.supervisor_id, question, True, contract_id=result.contract_id)
