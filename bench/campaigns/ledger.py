"""The ledger check: what the agents were told was durable against what the journal holds.

The agents (bench/campaigns/agent.py) append one line per acknowledgement to a file per
supervisor as each reply arrives. `Check.update()` reads what is new in those files
and then what is new in `supervisor_events`, in that order: an acknowledgement is sent
only after its transaction committed, so every acknowledgement read before the
journal must be found in it. The check then holds, cumulatively:

- every acknowledged event is in the journal (else `lost`), exactly once (else
  `duplicates`, counted over every marked event: an unacknowledged one may be
  missing, never present twice), and the events an agent process was acknowledged
  appear in the order it was acknowledged them (else `out_of_order`);
- an answer the agent received is recorded once, after its question;
- a supervisor's journal never interleaves the events of two agent processes (one
  of them, then the other, then the first again): that would be two owners writing
  at once, which fencing must prevent (else `double_owned`, counted in supervisors).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import orjson

# Ledger kinds whose request carried a marker the journal must hold.
MARKED = frozenset({"activity", "message", "task", "ask"})
# Journal event kind -> where its marker is in the payload.
_JOURNAL_MARKERS = {
    "activity_reported": ("activity",),
    "message_appended": ("message", "m"),
    "task_spawned": ("spec", "mark"),
    "question_asked": ("question",),
}


def _dig(payload: Any, path: tuple[str, ...]) -> str | None:
    for key in path:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload if isinstance(payload, str) else None


class LedgerFiles:
    """The agents' ledgers in one directory, read incrementally (whole lines only)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[Path, int] = {}

    def read_new(self) -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        for path in sorted(self.directory.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            if not end:
                continue
            self._offsets[path] = offset + end
            found += [(path.stem, orjson.loads(line)) for line in data[:end].splitlines()]
        return found


@dataclasses.dataclass(slots=True)
class Findings:
    acked: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    answers_missing: int = 0
    answers_twice: int = 0
    unacked_committed: int = 0
    double_owned: int = 0


class Check:
    """The ledgers in `directory` against the journal of `supervisors` (the load's:
    other supervisors of the same database, fed random input, are not checked)."""

    def __init__(self, directory: Path, supervisors: set[uuid.UUID] | None = None) -> None:
        self.files = LedgerFiles(directory)
        self.supervisors: set[uuid.UUID] = set(supervisors or ())
        self.acks: list[tuple[float, str, dict[str, Any]]] = []  # (time, supervisor, line)
        self._seen_seq: dict[uuid.UUID, int] = {}
        self._markers: dict[str, tuple[uuid.UUID, int]] = {}  # first place of each marker
        self._marker_count: Counter[str] = Counter()
        self._event_ids: Counter[str] = Counter()
        self._answers: dict[str, int] = {}  # question id -> seq of its answer
        self._answer_count: Counter[str] = Counter()
        self._question_of: dict[str, str] = {}  # marker of an ask -> its question id
        self._asked_at: dict[str, int] = {}  # question id -> seq of question_asked
        self._unmatched: list[tuple[str, dict[str, Any]]] = []
        self._last_seq: dict[tuple[str, int], int] = defaultdict(int)  # per agent process
        self._acked_markers: set[str] = set()
        # Per supervisor: the agent runs (marker prefixes) in journal order, and whether
        # one came back after another had written.
        self._runs: dict[uuid.UUID, list[str]] = defaultdict(list)
        self._interleaved: set[uuid.UUID] = set()
        self.findings = Findings()

    async def update(self, pool: asyncpg.Pool[Any]) -> Findings:
        """Read what is new (ledgers first, then the journal) and check it."""
        new = self.files.read_new()
        await self._read_journal(pool)
        for supervisor, line in new:
            self._take(supervisor, line)
        self._unmatched = [(s, line) for s, line in self._unmatched if not self._match(s, line)]
        f = self.findings
        f.lost = len(self._unmatched)
        f.duplicates = sum(n - 1 for n in self._marker_count.values() if n > 1) + sum(
            n - 1 for n in self._event_ids.values() if n > 1
        )
        f.answers_twice = sum(n - 1 for n in self._answer_count.values() if n > 1)
        f.unacked_committed = len(set(self._marker_count) - self._acked_markers)
        f.double_owned = len(self._interleaved)
        return f

    async def _read_journal(self, pool: asyncpg.Pool[Any]) -> None:
        known = list(self._seen_seq.items())
        rows = await pool.fetch(
            "SELECT e.supervisor_id, e.first_seq, e.last_seq, e.events::text AS events"
            " FROM supervisor_events e"
            " LEFT JOIN unnest($1::uuid[], $2::bigint[]) AS k(sid, seen)"
            "   ON k.sid = e.supervisor_id"
            " WHERE e.last_seq > COALESCE(k.seen, 0) AND e.supervisor_id = ANY ($3::uuid[])"
            " ORDER BY e.supervisor_id, e.first_seq",
            [sid for sid, _ in known],
            [seq for _, seq in known],
            list(self.supervisors),
        )
        for row in rows:
            sid: uuid.UUID = row["supervisor_id"]
            for n, item in enumerate(orjson.loads(row["events"])):
                seq = row["first_seq"] + n
                event = item if isinstance(item, list) else [  # the older segment layout
                    item.get("e"), item.get("k"), item.get("p")]  # fmt: skip
                event_id, kind, payload = event
                self._event_ids[str(event_id)] += 1
                self._journal_event(sid, seq, str(kind), payload)
            self._seen_seq[sid] = max(self._seen_seq.get(sid, 0), row["last_seq"])

    def _journal_event(self, sid: uuid.UUID, seq: int, kind: str, payload: Any) -> None:
        if kind == "question_answered":
            question = _dig(payload, ("questionId",))
            if question is not None:
                self._answer_count[question] += 1
                self._answers.setdefault(question, seq)
            return
        path = _JOURNAL_MARKERS.get(kind)
        marker = _dig(payload, path) if path else None
        if marker is None:
            return
        self._marker_count[marker] += 1
        self._markers.setdefault(marker, (sid, seq))
        run = marker.partition(".")[0]
        runs = self._runs[sid]
        if not runs or runs[-1] != run:
            if run in runs:
                self._interleaved.add(sid)
            runs.append(run)
        if kind == "question_asked":
            question = _dig(payload, ("id",))
            if question is not None:
                self._question_of.setdefault(marker, question)
                self._asked_at.setdefault(question, seq)

    def _take(self, supervisor: str, line: dict[str, Any]) -> None:
        kind = line.get("k")
        if kind not in MARKED and kind != "answer":
            return
        self.findings.acked += 1
        self.acks.append((float(line["t"]), supervisor, line))
        if kind in MARKED:
            self._acked_markers.add(str(line["m"]))
        if not self._match(supervisor, line):
            self._unmatched.append((supervisor, line))

    def _match(self, supervisor: str, line: dict[str, Any]) -> bool:
        """Whether an acknowledgement is in the journal; checks its order when it is."""
        if line["k"] == "answer":
            seq = self._answers.get(str(line["q"]))
            if seq is None:
                return False
        else:
            place = self._markers.get(str(line["m"]))
            if place is None or str(place[0]) != supervisor:
                return False
            seq = place[1]
            if line["k"] == "ask":
                question = self._question_of.get(str(line["m"]), "")
                answered = self._answers.get(question)
                if answered is None or answered < seq:
                    self.findings.answers_missing += 1
                seq = answered if answered is not None else seq
        agent = (supervisor, int(line["a"]))
        if seq < self._last_seq[agent]:
            self.findings.out_of_order += 1
        self._last_seq[agent] = max(self._last_seq[agent], seq)
        return True

    def rate(self, start: float, end: float) -> float:
        """Acknowledged events per second between two wall-clock times."""
        if end <= start:
            return 0.0
        return sum(1 for t, _, _ in self.acks if start <= t < end) / (end - start)

    def acked_since(self, start: float) -> set[str]:
        """The supervisors acknowledged at least once since `start`."""
        return {supervisor for t, supervisor, _ in self.acks if t >= start}
