"""Falling back to a checkpoint: the newest valid one, and the state it restores.

A checkpoint records positions (the message sequence number and the task set at that
moment), or, written before positions, copies of the history and the spawned ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from daemon.jsonvalues import issue_of
from daemon.restoration.records import RestorationInput
from daemon.restoration.validation import validate

# The scalar and bounded fields a checkpoint's snapshot carries.
SNAPSHOT_FIELDS = (
    "state", "phase", "progress", "error_message", "current_activity",
    "pending_questions", "pending_task_ids",
)  # fmt: skip


def uuid_array(ids: Sequence[uuid.UUID]) -> str:
    """PostgreSQL's text form of a uuid[]."""
    return "{" + ",".join(str(i) for i in ids) + "}"


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
    candidate = {**item.row, **{k: snapshot.get(k) for k in SNAPSHOT_FIELDS}}
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
        rewind["un"] = uuid_array([uuid.UUID(str(t)) for t in rewind["un"]])
        if rewind.get("sp") is not None:
            rewind["sp"] = uuid_array(candidate["spawned_task_ids"])
    except (ValueError, TypeError, AttributeError):
        return None
    candidate["rewind"] = rewind
    return candidate


def newest_valid_checkpoint(
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
