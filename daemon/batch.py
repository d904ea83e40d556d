"""Fold a run of events into one set-based write: the arrays `apply_batch` reads.

Pure logic, no I/O. Per supervisor, the critical events of a batch collapse into one
row: final values (last phase, last state, last activity, ...), what they append in
order (tasks, questions, answered question ids, messages) and the journal segment
(the events themselves). A coalesced heartbeat/progress entry is applied on top only
where it is newer than the critical events of the same supervisor, so per-supervisor
order holds.

The rows go to PostgreSQL as parallel arrays, one per field and one element per
supervisor (unnest on the other side). Scalars travel in binary and are read without
parsing; what is JSON (the journal segment, tasks, questions, answers, messages) is
encoded by orjson and parsed once on the server, where it is used. One element per
supervisor, not per event, keeps asyncpg's per-element work small: arrays with one
element per event cost it about 6 µs per event, and one JSON document for the whole
batch made the server parse every value twice.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from daemon.events import Event, EventKind

_TASK_SPAWNED = EventKind.TASK_SPAWNED
_QUESTION_ASKED = EventKind.QUESTION_ASKED
_QUESTION_ANSWERED = EventKind.QUESTION_ANSWERED
_PHASE_CHANGED = EventKind.PHASE_CHANGED
_ACTIVITY_REPORTED = EventKind.ACTIVITY_REPORTED
_STATE_CHANGED = EventKind.STATE_CHANGED
_MESSAGE_APPENDED = EventKind.MESSAGE_APPENDED
_TASKS_COLLECTED = EventKind.TASKS_COLLECTED


# A supervisor's row is a list, one slot per apply_batch parameter (in its order);
# the rows are transposed into the parameters' arrays in one C call (zip).
_COLUMNS = 18
(_SID, _N, _PH, _ST, _ACT, _PROG, _ER, _EP, _EV,
 _LE, _TK, _TS, _AW, _Q, _AN, _AI, _M, _RT) = range(_COLUMNS)  # fmt: skip
# Scratch slots after the parameters: positions of the last critical event that set
# activity / progress, so a coalesced entry can tell whether it is newer.
_LAST_A, _LAST_P = 18, 19
_JSON_COLUMNS = (_EV, _TK, _Q, _AN, _M)


def _new_row(supervisor_id: uuid.UUID, epoch: int | None) -> list[Any]:
    """One supervisor's row, every slot empty but its id and epoch."""
    row: list[Any] = [None] * 20
    row[_SID] = supervisor_id
    row[_N] = 0  # critical events folded in
    row[_EP] = epoch  # fencing epoch the writer holds (None: unfenced)
    row[_EV] = []  # journal segment: [{"e": id, "k": kind, "p": payload}]
    row[_LAST_A] = row[_LAST_P] = -1
    # Filled as events come: _PH, _ST, _ACT, _PROG, _ER (final values), _LE (last event
    # id, for the retry check), _TK (spawned tasks: [{"t": id, "aw": awaited, "sp":
    # spec}]), _TS and _AW (their ids and the awaited ones, as array literals
    # "{id,id}"), _Q (questions asked), _AN (answers: [{"q": id, "a": answer, "by":
    # who}]), _AI (the answered question ids), _M (messages), _RT (tasks collected).
    return row


def _append(row: list[Any], slot: int, item: Any) -> None:
    items = row[slot]
    if items is None:
        row[slot] = [item]
    else:
        items.append(item)


def _literal(items: Iterable[Any]) -> str:
    """A PostgreSQL array literal of ids: parsed in C on the server."""
    return "{" + ",".join([str(item) for item in items]) + "}"


@dataclasses.dataclass(slots=True)
class Batch:
    """What one apply_batch statement writes."""

    rows: list[list[Any]] = dataclasses.field(default_factory=list)
    # For the retry check: the last critical event of each supervisor in this batch.
    last_event: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)

    def parameters(self) -> list[Sequence[Any]]:
        """apply_batch's parameters: one array per slot, one element per supervisor."""
        columns: list[Sequence[Any]] = list(zip(*self.rows, strict=True)) or [()] * _COLUMNS
        dumps = orjson.dumps
        for slot in _JSON_COLUMNS:
            # default=str: asyncpg hands out its own UUID subclass, which orjson does
            # not know by exact type; anything else was checked when its event was made.
            columns[slot] = [
                None if value is None else dumps(value, default=str).decode()
                for value in columns[slot]
            ]
        return columns


def fold(  # noqa: PLR0912, PLR0915 - one flat loop: the hot path, kept inline on purpose
    critical: Sequence[Event], coalesced: Iterable[tuple[int, Event]] = ()
) -> Batch:
    """One Batch for `critical` (in order) and `coalesced` (position, event) entries.

    A coalesced entry's position is the number of critical events that were queued
    before it arrived: it is newer than critical events at lower indexes only.
    """
    # Keyed by the id's integer: uuid.UUID hashes in Python, an int in C.
    folded: dict[int, list[Any]] = {}
    batch = Batch()
    for index, event in enumerate(critical):
        sid = event.supervisor_id
        key = sid.int
        row = folded.get(key)
        if row is None:
            row = folded[key] = _new_row(sid, event.epoch)
        row[_N] += 1
        data = event.data
        kind = event.kind
        if kind is _ACTIVITY_REPORTED:
            row[_ACT] = data["activity"]
            row[_LAST_A] = index
        elif kind is _STATE_CHANGED:
            row[_ST] = data["state"]
            row[_ER] = data["errorMessage"]
            if "activity" in data:
                row[_ACT] = data["activity"]
                row[_LAST_A] = index
            if "progress" in data:
                row[_PROG] = data["progress"]
                row[_LAST_P] = index
        elif kind is _TASK_SPAWNED:
            _append(row, _TK, {"t": data["taskId"], "aw": data["awaited"], "sp": data["spec"]})
        elif kind is _QUESTION_ASKED:
            _append(row, _Q, data)
            row[_ST] = "waiting_for_user"
            row[_ER] = None
        elif kind is _QUESTION_ANSWERED:
            _append(row, _AN, {"q": data["questionId"], "a": data["answer"],
                              "by": data["answeredBy"]})  # fmt: skip
        elif kind is _PHASE_CHANGED:
            row[_PH] = data["phase"]
        elif kind is _MESSAGE_APPENDED:
            _append(row, _M, data["message"])
        elif kind is _TASKS_COLLECTED:
            for task_id in data["taskIds"]:
                _append(row, _RT, task_id)
        row[_EV].append({"e": event.id, "k": kind, "p": data})
        row[_LE] = event.id

    for position, event in coalesced:
        sid = event.supervisor_id
        row = folded.get(sid.int)
        if row is None:
            row = folded[sid.int] = _new_row(sid, event.epoch)
        data = event.data
        if "progress" in data and row[_LAST_P] < position:
            row[_PROG] = data["progress"]
        if "activity" in data and row[_LAST_A] < position:
            row[_ACT] = data["activity"]

    rows = batch.rows = list(folded.values())
    last_event = batch.last_event
    for row in rows:
        del row[_COLUMNS:]
        if row[_RT] is not None:
            row[_RT] = _literal(row[_RT])
        if not row[_N]:
            row[_EV] = None  # heartbeat/progress only: no journal segment
            continue
        last_event[row[_SID]] = row[_LE]
        tasks = row[_TK]
        if tasks is not None:
            row[_TS] = _literal([t["t"] for t in tasks])
            row[_AW] = _literal([t["t"] for t in tasks if t["aw"]])
        answers = row[_AN]
        if answers is not None:
            row[_AI] = _literal([a["q"] for a in answers])
    return batch
