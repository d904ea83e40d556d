"""The restoration decision for one supervisor: restore, fall back, start fresh or park.

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
from datetime import datetime
from typing import Any

from daemon.jsonvalues import JsonTail
from daemon.models import (
    FINISHED_TASK_STATES,
    PHASES,
    PendingQuestion,
    StateRecoveryAction,
    StateValidationResult,
    SupervisorRestorationContext,
    SupervisorStateKind,
)
from daemon.restoration.checkpoints import newest_valid_checkpoint, uuid_array
from daemon.restoration.context import context_message
from daemon.restoration.records import CrashLoopGuard, RestorationInput, RestorationOutcome
from daemon.restoration.validation import LIVE, STATES, unreadable, validate


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
        checkpoint = newest_valid_checkpoint(item, warnings)
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
            pt=uuid_array(still_awaited), **base["rewind"],
        )  # fmt: skip
    else:
        if state.value != item.row["state"]:
            write.update(st=state.value, er=error)
        if applied_here:
            write["pq"] = [q.to_json() for q in questions]
        if finished:
            write["pt"] = uuid_array(still_awaited)
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
