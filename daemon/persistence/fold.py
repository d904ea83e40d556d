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

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from daemon.persistence.events import Event, EventKind
from daemon.store import Batch

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
    """One supervisor's row as apply_batch reads it (short keys: see queue.sql).

    Only what a batch sets is present; json_to_recordset reads a missing key as NULL,
    which the statement takes as "unchanged". Keys, when present:
      i   supervisor id                   n   critical events folded in
      ph / st / a / p / er                final phase, state, activity, progress, error
      ep  fencing epoch the writer holds  le  last event id (retry check)
      tk  spawned tasks [{"t": id, "aw": awaited, "sp": spec}]; tn how many
      aw  the awaited ones' ids, as a PostgreSQL array literal "{id,id}"
      q   questions asked (PendingQuestion JSON)
      an  answers [{"q": question id, "a": answer, "by": who}]; ai their question ids
      rt  task ids no longer awaited (collected)
      m   messages appended to the history; mn how many
    """
    if epoch is None:
        return {"i": supervisor_id}
    return {"i": supervisor_id, "ep": epoch}


def _append(row: dict[str, Any], key: str, item: Any) -> None:
    items = row.get(key)
    if items is None:
        row[key] = [item]
    else:
        items.append(item)


def fold(  # noqa: PLR0912, PLR0915 - one flat loop: the hot path, kept inline on purpose
    critical: Sequence[Event], coalesced: Iterable[tuple[int, Event]] = ()
) -> Batch:
    """One Batch for `critical` (in order) and `coalesced` (position, event) entries.

    A coalesced entry's position is the number of critical events that were queued
    before it arrived: it is newer than critical events at lower indexes only.
    """
    # Keyed by the id's integer: uuid.UUID hashes in Python, an int in C.
    folded: dict[int, tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]] = {}
    # Index of the last critical event that set activity / progress, per supervisor:
    # a coalesced entry is written only where it is newer.
    activity_at: dict[int, int] = {}
    progress_at: dict[int, int] = {}
    batch = Batch()
    for index, event in enumerate(critical):
        key = event.supervisor_id.int
        entry = folded.get(key)
        if entry is None:
            entry = folded[key] = (_new_row(event.supervisor_id, event.epoch), [])
        row, segment = entry
        data = event.data
        kind = event.kind
        if kind is _ACTIVITY_REPORTED:
            row["a"] = data["activity"]
            activity_at[key] = index
        elif kind is _TASK_SPAWNED:
            task = {"t": data["taskId"], "aw": data["awaited"], "sp": data["spec"]}
            tasks = row.get("tk")
            if tasks is None:
                row["tk"] = [task]
            else:
                tasks.append(task)
        elif kind is _STATE_CHANGED:
            row["st"] = data["state"]
            row["er"] = data["errorMessage"]
            if "activity" in data:
                row["a"] = data["activity"]
                activity_at[key] = index
            if "progress" in data:
                row["p"] = data["progress"]
                progress_at[key] = index
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
                _append(row, "rt", task_id)
        segment.append((event.id, _KIND_TEXT[kind], data))

    rows = batch.rows
    segments = batch.segments
    last_event = batch.last_event
    for row, segment in folded.values():
        rows.append(row)
        segments.append(segment)
        row["n"] = len(segment)
        last_event[row["i"]] = row["le"] = segment[-1][0]
        # Array literals: PostgreSQL parses "{a,b}" into uuid[] / text[] in C, where
        # unpacking JSON arrays inside the UPDATE costs a subquery per row.
        tasks = row.get("tk")
        if tasks is not None:
            row["tn"] = len(tasks)
            row["aw"] = "{" + ",".join([str(t["t"]) for t in tasks if t["aw"]]) + "}"
        messages = row.get("m")
        if messages is not None:
            row["mn"] = len(messages)
        answers = row.get("an")
        if answers is not None:
            row["ai"] = "{" + ",".join([str(a["q"]) for a in answers]) + "}"
        collected = row.get("rt")
        if collected is not None:
            row["rt"] = "{" + ",".join(collected) + "}"

    # Heartbeat and progress: on top of the critical events where newer, or in a row of
    # their own (no journal segment) for a supervisor with no critical event here.
    for position, event in coalesced:
        key = event.supervisor_id.int
        entry = folded.get(key)
        if entry is None:
            row = _new_row(event.supervisor_id, event.epoch)
            row["n"] = 0
            folded[key] = (row, [])
            rows.append(row)
            segments.append(None)
        else:
            row = entry[0]
        data = event.data
        if "progress" in data and progress_at.get(key, -1) < position:
            row["p"] = data["progress"]
        if "activity" in data and activity_at.get(key, -1) < position:
            row["a"] = data["activity"]
    return batch
