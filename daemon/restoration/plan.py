"""Restoration: bring supervisors back from the database, validation first.

Pure logic over rows already loaded (daemon/restoration/run.py does the I/O, set-based).
For each supervisor this module decides, following SPEC.md "Restoration protocol":

1. the crash-loop guard: restored too often within the window -> parked (blocked);
2. validation of the stored state, every problem named; a JSON value the daemon cannot
   read as stored (daemon.jsonvalues: `1e400` written by another tool) parks it for an
   operator, with the value left as it is;
3. what to restore: the state itself (valid), else the newest valid checkpoint, else a
   fresh start, else - when starting fresh could lose or repeat work - park it for an
   operator (blocked, manual intervention);
4. answers that arrived while no daemon ran: applied, their questions not redelivered;
5. the questions to redeliver; the awaited tasks that finished meanwhile (no longer
   awaited) and those still running;
6. the restoration context message for the agent, and the row to write back.

It never raises for bad data: whatever is stored, the result is an outcome.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from daemon.jsonvalues import JsonTail, issue_of
from daemon.models import (
    FINISHED_TASK_STATES,
    PHASES,
    PendingQuestion,
    RestorationSource,
    StateRecoveryAction,
    StateValidationResult,
    SupervisorRestorationContext,
    SupervisorStateKind,
)
from daemon.restoration.context import context_message
from daemon.restoration.validation import LIVE, STATES, unreadable, validate


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CrashLoopGuard:
    """More than `max_restorations` automatic restorations within `window` parks one."""

    max_restorations: int = 5
    window: timedelta = timedelta(minutes=10)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RestorationInput:
    """Everything loaded for one supervisor.

    `row` is its supervisors row with `conversation_history` (the newest messages, or
    the non-array value an older writer left), `history_length`, and
    `spawned_task_ids` (those of the loaded task rows that are spawned, then the ids
    listed without a task row). The task rows loaded are the awaited and unrecorded
    ones; every one of them for a supervisor whose state is invalid (a fallback needs
    them all).
    """

    row: Mapping[str, Any]
    tasks: Mapping[uuid.UUID, str]  # task rows of this supervisor: id -> status
    spawn_seqs: Mapping[uuid.UUID, int] = dataclasses.field(default_factory=dict)  # their places
    # Checkpoints, newest first: {"snapshot", "message_seq", "task_seq"} (positions NULL
    # in one written before positions: its snapshot holds copies).
    checkpoints: Sequence[Mapping[str, Any]] = ()
    answers: Sequence[Mapping[str, Any]] = ()  # question_answers not yet applied
    source: RestorationSource
    now: datetime
    manual: bool = False
    issues: list[str] | None = None  # validate(row, tasks) when already computed
    history_tail: int = 50  # how many of the newest messages a context carries


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RestorationOutcome:
    supervisor_id: uuid.UUID
    outcome: str  # restored | new (never ran: started, not restored) | blocked | failed
    action: StateRecoveryAction
    validation: StateValidationResult
    context: SupervisorRestorationContext
    redeliver: tuple[PendingQuestion, ...]
    applied_answers: tuple[uuid.UUID, ...]
    write: dict[str, Any]  # the row for apply_restorations (see restoration.sql)
    contract_id: uuid.UUID | None = None  # for the log lines about this supervisor


# -- validation -------------------------------------------------------------------------


_SNAPSHOT_FIELDS = (
    "state", "phase", "progress", "error_message", "current_activity",
    "pending_questions", "pending_task_ids",
)  # fmt: skip


def _fresh(row: Mapping[str, Any]) -> dict[str, Any]:
    fresh = dict(row)
    fresh.update(
        state=SupervisorStateKind.INITIALIZING.value, phase=PHASES[0], progress=0,
        error_message=None, current_activity=None, conversation_history=[],
        pending_questions=[], pending_task_ids=[], spawned_task_ids=[],
        history_length=0, rewind={"he": 0, "te": 0, "un": "{}"},
    )  # fmt: skip
    return fresh


def _live_tasks(row: Mapping[str, Any], tasks: Mapping[uuid.UUID, str]) -> list[uuid.UUID]:
    """Tasks of this supervisor still pending or running: work a fresh start would lose."""
    return [task_id for task_id, status in tasks.items() if status in LIVE]


def _in_crash_loop(item: RestorationInput, guard: CrashLoopGuard) -> int | None:
    """The number of restorations in the current window when the guard trips."""
    if item.manual:
        return None
    started = item.row.get("restoration_window_started_at")
    count = item.row.get("restorations_in_window") or 0
    in_window = isinstance(started, datetime) and started > item.now - guard.window
    if in_window and count >= guard.max_restorations:
        return int(count)
    return None


def plan(item: RestorationInput, guard: CrashLoopGuard) -> RestorationOutcome:
    """The outcome for one supervisor. Never raises on bad data (see `plan_safely`)."""
    row = item.row
    sid = row["id"]
    warnings: list[str] = []
    previous_state = row.get("state") if row.get("state") in STATES else None

    loops = _in_crash_loop(item, guard)
    if loops is not None:
        reason = (
            f"crash loop: restored {loops} times within {int(guard.window.total_seconds())} s;"
            f" not restored automatically. Restore it with `supervisor-daemon restore {sid}`"
        )
        return _parked(item, guard, reason, StateRecoveryAction.MANUAL_INTERVENTION, [reason])

    issues = validate(row, item.tasks) if item.issues is None else item.issues
    refused = unreadable(row)
    if refused:
        # Restoring a checkpoint or starting fresh would overwrite a value nobody has
        # read; the operator decides (and can read it with SQL).
        reason = (
            f"stored state holds JSON the daemon cannot read ({'; '.join(refused)}); it is"
            " left as it is. Correct the value, then restore it with"
            f" `supervisor-daemon restore {sid}`"
        )
        return _parked(item, guard, reason, StateRecoveryAction.MANUAL_INTERVENTION, issues)
    if not issues and _never_ran(row) and not item.manual:
        return _new(item, guard)
    base: Mapping[str, Any] = row
    action = StateRecoveryAction.PROCEED
    if issues:
        checkpoint = _newest_valid_checkpoint(item, warnings)
        if checkpoint is not None:
            base = checkpoint
            action = StateRecoveryAction.USE_CHECKPOINT
            warnings.append(
                f"stored state invalid; restored the checkpoint of phase {base.get('phase')}"
            )
        elif _live_tasks(row, item.tasks):
            reason = (
                "stored state invalid, no valid checkpoint, and tasks still running:"
                " starting fresh could lose or repeat their work. Issues: " + "; ".join(issues)
            )
            return _parked(item, guard, reason, StateRecoveryAction.MANUAL_INTERVENTION, issues)
        else:
            base = _fresh(row)
            action = StateRecoveryAction.START_FRESH
            warnings.append("stored state invalid and no valid checkpoint: started fresh")
    validation = StateValidationResult(
        is_valid=not issues, issues=tuple(issues), recovery_action=action
    )
    return _restore(item, guard, base, action, validation, previous_state, warnings)


def _never_ran(row: Mapping[str, Any]) -> bool:
    """Created but never started: there is nothing to restore, only to start."""
    return (
        row.get("state") == SupervisorStateKind.INITIALIZING
        and not row.get("last_event_seq")
        and not row.get("restoration_count")
        and not row.get("history_length")
        and not row.get("conversation_history")
    )


def _new(item: RestorationInput, guard: CrashLoopGuard) -> RestorationOutcome:
    sid = item.row["id"]
    write = _write_row(item, guard, restored=False)
    write.update(ws=None, wc=0)
    return RestorationOutcome(
        supervisor_id=sid, outcome="new", action=StateRecoveryAction.PROCEED,
        validation=StateValidationResult(
            is_valid=True, recovery_action=StateRecoveryAction.PROCEED
        ),
        context=SupervisorRestorationContext(
            success=True, previous_state=SupervisorStateKind.INITIALIZING,
            restoration_context_message=f"Supervisor {sid} starts for the first time.\n",
        ),
        redeliver=(), applied_answers=(), write=write, contract_id=item.row.get("contract_id"),
    )  # fmt: skip


def _typed_snapshot(base: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint snapshot carries ids as strings; make them UUIDs like a row's."""
    for key in ("pending_task_ids", "spawned_task_ids"):
        base[key] = [uuid.UUID(str(t)) for t in base.get(key) or []]
    return base


def _candidate(item: RestorationInput, checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state a checkpoint restores, with `rewind`: the positions (or the copies,
    in a checkpoint written before positions) apply_restorations rewinds to."""
    snapshot = checkpoint.get("snapshot")
    if not isinstance(snapshot, Mapping):
        return None
    candidate = {**item.row, **{k: snapshot.get(k) for k in _SNAPSHOT_FIELDS}}
    rewind: dict[str, Any] = {}
    message_seq, task_seq = checkpoint.get("message_seq"), checkpoint.get("task_seq")
    if message_seq is not None:
        # Its history is the stored messages up to the position (loaded once chosen).
        legacy = snapshot.get("legacy_history")
        candidate["conversation_history"] = [] if legacy is None else legacy
        candidate["history_length"] = int(message_seq)
        rewind["he"] = int(message_seq)
    else:
        copy = snapshot.get("conversation_history")
        candidate["conversation_history"] = copy
        candidate["history_length"] = len(copy) if isinstance(copy, list) else 0
        rewind.update(he=0, hist=copy)
    unrecorded = snapshot.get("unrecorded_task_ids") or []
    if task_seq is not None:
        spawned = sorted(
            (seq, t) for t, seq in item.spawn_seqs.items() if seq is not None and seq <= task_seq
        )
        candidate["spawned_task_ids"] = [t for _, t in spawned] + list(unrecorded)
        rewind.update(te=int(task_seq), un=unrecorded)
    else:
        candidate["spawned_task_ids"] = snapshot.get("spawned_task_ids")
        rewind.update(te=0, un=[], sp=snapshot.get("spawned_task_ids"))
    try:
        candidate = _typed_snapshot(candidate)
        rewind["un"] = _array([uuid.UUID(str(t)) for t in rewind["un"]])
        if rewind.get("sp") is not None:
            rewind["sp"] = _array(candidate["spawned_task_ids"])
    except (ValueError, TypeError, AttributeError):
        return None
    candidate["rewind"] = rewind
    return candidate


def _newest_valid_checkpoint(
    item: RestorationInput, warnings: list[str]
) -> Mapping[str, Any] | None:
    for n, checkpoint in enumerate(item.checkpoints):
        if not isinstance(checkpoint, Mapping) or issue_of(checkpoint) is not None:
            continue
        candidate = _candidate(item, checkpoint)
        if candidate is not None and not validate(candidate, item.tasks):
            if n:
                warnings.append(f"skipped {n} newer checkpoint(s) that are invalid too")
            return candidate
    return None


def _restore(  # noqa: PLR0917 - internal step of `plan`, called once
    item: RestorationInput,
    guard: CrashLoopGuard,
    base: Mapping[str, Any],
    action: StateRecoveryAction,
    validation: StateValidationResult,
    previous_state: str | None,
    warnings: list[str],
) -> RestorationOutcome:
    sid = item.row["id"]
    questions = [PendingQuestion.from_json(q) for q in base["pending_questions"]]
    state = SupervisorStateKind(base["state"])

    # Answers given while no daemon ran: apply them instead of asking again.
    answered: dict[uuid.UUID, Mapping[str, Any]] = {}
    for answer in item.answers:
        answered[uuid.UUID(str(answer["question_id"]))] = answer
    applied = tuple(answered)
    applied_here = [q for q in questions if q.id in answered]
    questions = [q for q in questions if q.id not in answered]
    stale = [qid for qid in answered if qid not in {q.id for q in applied_here}]
    if stale:
        warnings.append(f"{len(stale)} answer(s) to questions no longer pending were ignored")

    awaited = list(base["pending_task_ids"])
    finished = [t for t in awaited if item.tasks.get(t) in FINISHED_TASK_STATES]
    still_awaited = [t for t in awaited if t not in set(finished)]

    error = base.get("error_message")
    if item.manual and state == SupervisorStateKind.BLOCKED:
        # An operator restores a parked supervisor: make it runnable again.
        state = (
            SupervisorStateKind.WAITING_FOR_USER if questions
            else SupervisorStateKind.WAITING_FOR_TASKS if still_awaited
            else SupervisorStateKind.WORKING
        )  # fmt: skip
        warnings.append(f"unparked by an operator (it was blocked: {error})")
        error = None
    if state == SupervisorStateKind.WAITING_FOR_USER and not questions:
        state = SupervisorStateKind.WORKING
    if state == SupervisorStateKind.WAITING_FOR_TASKS and not still_awaited:
        state = SupervisorStateKind.WORKING

    history = _newest(base["conversation_history"], item.history_tail)
    count = int(item.row.get("restoration_count") or 0) + 1
    message = context_message(
        supervisor_id=sid, source=item.source, count=count, previous_state=previous_state,
        state=state.value, phase=str(base["phase"]), progress=int(base["progress"]),
        last_activity=base.get("current_activity"), action=action,
        pending=questions, answered=[(q, answered[q.id]) for q in applied_here],
        awaited={t: item.tasks.get(t, "unknown") for t in awaited},
        warnings=warnings, issues=list(validation.issues),
    )  # fmt: skip
    spawned = _spawned_count(base, action)
    context = SupervisorRestorationContext(
        success=True,
        previous_state=SupervisorStateKind(previous_state) if previous_state else None,
        conversation_history=history,
        history_length=int(base.get("history_length") or 0),
        pending_questions=tuple(questions), awaited_task_ids=tuple(still_awaited),
        spawned_task_count=spawned, restoration_count=count,
        restoration_context_message=message, warnings=tuple(warnings),
    )  # fmt: skip
    write = _write_row(item, guard, restored=True)
    if action is not StateRecoveryAction.PROCEED:
        write.update(
            st=state.value, ph=base["phase"], p=base["progress"], er=error,
            a=base.get("current_activity"), pq=[q.to_json() for q in questions],
            pt=_array(still_awaited), **base["rewind"],
        )  # fmt: skip
    else:
        if state.value != item.row["state"]:
            write.update(st=state.value, er=error)
        if applied_here:
            write["pq"] = [q.to_json() for q in questions]
        if finished:
            write["pt"] = _array(still_awaited)
    return RestorationOutcome(
        supervisor_id=sid, outcome="restored", action=action, validation=validation,
        context=context, redeliver=tuple(questions), applied_answers=applied, write=write,
        contract_id=item.row.get("contract_id"),
    )  # fmt: skip


def _newest(history: Sequence[Any], tail: int) -> Sequence[Any]:
    """What a context carries of a history: the loaded tail as it is (its length was
    the limit), the last `tail` messages of a checkpoint's copy."""
    if isinstance(history, JsonTail):
        return history
    return tuple(history[-tail:]) if tail else ()


def _spawned_count(base: Mapping[str, Any], action: StateRecoveryAction) -> int:
    if action is StateRecoveryAction.PROCEED:
        # Its spawned_task_ids hold the loaded task rows only; the counter is the whole.
        return int(base.get("task_seq") or 0) + len(base.get("unrecorded_task_ids") or ())
    return len(base["spawned_task_ids"])


def _array(ids: Sequence[uuid.UUID]) -> str:
    return "{" + ",".join(str(t) for t in ids) + "}"


def _write_row(item: RestorationInput, guard: CrashLoopGuard, *, restored: bool) -> dict[str, Any]:
    row = item.row
    window_started = row.get("restoration_window_started_at")
    in_window = row.get("restorations_in_window") or 0
    # Manual restoration starts a new window: an operator vouched for it.
    if item.manual or not (
        isinstance(window_started, datetime) and window_started > item.now - guard.window
    ):
        window_started, in_window = item.now, 0
    return {
        "id": row["id"], "epoch": row.get("owner_epoch"), "restored": restored,
        "source": item.source.value, "ws": window_started,  # orjson writes RFC 3339
        "wc": in_window + (1 if restored and not item.manual else 0),
        "st": None, "ph": None, "p": None, "er": None, "a": None, "he": None, "te": None,
        "un": None, "pq": None, "pt": None, "hist": None, "sp": None,
    }  # fmt: skip


def _parked(
    item: RestorationInput,
    guard: CrashLoopGuard,
    reason: str,
    action: StateRecoveryAction,
    issues: list[str],
) -> RestorationOutcome:
    sid = item.row["id"]
    previous = item.row.get("state")
    validation = StateValidationResult(is_valid=False, issues=tuple(issues), recovery_action=action)
    context = SupervisorRestorationContext(
        success=False,
        previous_state=SupervisorStateKind(previous) if previous in STATES else None,
        restoration_count=int(item.row.get("restoration_count") or 0),
        restoration_context_message=f"Supervisor {sid} was parked for an operator: {reason}",
        warnings=(reason,),
    )
    write = _write_row(item, guard, restored=False)
    write.update(st=SupervisorStateKind.BLOCKED.value, er=reason)
    return RestorationOutcome(
        supervisor_id=sid,
        outcome="blocked",
        action=action,
        validation=validation,
        context=context,
        redeliver=(),
        applied_answers=(),
        write=write,
        contract_id=item.row.get("contract_id"),
    )


def plan_safely(item: RestorationInput, guard: CrashLoopGuard) -> RestorationOutcome:
    """`plan`, with any unexpected error turned into a parked supervisor."""
    try:
        return plan(item, guard)
    except Exception as exc:  # noqa: BLE001 - one supervisor's failure must not stop the rest
        reason = f"restoration failed: {type(exc).__name__}: {exc}"
        parked = _parked(item, guard, reason, StateRecoveryAction.MANUAL_INTERVENTION, [reason])
        return dataclasses.replace(parked, outcome="failed")


# -- the message for the agent ------------------------------------------------------------
