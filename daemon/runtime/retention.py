"""Retention: the rows of supervisors that finished long ago are deleted.

A supervisor completed or failed, unchanged for longer than the retention, and with no
question pending loses its messages, journal, tasks and checkpoints; its row stays
(state, phase, counts) with `pruned_at` set. Running supervisors (any other state) and
those with a pending question are never touched. Deletion goes in small statements,
each its own short transaction that holds the supervisor it deletes for (FOR SHARE),
so a daemon prunes while it runs without holding long locks. `supervisor-daemon prune`
calls the same `prune`; a running daemon calls it on a clock (`prune_forever`) when
SUPERVISOR_DAEMON_RETENTION_DAYS is set.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import timedelta

import anyio

from daemon.errors import DaemonError
from daemon.logs import get_logger
from daemon.store import RetentionStore

log = get_logger()
BATCH_ROWS = 1_000  # rows per deleting statement
SUPERVISORS_PER_ROUND = 100
INTERVAL_S = 3_600.0  # how often a running daemon prunes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PruneReport:
    """What was deleted (or, in a dry run, would be)."""

    supervisors: int = 0
    messages: int = 0
    journal_segments: int = 0
    journal_events: int = 0
    tasks: int = 0
    checkpoints: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def describe(self) -> str:
        verb = "would prune" if self.dry_run else "pruned"
        return (
            f"{verb} {self.supervisors:,} supervisor(s): {self.messages:,} messages,"
            f" {self.journal_segments:,} journal segments ({self.journal_events:,} events),"
            f" {self.tasks:,} tasks, {self.checkpoints:,} checkpoints"
        )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "": 86_400}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, or a number of days; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return timedelta(seconds=seconds)


async def prune(
    store: RetentionStore,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> PruneReport:
    """Delete the rows of supervisors finished longer ago than `older_than`."""
    started = time.perf_counter()
    age_s = older_than.total_seconds()
    if dry_run:
        counts = await store.count(age_s)
        return PruneReport(**counts, seconds=time.perf_counter() - started, dry_run=True)
    totals = {"supervisors": 0, "journal_events": 0}
    totals.update(dict.fromkeys(RetentionStore.TABLES, 0))
    while ids := await store.prunable(age_s, SUPERVISORS_PER_ROUND):
        for table in RetentionStore.TABLES:
            while True:
                rows, events = await store.delete_batch(table, ids, age_s, batch_rows)
                totals[table] += rows
                totals["journal_events"] += events
                if rows < batch_rows:
                    break
        totals["supervisors"] += await store.mark_pruned(ids, age_s)
    return PruneReport(
        supervisors=totals["supervisors"], messages=totals["messages"],
        journal_segments=totals["journal"], journal_events=totals["journal_events"],
        tasks=totals["tasks"], checkpoints=totals["checkpoints"],
        seconds=time.perf_counter() - started,
    )  # fmt: skip


async def prune_forever(
    store: RetentionStore, retention_days: float, *, interval_s: float = INTERVAL_S
) -> None:
    """A running daemon's retention: prune now, then every `interval_s`. A database
    error is logged and tried again at the next round; it never stops the daemon."""
    older_than = timedelta(days=retention_days)
    while True:
        try:
            report = await prune(store, older_than)
        except DaemonError as exc:
            log.warning("retention.failed", error=str(exc))
        else:
            if report.supervisors:
                log.info("retention.pruned", **{
                    k: v for k, v in dataclasses.asdict(report).items() if k != "dry_run"
                })  # fmt: skip
        await anyio.sleep(interval_s)
