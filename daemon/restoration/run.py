"""Restore every supervisor this daemon owns, set-based, before it reports ready.

Claim (one statement), then per chunk of supervisors: load rows (each with only the
newest `history_tail` messages and the history's length), the task rows to check and
unapplied answers (three statements), the checkpoints and task rows of the invalid
ones (two more, only when some are invalid), decide each supervisor's outcome
(daemon.restoration.plan, pure), and write all outcomes and applied answers in one
transaction. The redelivered questions' NOTIFYs follow the commit, best effort: one
that fails is logged and fails nothing. What is loaded per supervisor does not grow
with its age. One supervisor's failure is its own outcome; it never stops the others,
and a value the JSON decoder refuses is such a failure (daemon.jsonvalues: it parks
that one).
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
from daemon.jsonvalues import JsonTail
from daemon.logs import get_logger
from daemon.models import RestorationSource, StateRecoveryAction
from daemon.restoration.plan import plan_safely
from daemon.restoration.records import CrashLoopGuard, RestorationInput, RestorationOutcome
from daemon.restoration.validation import validate
from daemon.store import RestorationStore
from daemon.work.delivery import log_delivered, notify_body

log = get_logger()
CHUNK = 2_000
HISTORY_TAIL = 50  # the default of SUPERVISOR_DAEMON_HISTORY_TAIL

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
    store: RestorationStore,
    daemon_id: str,
    *,
    guard: CrashLoopGuard | None = None,
    capacity: int = 1_000_000,
    on_outcome: OutcomeCallback | None = None,
    include_own: bool = True,
    history_tail: int = HISTORY_TAIL,
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
        store, sources, guard=guard or CrashLoopGuard(), on_outcome=on_outcome, started=started,
        history_tail=history_tail,
    )  # fmt: skip


async def restore_manually(
    store: RestorationStore,
    supervisor_id: uuid.UUID,
    *,
    guard: CrashLoopGuard | None = None,
    history_tail: int = HISTORY_TAIL,
) -> RestorationOutcome | None:
    """An operator's restoration of one supervisor (source `manual`, guard bypassed).

    The supervisor is first taken from its owner, live or not: a new epoch, which the
    owner's next write runs into (it then stops the agent and its tasks), and no owner.
    The restoration is written under that new epoch, never under the owner's, and the
    next claim round of a daemon with room runs it; a parked supervisor becomes
    runnable again. None when the supervisor does not exist; ConflictError when a
    daemon claimed it between the two steps (that daemon restored it itself).
    """
    released = await store.release_for_manual_restore(supervisor_id)
    if released is None:
        return None
    if released["previous_owner"] is not None:
        log.warning("supervisor.taken_from_owner", supervisor_id=str(supervisor_id),
                    contract_id=str(released["contract_id"]),
                    previous_owner=released["previous_owner"],
                    owner_alive=released["owner_alive"], epoch=released["owner_epoch"])  # fmt: skip
    found: list[RestorationOutcome] = []
    await restore(
        store,
        {supervisor_id: RestorationSource.MANUAL},
        guard=guard or CrashLoopGuard(),
        manual=True,
        on_outcome=found.append,
        history_tail=history_tail,
    )
    if not found:
        raise ConflictError(
            f"supervisor {supervisor_id} was claimed by a daemon while it was being restored;"
            " that daemon restored it"
        )
    return found[0]


async def restore(
    store: RestorationStore,
    sources: dict[uuid.UUID, RestorationSource],
    *,
    guard: CrashLoopGuard,
    manual: bool = False,
    on_outcome: OutcomeCallback | None = None,
    started: float | None = None,
    history_tail: int = HISTORY_TAIL,
) -> RestorationSummary:
    started = time.perf_counter() if started is None else started
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
        tg.start_soon(_load_ahead, store, chunks, send, history_tail)
        async with receive:
            async for loaded in receive:
                results = await _decide_chunk(store, loaded, sources, guard, manual, history_tail)
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
    history_tail: int,
) -> None:
    async with send:
        for chunk in chunks:
            await send.send(await store.load(chunk, history_tail))


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


def _tasks_by_supervisor(
    records: Sequence[asyncpg.Record],
) -> tuple[dict[uuid.UUID, dict[uuid.UUID, str]], dict[uuid.UUID, dict[uuid.UUID, int]]]:
    """Task rows -> per supervisor, each task's status, and the places of the spawned."""
    statuses: dict[uuid.UUID, dict[uuid.UUID, str]] = {}
    places: dict[uuid.UUID, dict[uuid.UUID, int]] = {}
    for task in records:
        sid = task["supervisor_id"]
        statuses.setdefault(sid, {})[task["id"]] = task["status"]
        if task["spawn_seq"] is not None:
            places.setdefault(sid, {})[task["id"]] = task["spawn_seq"]
    return statuses, places


def _as_restoration_row(record: asyncpg.Record, places: dict[uuid.UUID, int]) -> dict[str, Any]:
    """A supervisors row as daemon.restoration.plan reads it (see RestorationInput)."""
    row = dict(record)
    legacy = row.pop("legacy_history", None)
    tail = row.pop("history_tail", None)
    if legacy is not None:
        row["conversation_history"] = legacy
    else:
        row["conversation_history"] = JsonTail(tail) if tail else []
    spawned = sorted((seq, t) for t, seq in places.items())
    row["spawned_task_ids"] = [t for _, t in spawned] + list(row["unrecorded_task_ids"])
    return row


async def _decide_chunk(  # noqa: PLR0917 - internal step of `restore`, called once
    store: RestorationStore,
    loaded: Loaded,
    sources: dict[uuid.UUID, RestorationSource],
    guard: CrashLoopGuard,
    manual: bool,
    history_tail: int,
) -> list[RestorationOutcome]:
    tasks, places = _tasks_by_supervisor(loaded["tasks"])
    answers: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for answer in loaded["answers"]:
        answers.setdefault(answer["supervisor_id"], []).append(dict(answer))
    rows = [_as_restoration_row(row, places.get(row["id"], {})) for row in loaded["rows"]]

    # Checkpoints, and every task row, only for the supervisors whose state is invalid
    # (a few percent): a fallback needs the spawned tasks at a checkpoint's position.
    issues = {row["id"]: validate(row, tasks.get(row["id"], {})) for row in rows}
    invalid = [sid for sid, found in issues.items() if found]
    checkpoints: dict[uuid.UUID, list[Any]] = {}
    if invalid:
        records, all_tasks = await store.checkpoints(invalid)
        for record in records:
            checkpoints.setdefault(record["supervisor_id"], []).append(dict(record))
        every, every_place = _tasks_by_supervisor(all_tasks)
        for sid in invalid:
            tasks[sid], places[sid] = every.get(sid, {}), every_place.get(sid, {})

    results = []
    for row in rows:
        sid = row["id"]
        now: datetime = row.pop("db_now")
        item = RestorationInput(
            row=row, tasks=tasks.get(sid, {}), spawn_seqs=places.get(sid, {}),
            checkpoints=checkpoints.get(sid, ()), answers=answers.get(sid, ()),
            source=sources[sid], now=now, manual=manual, issues=issues[sid],
            history_tail=history_tail,
        )  # fmt: skip
        results.append(plan_safely(item, guard))
    return await _with_checkpoint_histories(store, results, history_tail)


async def _with_checkpoint_histories(
    store: RestorationStore, results: list[RestorationOutcome], history_tail: int
) -> list[RestorationOutcome]:
    """A fallback to a checkpoint's position hands its agent the messages up to that
    position: loaded now, for the few that fell back (one statement)."""
    positions = {
        r.supervisor_id: r.write["he"]
        for r in results
        if r.action is StateRecoveryAction.USE_CHECKPOINT
        and r.write.get("he")
        and r.write.get("hist") is None
    }
    if not positions or not history_tail:
        return results
    tails = await store.history_tails_at(positions, history_tail)

    def with_tail(r: RestorationOutcome) -> RestorationOutcome:
        tail = tuple(tails.get(r.supervisor_id, ()))
        return dataclasses.replace(
            r, context=dataclasses.replace(r.context, conversation_history=tail)
        )

    return [with_tail(r) if r.supervisor_id in positions else r for r in results]


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
