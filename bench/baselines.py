"""What the persistence queue is measured against: the original system's way (one
UPDATE per save point on a row whose history is an array) and the raw ceiling (COPY of
the same journal rows)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import anyio
import asyncpg

from bench.workload import Workload
from daemon.persistence.events import Event

# The original system's table, as it was after its enhancement: what grows is arrays.
ORIGINAL_TABLE = """
CREATE TABLE original_supervisor_states (
    id UUID PRIMARY KEY, contract_id UUID NOT NULL, task_id UUID NOT NULL,
    conversation_history JSONB NOT NULL DEFAULT '[]', pending_task_ids UUID[] NOT NULL DEFAULT '{}',
    phase TEXT NOT NULL, last_activity TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    state TEXT NOT NULL DEFAULT 'initializing', current_activity TEXT,
    progress INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100), error_message TEXT,
    spawned_task_ids UUID[] NOT NULL DEFAULT '{}', pending_questions JSONB NOT NULL DEFAULT '[]',
    restoration_count INTEGER NOT NULL DEFAULT 0, last_restored_at TIMESTAMPTZ,
    restoration_source TEXT
)
"""
ORIGINAL_ROWS = """
INSERT INTO original_supervisor_states (id, contract_id, task_id, conversation_history, phase,
                                        state)
SELECT i, gen_random_uuid(), gen_random_uuid(), $2::text::jsonb, 'plan', 'working'
FROM unnest($1::uuid[]) AS i
"""

# The original way: one statement per save point, awaited, through a pool of 10.
NAIVE_SQL = {
    "task": "UPDATE original_supervisor_states"
    " SET spawned_task_ids = array_append(spawned_task_ids, $2),"
    " pending_task_ids = array_append(pending_task_ids, $2), last_activity = now(),"
    " updated_at = now() WHERE id = $1",
    "ask": "UPDATE original_supervisor_states SET pending_questions = pending_questions"
    " || jsonb_build_array($2::text::jsonb), state = 'waiting_for_user',"
    " last_activity = now(), updated_at = now() WHERE id = $1",
    "answer": "UPDATE original_supervisor_states"
    " SET pending_questions = (SELECT COALESCE(jsonb_agg(q),"
    " '[]'::jsonb) FROM jsonb_array_elements(pending_questions) q"
    " WHERE q->>'id' <> $2), last_activity = now(), updated_at = now() WHERE id = $1",
    "phase": "UPDATE original_supervisor_states SET phase = $2, last_activity = now(),"
    " updated_at = now() WHERE id = $1",
    "activity": "UPDATE original_supervisor_states"
    " SET current_activity = $2, last_activity = now(),"
    " updated_at = now() WHERE id = $1",
    "state": "UPDATE original_supervisor_states SET state = $2, last_activity = now(),"
    " updated_at = now() WHERE id = $1",
    "message": "UPDATE original_supervisor_states SET conversation_history = conversation_history"
    " || jsonb_build_array($2::text::jsonb), last_activity = now(),"
    " updated_at = now() WHERE id = $1",
    "collect": "UPDATE original_supervisor_states SET pending_task_ids = ARRAY(SELECT t FROM"
    " unnest(pending_task_ids) AS t WHERE NOT t = ANY ($2::uuid[])), last_activity = now(),"
    " updated_at = now() WHERE id = $1",
    "heartbeat": "UPDATE original_supervisor_states SET progress = $2, last_activity = now(),"
    " updated_at = now() WHERE id = $1",
}


def naive_args(event: Event) -> tuple[str, tuple[Any, ...]]:  # noqa: PLR0911
    data, sid, kind = event.data, event.supervisor_id, event.kind.value
    if kind == "task_spawned":
        return "task", (sid, uuid.UUID(data["taskId"]))
    if kind == "tasks_collected":
        return "collect", (sid, [uuid.UUID(t) for t in data["taskIds"]])
    if kind == "question_asked":
        return "ask", (sid, json.dumps(data))
    if kind == "question_answered":
        return "answer", (sid, data["questionId"])
    if kind == "phase_changed":
        return "phase", (sid, data["phase"])
    if kind == "activity_reported":
        return "activity", (sid, data["activity"])
    if kind == "state_changed":
        return "state", (sid, data["state"])
    return "message", (sid, json.dumps(data["message"]))


async def bench_naive(
    pool: asyncpg.Pool[Any], ids: list[uuid.UUID], seconds: float
) -> dict[str, Any]:
    acked = 0
    deadline = 0.0
    perf = time.perf_counter

    async def supervisor(workload: Workload) -> None:
        nonlocal acked
        i = 0
        while perf() < deadline:
            name, args = naive_args(workload.event())
            await pool.execute(NAIVE_SQL[name], *args)
            acked += 1
            i += 1
            if i & 1:  # progress: awaited too, the original had no queue
                await pool.execute(NAIVE_SQL["heartbeat"], workload.sid, i % 101)

    workloads = [Workload(sid, 20_000 + n) for n, sid in enumerate(ids)]
    deadline = perf() + 0.5
    async with anyio.create_task_group() as warm:
        for w in workloads:
            warm.start_soon(supervisor, w)
    acked = 0
    started = perf()
    deadline = started + seconds
    async with anyio.create_task_group() as run:
        for w in workloads:
            run.start_soon(supervisor, w)
    return {"events_per_s": acked / (perf() - started), "events": acked}


async def bench_copy(
    dsn: str, ids: list[uuid.UUID], rows_total: int, batch_rows: int
) -> dict[str, Any]:
    """The same journal rows, appended with COPY in batches of `batch_rows`."""
    table = f"bench_copy_{batch_rows}"
    # A plain connection: binary COPY needs asyncpg's own jsonb codec (text in).
    conn = await asyncpg.connect(dsn)
    # One row per event, keyed like a journal: the cheapest way to append the events.
    await conn.execute(
        f"CREATE TABLE {table} (supervisor_id uuid NOT NULL, seq bigint NOT NULL,"
        " event_id uuid NOT NULL, kind text NOT NULL, payload jsonb NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (supervisor_id, seq))"
    )
    workloads = [Workload(sid, 30_000 + n) for n, sid in enumerate(ids)]
    seqs = dict.fromkeys(ids, 0)
    records = []
    for n in range(rows_total):
        w = workloads[n % len(workloads)]
        event = w.event()
        seqs[w.sid] += 1
        records.append((w.sid, seqs[w.sid], event.id, event.kind.value, json.dumps(event.data)))
    try:
        started = time.perf_counter()
        for i in range(0, len(records), batch_rows):
            await conn.copy_records_to_table(
                table,
                records=records[i : i + batch_rows],
                columns=["supervisor_id", "seq", "event_id", "kind", "payload"],
            )
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return {"rows_per_s": rows_total / elapsed, "rows": rows_total}
