"""Fold a run of events into one set-based write: columnar arrays for `apply_batch`.

Pure logic, no I/O. Per supervisor, the critical events of a batch collapse into one
row of final values (last phase, last state, last activity, ...) plus ordered lists of
what they append (tasks, questions, answers, messages) and their journal entries. A
coalesced heartbeat/progress entry is applied on top only where it is newer than the
critical events of the same supervisor, so per-supervisor order holds.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from daemon.events import Event, EventKind

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _Row:
    """The running fold of one supervisor's events in this batch."""

    __slots__ = (
        "activity",
        "activity_at",
        "epoch",
        "error",
        "n_events",
        "phase",
        "progress",
        "progress_at",
        "state",
    )

    def __init__(self, epoch: int | None) -> None:
        self.n_events = 0
        self.phase: str | None = None
        self.state: str | None = None
        self.error: str | None = None
        self.activity: str | None = None
        self.progress: int | None = None
        self.activity_at = -1
        self.progress_at = -1
        self.epoch = epoch


@dataclasses.dataclass(slots=True)
class Batch:
    """Columnar arrays, one list per statement parameter (see queue.sql apply_batch)."""

    ids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    n_events: list[int] = dataclasses.field(default_factory=list)
    phases: list[str | None] = dataclasses.field(default_factory=list)
    states: list[str | None] = dataclasses.field(default_factory=list)
    activities: list[str | None] = dataclasses.field(default_factory=list)
    progresses: list[int | None] = dataclasses.field(default_factory=list)
    errors: list[str | None] = dataclasses.field(default_factory=list)
    epochs: list[int | None] = dataclasses.field(default_factory=list)
    task_sids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    task_ids: list[str] = dataclasses.field(default_factory=list)
    task_awaited: list[bool] = dataclasses.field(default_factory=list)
    task_specs: list[str] = dataclasses.field(default_factory=list)
    ask_sids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    ask_questions: list[str] = dataclasses.field(default_factory=list)
    answer_sids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    answer_qids: list[str] = dataclasses.field(default_factory=list)
    answer_texts: list[str] = dataclasses.field(default_factory=list)
    answer_by: list[str | None] = dataclasses.field(default_factory=list)
    msg_sids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    msg_texts: list[str] = dataclasses.field(default_factory=list)
    ev_sids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    ev_idx: list[int] = dataclasses.field(default_factory=list)
    ev_ids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    ev_kinds: list[str] = dataclasses.field(default_factory=list)
    ev_payloads: list[str] = dataclasses.field(default_factory=list)
    # For the retry check: the last critical event of each supervisor in this batch.
    last_event: dict[uuid.UUID, uuid.UUID] = dataclasses.field(default_factory=dict)

    def parameters(self) -> tuple[list[Any], ...]:
        return (
            self.ids, self.n_events, self.phases, self.states, self.activities,
            self.progresses, self.errors, self.epochs,
            self.task_sids, self.task_ids, self.task_awaited, self.task_specs,
            self.ask_sids, self.ask_questions,
            self.answer_sids, self.answer_qids, self.answer_texts, self.answer_by,
            self.msg_sids, self.msg_texts,
            self.ev_sids, self.ev_idx, self.ev_ids, self.ev_kinds, self.ev_payloads,
        )  # fmt: skip


def fold(  # noqa: PLR0912, PLR0915 - one flat loop: the hot path, kept inline on purpose
    critical: Sequence[Event], coalesced: Iterable[tuple[int, Event]] = ()
) -> Batch:
    """One Batch for `critical` (in order) and `coalesced` (position, event) entries.

    A coalesced entry's position is the number of critical events that were queued
    before it arrived: it is newer than critical events at lower indexes only.
    """
    rows: dict[uuid.UUID, _Row] = {}
    batch = Batch()
    ev_sids, ev_idx, ev_ids = batch.ev_sids, batch.ev_idx, batch.ev_ids
    ev_kinds, ev_payloads, last_event = batch.ev_kinds, batch.ev_payloads, batch.last_event
    for index, event in enumerate(critical):
        sid = event.supervisor_id
        row = rows.get(sid)
        if row is None:
            row = rows[sid] = _Row(event.epoch)
        row.n_events += 1
        data = event.data
        kind = event.kind
        if kind is EventKind.TASK_SPAWNED:
            batch.task_sids.append(sid)
            batch.task_ids.append(data["taskId"])
            batch.task_awaited.append(data["awaited"])
            batch.task_specs.append(_dumps(data["spec"]))
        elif kind is EventKind.QUESTION_ASKED:
            batch.ask_sids.append(sid)
            batch.ask_questions.append(_dumps(data))
            row.state = "waiting_for_user"
            row.error = None
        elif kind is EventKind.QUESTION_ANSWERED:
            batch.answer_sids.append(sid)
            batch.answer_qids.append(data["questionId"])
            batch.answer_texts.append(data["answer"])
            batch.answer_by.append(data["answeredBy"])
        elif kind is EventKind.PHASE_CHANGED:
            row.phase = data["phase"]
        elif kind is EventKind.ACTIVITY_REPORTED:
            row.activity = data["activity"]
            row.activity_at = index
        elif kind is EventKind.STATE_CHANGED:
            row.state = data["state"]
            row.error = data["errorMessage"]
            if "activity" in data:
                row.activity = data["activity"]
                row.activity_at = index
            if "progress" in data:
                row.progress = data["progress"]
                row.progress_at = index
        elif kind is EventKind.MESSAGE_APPENDED:
            batch.msg_sids.append(sid)
            batch.msg_texts.append(_dumps(data["message"]))
        ev_sids.append(sid)
        ev_idx.append(row.n_events)
        ev_ids.append(event.id)
        ev_kinds.append(kind.value)
        ev_payloads.append(_dumps(data))
        last_event[sid] = event.id

    for position, event in coalesced:
        sid = event.supervisor_id
        row = rows.get(sid)
        if row is None:
            row = rows[sid] = _Row(event.epoch)
        data = event.data
        if "progress" in data and row.progress_at < position:
            row.progress = data["progress"]
        if "activity" in data and row.activity_at < position:
            row.activity = data["activity"]

    for sid, row in rows.items():
        batch.ids.append(sid)
        batch.n_events.append(row.n_events)
        batch.phases.append(row.phase)
        batch.states.append(row.state)
        batch.activities.append(row.activity)
        batch.progresses.append(row.progress)
        batch.errors.append(row.error)
        batch.epochs.append(row.epoch)
    return batch
