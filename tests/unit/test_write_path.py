"""One write path: the statements that may change a supervisor, each with its reason.

Every change of a supervisor's state goes through its events (the persistence queue's
apply_batch: fenced by the owner's epoch, journaled in the same statement), or is
ownership itself, restoration under the epoch it holds, a person's input that the owner
then applies, or retention. A new statement that writes a supervisor's tables without
being one of these fails here: make it an event, or add it below with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from daemon.db.queries import queries

# What a supervisor is made of: its row (and the view of the original name), its
# messages, tasks, checkpoints, journal and answers; and the functions that write them.
_TABLES = (
    "supervisors|supervisor_states|supervisor_tasks|supervisor_messages"
    "|supervisor_checkpoints|supervisor_events|question_answers"
)
_FUNCTIONS = "supervisor_history_set|supervisor_spawned_set|supervisor_spawned_add"
WRITE = re.compile(
    rf"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|MERGE\s+INTO)\s+"
    rf"(?:ONLY\s+)?(?:\w+\.)?\"?({_TABLES})\b|\b({_FUNCTIONS})\s*\(",
    re.IGNORECASE,
)

ALLOWED = {
    # The one write path of a running supervisor.
    "apply_batch": "every save point: fenced by owner_epoch, journaled in the same statement",
    # Creation: a row nobody owns yet.
    "save_supervisor_state_full": "inserts a new unowned row; ON CONFLICT leaves any other",
    "set_new_supervisor_history_and_tasks": "the rows of that new row, in its transaction",
    # Ownership: what moves the epoch that fences every other write.
    "claim_supervisors": "takes ownership (epoch + 1), only with a live lease",
    "release_daemon": "a stopping daemon's supervisors get a new epoch",
    "release_for_manual_restore": "an operator takes a supervisor from its owner (epoch + 1)",
    # Restoration, under the epoch the restorer holds.
    "apply_restorations": "skips every row whose epoch moved on",
    "restore_copied_histories": "rows apply_restorations wrote, in its transaction",
    "mark_answers_applied": "answers restoration applied, in that transaction",
    # Tasks: the runner under the owner's epoch; a person from outside.
    "start_task": "pending -> running only under the owner's epoch and a live lease",
    "finish_task": "an outcome only under the epoch the task ran under",
    "set_task_status": "tasks complete: an unfinished task, once; the owner collects it",
    # A person's answer: recorded once, applied by the owner as a question_answered event.
    "record_answer": "question_answers only, once per question",
    # Retention: finished supervisors, checked again under a share lock.
    "prune_messages": "rows of supervisors finished longer ago than the retention",
    "prune_journal": "rows of supervisors finished longer ago than the retention",
    "prune_tasks": "rows of supervisors finished longer ago than the retention",
    "prune_checkpoints": "rows of supervisors finished longer ago than the retention",
    "mark_pruned": "pruned_at of those supervisors",
}


def writers(statements: dict[str, str]) -> set[str]:
    return {name for name, sql in statements.items() if WRITE.search(sql)}


def test_only_the_allowed_statements_write_a_supervisor() -> None:
    found = writers(queries)
    assert not found - set(ALLOWED), "writes a supervisor outside the one write path"
    assert not set(ALLOWED) - found, "allowed but no longer a writer: drop it from ALLOWED"
    # Creation is allowed because it cannot overwrite: it must never become an upsert.
    assert "ON CONFLICT (id) DO NOTHING" in queries["save_supervisor_state_full"]


def test_no_daemon_code_writes_a_supervisor_outside_the_sql_files() -> None:
    package = Path(__file__).parents[2] / "daemon"
    inline = [str(p) for p in package.rglob("*.py") if WRITE.search(p.read_text())]
    assert inline == []


def test_the_guard_sees_a_write_back() -> None:
    """What the removed partial updates looked like is found, reads are not."""
    assert writers({
        "update": "WITH u AS (UPDATE supervisors SET phase = $2 WHERE id = $1) SELECT 1",
        "view": "UPDATE supervisor_states SET progress = 3",
        "function": "SELECT supervisor_spawned_add($1, $2)",
        "checkpoint": "INSERT INTO supervisor_checkpoints (supervisor_id) SELECT $1",
        "quoted": 'DELETE FROM public."supervisor_messages" WHERE supervisor_id = $1',
        "read": "SELECT * FROM supervisors s JOIN supervisor_tasks t ON t.supervisor_id = s.id",
        "lock": "SELECT id FROM supervisors WHERE id = $1 FOR UPDATE",
    }) == {"update", "view", "function", "checkpoint", "quoted"}  # fmt: skip
