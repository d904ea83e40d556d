"""Fold a run of events into one set-based write: the document `apply_batch` reads.

Pure logic, no I/O. Per supervisor, the critical events of a batch collapse into one
row: final values (last phase, last state, last activity, ...), what they append in
order (tasks, questions, answered question ids, messages) and the journal segment
(the events themselves). A coalesced heartbeat/progress entry is applied on top only
where it is newer than the critical events of the same supervisor, so per-supervisor
order holds.

The rows go to PostgreSQL as one JSON text (json_to_recordset on the other side):
encoding a thousand small rows with orjson costs a fraction of what asyncpg spends
checking and encoding the elements of typed arrays, and one row per supervisor with
everything nested keeps the statement's plan a single join, whatever the batch holds.
The journal segments, four fifths of the text, travel beside the document as an array
of JSON texts, one per row: json_to_recordset walks every nested value with its
semantic parser (a hash table per object), which cost about six times what the
journal column's own input check costs for the same text.
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
# The kinds as plain strings for the journal: orjson encodes an enum member through a
# slow path, which was more than half of the batch's encoding time.
_KIND_TEXT: dict[EventKind, str] = {kind: str(kind.value) for kind in EventKind}


def _new_row(supervisor_id: uuid.UUID, epoch: int | None) -> dict[str, Any]:
    """One supervisor's row as apply_batch reads it (short keys: see queue.sql)."""
    return {
        "i": supervisor_id,  # supervisor id
        "n": 0,  # critical events folded in
        "ph": None, "st": None, "a": None, "p": None, "er": None,  # final values
        "ep": epoch,  # fencing epoch the writer holds (None: unfenced)
        "le": None,  # last event id (retry check)
        "tk": None,  # spawned tasks: [{"t": id, "aw": awaited, "sp": spec}]
        "ts": None,  # their ids, as a PostgreSQL array literal "{id,id}"
        "aw": None,  # the awaited ones among them, likewise
        "q": None,  # questions asked (PendingQuestion JSON)
        "an": None,  # answers: [{"q": question id, "a": answer, "by": who}]
        "ai": None,  # the answered question ids, as an array literal
        "rt": None,  # task ids no longer awaited (collected), as an array literal
        "_rt": None,
        "m": None,  # messages appended to the history
        # Positions of the last critical event that set activity / progress, so a
        # coalesced entry can tell whether it is newer. Removed before encoding.
        "_a": -1, "_p": -1,
    }  # fmt: skip


def _append(row: dict[str, Any], key: str, item: Any) -> None:
    items = row[key]
    if items is None:
        row[key] = [item]
    else:
        items.append(item)


@dataclasses.dataclass(slots=True)
class Batch:
    """What one apply_batch statement writes."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Each row's journal segment, [{"e": id, "k": kind, "p": payload}], None for a row
    # of heartbeat/progress only.
    segments: list[list[dict[str, Any]] | None] = dataclasses.field(default_factory=list)
    # For the retry check: the last critical event of each supervisor in this batch.
    last_event: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)

    def parameters(self) -> tuple[str, list[uuid.UUID], list[str | None]]:
        """The document, the supervisor ids (for the primary-key lookup) and the
        journal segments as JSON texts, in the order of the rows."""
        # default=str: asyncpg hands out its own UUID subclass, which orjson does not
        # know by exact type; anything else was checked when its event was made.
        dumps = orjson.dumps
        return (
            dumps(self.rows, default=str).decode(),
            [row["i"] for row in self.rows],
            [None if s is None else dumps(s).decode() for s in self.segments],
        )


def fold(  # noqa: PLR0912, PLR0915 - one flat loop: the hot path, kept inline on purpose
    critical: Sequence[Event], coalesced: Iterable[tuple[int, Event]] = ()
) -> Batch:
    """One Batch for `critical` (in order) and `coalesced` (position, event) entries.

    A coalesced entry's position is the number of critical events that were queued
    before it arrived: it is newer than critical events at lower indexes only.
    """
    # Keyed by the id's integer: uuid.UUID hashes in Python, an int in C.
    folded: dict[int, dict[str, Any]] = {}
    journal: dict[int, list[dict[str, Any]]] = {}
    batch = Batch()
    for index, event in enumerate(critical):
        sid = event.supervisor_id
        key = sid.int
        row = folded.get(key)
        if row is None:
            row = folded[key] = _new_row(sid, event.epoch)
            segment = journal[key] = []
        else:
            segment = journal[key]
        row["n"] += 1
        data = event.data
        kind = event.kind
        if kind is _ACTIVITY_REPORTED:
            row["a"] = data["activity"]
            row["_a"] = index
        elif kind is _STATE_CHANGED:
            row["st"] = data["state"]
            row["er"] = data["errorMessage"]
            if "activity" in data:
                row["a"] = data["activity"]
                row["_a"] = index
            if "progress" in data:
                row["p"] = data["progress"]
                row["_p"] = index
        elif kind is _TASK_SPAWNED:
            _append(row, "tk", {"t": data["taskId"], "aw": data["awaited"], "sp": data["spec"]})
        elif kind is _QUESTION_ASKED:
            _append(row, "q", data)
            row["st"] = "waiting_for_user"
            row["er"] = None
        elif kind is _QUESTION_ANSWERED:
            _append(row, "an", {"q": data["questionId"], "a": data["answer"],
                                "by": data["answeredBy"]})  # fmt: skip
        elif kind is _PHASE_CHANGED:
            row["ph"] = data["phase"]
        elif kind is _MESSAGE_APPENDED:
            _append(row, "m", data["message"])
        elif kind is _TASKS_COLLECTED:
            for task_id in data["taskIds"]:
                _append(row, "_rt", task_id)
        segment.append({"e": event.id, "k": _KIND_TEXT[kind], "p": data})
        row["le"] = event.id

    for position, event in coalesced:
        sid = event.supervisor_id
        row = folded.get(sid.int)
        if row is None:
            row = folded[sid.int] = _new_row(sid, event.epoch)
        data = event.data
        if "progress" in data and row["_p"] < position:
            row["p"] = data["progress"]
        if "activity" in data and row["_a"] < position:
            row["a"] = data["activity"]

    rows = batch.rows = list(folded.values())
    # Heartbeat/progress-only rows were added last: they have no journal segment.
    batch.segments = [*journal.values(), *[None] * (len(rows) - len(journal))]
    last_event = batch.last_event
    for row in rows:
        del row["_a"], row["_p"]
        collected = row.pop("_rt")
        if collected is not None:
            row["rt"] = "{" + ",".join(collected) + "}"
        if not row["n"]:
            continue
        last_event[row["i"]] = row["le"]
        # Array literals: PostgreSQL parses "{a,b}" into uuid[] / text[] in C, where
        # unpacking JSON arrays inside the UPDATE costs a subquery per row.
        tasks = row["tk"]
        if tasks is not None:
            row["ts"] = "{" + ",".join([str(t["t"]) for t in tasks]) + "}"
            row["aw"] = "{" + ",".join([str(t["t"]) for t in tasks if t["aw"]]) + "}"
        answers = row["an"]
        if answers is not None:
            row["ai"] = "{" + ",".join([str(a["q"]) for a in answers]) + "}"
    return batch
