"""Benchmark: the persistence queue vs. one awaited UPDATE per save point vs. raw COPY.

1,000 in-process supervisors, a mix of every event kind, on a fresh embedded PostgreSQL,
all three measured in the same run (the machines are shared and noisy: compare ratios).

(a) the queue, closed loop: each supervisor submits its next event as soon as the last
    one is acknowledged; sustained acknowledged critical events/s, ack latency p50/p99.
    Then an open loop at a fixed offered load of 5,000 events/s: ack latency p99.
(b) the original way: the same workload, one awaited UPDATE per save point through a
    pool of 10 connections, on the original system's table (histories and task ids as
    arrays that each append rewrites).
(c) the ceiling: the same events appended with COPY as one row each (keyed by
    supervisor and sequence number, like a journal), in batches of 1,000.
    The same again in batches of 100, the condition of the target's reference figure
    for a 2-core machine (about 260,000 rows/s; docs/benchmarks.md): how fast this host
    is today, compared with the machine the targets were set on.

`events_per_s` counts acknowledged critical events only; heartbeats and progress are
extra load. `aged_events_per_s` is the same closed loop on supervisors that start with
500-message histories and 200 spawned tasks each: it should not be slower.
`p99_ack_ms_at_5k` is the median of three open-loop runs (one p99 on a shared host
moves by a factor of two from run to run). Usage (from the repository root):
    python -m bench.persistence [--seconds 12] [--open-loop-seconds 8] [--supervisors 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg

from bench._setup import (
    ServerCpu,
    create_supervisors,
    fresh_database,
    history,
    machine,
    open_pool,
    run,
)
from daemon.models import PendingQuestion, QuestionType, SupervisorStateKind
from daemon.ops.gc_tuning import throughput_mode
from daemon.persistence import events
from daemon.persistence.events import Event
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore

KINDS = ["task", "ask", "answer", "phase", "activity", "state", "message"]
# A long-running supervisor mostly reports activity and state and spawns tasks; it
# asks now and then and changes phase rarely (each phase change stores a checkpoint).
WEIGHTS = [25, 8, 8, 1, 34, 20, 4]
PHASES = ["plan", "implement", "review"]
AWAITED_TASKS = 4  # a supervisor waits for its tasks once it has spawned this many
STATES = [
    SupervisorStateKind.WORKING,
    SupervisorStateKind.WAITING_FOR_TASKS,
    SupervisorStateKind.IDLE,
]


class Workload:
    """Per-supervisor event generator: the same sequence logic for every method."""

    def __init__(self, supervisor_id: uuid.UUID, seed: int) -> None:
        self.sid = supervisor_id
        self.rng = random.Random(seed)
        self.open_questions: list[uuid.UUID] = []
        self.awaited_tasks: list[str] = []
        self.n = 0
        self.kinds = self.rng.choices(KINDS, WEIGHTS, k=256)

    def next_kind(self) -> str:
        kind = self.kinds[self.n % 256]
        self.n += 1
        if kind == "answer" and not self.open_questions:
            return "activity"
        if kind == "task" and len(self.awaited_tasks) >= AWAITED_TASKS:
            return "collect"
        if kind == "ask" and len(self.open_questions) >= 2:
            return "answer"
        return kind

    def event(self) -> Event:  # noqa: PLR0911 - one return per event kind
        kind = self.next_kind()
        sid = self.sid
        if kind == "task":
            task_id = events.new_id()
            self.awaited_tasks.append(task_id)
            return events.task_spawned(sid, task_id, spec={"command": "true"})
        if kind == "collect":
            # As the daemon does when a wait for tasks returns: they are no longer
            # awaited (otherwise pending_task_ids would only ever grow).
            collected, self.awaited_tasks = self.awaited_tasks, []
            return events.tasks_collected(sid, collected)
        if kind == "ask":
            question = PendingQuestion(
                id=uuid.uuid4(),
                question="Proceed?",
                choices=("yes", "no"),
                question_type=QuestionType.PHASE_CONFIRMATION,
                asked_at=_NOW,
            )
            self.open_questions.append(question.id)
            return events.question_asked(sid, question)
        if kind == "answer":
            return events.question_answered(sid, self.open_questions.pop(0), "yes")
        if kind == "phase":
            return events.phase_changed(sid, PHASES[self.n % 3])
        if kind == "activity":
            return events.activity_reported(sid, f"step {self.n}")
        if kind == "state":
            return events.state_changed(sid, STATES[self.n % 3])
        return events.message_appended(sid, {"role": "assistant", "content": f"note {self.n}"})


_NOW = datetime.now(UTC)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_queue(
    pool: asyncpg.Pool[Any], ids: list[uuid.UUID], seconds: float, in_flight: int, **queue_args: Any
) -> dict[str, Any]:
    """Closed loop: each supervisor keeps `in_flight` save points awaiting their ack."""
    queue = PersistenceQueue(EventStore(pool), **queue_args)
    server_cpu = await ServerCpu.of(pool)
    latencies: list[float] = []
    acked = 0
    running = False  # cleared by a timer: cheaper than reading the clock once more per event
    perf = time.perf_counter

    async def stream(workload: Workload) -> None:
        nonlocal acked
        submit, nowait = queue.submit, queue.submit_nowait
        record = latencies.append
        sid = workload.sid
        i = 0
        while running:
            event = workload.event()
            started = perf()
            await submit(event)
            record(perf() - started)
            acked += 1
            i += 1
            if not i & 3:  # a progress report every 4th save point, a heartbeat every 16th
                nowait(events.progress_reported(sid, i % 101))
                if not i & 15:
                    nowait(events.heartbeat(sid))

    def start_all(tg: anyio.abc.TaskGroup, workloads: list[Workload], seconds: float) -> None:
        nonlocal running
        running = True

        def stop() -> None:
            nonlocal running
            running = False

        asyncio.get_running_loop().call_later(seconds, stop)
        for w in workloads:
            for _ in range(in_flight):
                tg.start_soon(stream, w)

    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        workloads = [Workload(sid, n) for n, sid in enumerate(ids)]
        # warm-up: prepared statements, caches
        async with anyio.create_task_group() as warm:
            start_all(warm, workloads, 1.0)
        latencies.clear()
        acked = 0
        batches_before, written_before = queue.counters.batches, queue.counters.written
        cpu_before = time.process_time()
        server_before = server_cpu.seconds()
        started = perf()
        # Acknowledged events at each quarter of the run: a cost that grew with the
        # supervisors' age (tasks and messages piling up) would show as a slope here.
        quarters: list[int] = []
        loop = asyncio.get_running_loop()
        for n in (1, 2, 3):
            loop.call_later(seconds * n / 4, lambda: quarters.append(acked))
        async with anyio.create_task_group() as run:
            start_all(run, workloads, seconds)
        elapsed = perf() - started
        quarters.append(acked)
        cpu = time.process_time() - cpu_before
        server_after = server_cpu.seconds()
        batches = queue.counters.batches - batches_before
        written = queue.counters.written - written_before
        await queue.drain()
    return {
        "events_per_s": acked / elapsed,
        "p50_ack_ms": percentile(latencies, 0.50) * 1000,
        "p99_ack_ms": percentile(latencies, 0.99) * 1000,
        "events": acked,
        "events_per_s_by_quarter": [
            (b - a) / (seconds / 4) for a, b in itertools.pairwise([0, *quarters])
        ],
        "mean_batch": written / batches if batches else 0.0,
        "python_cpu_percent": 100 * cpu / elapsed,
        "python_cpu_us_per_event": cpu / acked * 1e6,
        "server_cpu_us_per_event": (
            (server_after - server_before) / acked * 1e6
            if server_before is not None and server_after is not None
            else None
        ),
        "counters": queue.counters.snapshot(queue.queued),
    }


async def bench_queue_fixed_rate(
    pool: asyncpg.Pool[Any],
    ids: list[uuid.UUID],
    seconds: float,
    rate: float,
    **queue_args: Any,
) -> dict[str, Any]:
    """Open loop: each supervisor submits on its own schedule, `rate` events/s in all."""
    queue = PersistenceQueue(EventStore(pool), **queue_args)
    latencies: list[float] = []
    # How late each submission is against its schedule: the load generator's own lag,
    # which shares the event loop with the queue (not counted in the latencies).
    lags: list[float] = []
    interval = len(ids) / rate
    perf = time.perf_counter

    async def supervisor(workload: Workload, offset: float, start: float, end: float) -> None:
        next_at = start + offset
        while next_at < end:
            delay = next_at - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            event = workload.event()
            submitted = perf()
            lags.append(submitted - next_at)
            await queue.submit(event)
            latencies.append(perf() - submitted)
            next_at += interval

    async def settle(start: float) -> None:
        # The supervisors' tasks and workloads (about 37,000 objects) were made a moment
        # ago; the garbage collector's clock (throughput_mode) would walk them all in its
        # first young collection inside the window, an 8-12 ms pause. In a daemon the
        # supervisors are older than that, so they are moved to the old generation first.
        await asyncio.sleep(max(0.0, start - 0.1 - perf()))
        gc.collect(1)

    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        workloads = [Workload(sid, 10_000 + n) for n, sid in enumerate(ids)]
        start = perf() + 0.2
        end = start + seconds
        async with anyio.create_task_group() as run:
            for n, w in enumerate(workloads):
                run.start_soon(supervisor, w, interval * n / len(ids), start, end)
            run.start_soon(settle, start)
        await queue.drain()
    return {
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "offered_per_s": rate,
        "events": len(latencies),
    }


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


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database() as dsn:
        pool = await open_pool(dsn, 10)
        try:
            # Each method gets supervisors of its own, fresh: a method must not pay for
            # the one measured before it.
            fresh = [await create_supervisors(pool, args.supervisors) for _ in range(3)]
            aged_ids = await create_supervisors(pool, args.supervisors, history_len=500, tasks=200)
            await pool.execute(ORIGINAL_TABLE)
            await pool.execute(ORIGINAL_ROWS, fresh[2], json.dumps(history(20)))
            await pool.execute("VACUUM ANALYZE")
            # The set-up wrote hundreds of MB: let their checkpoint happen now rather
            # than in the middle of the open loops (a latency spike of its own).
            await pool.execute("CHECKPOINT")
            queue_args = {
                "batch_size": args.batch_size,
                "lanes": args.lanes,
                "flush_delay_s": args.flush_delay_ms / 1000,
            }
            async with throughput_mode():  # as `supervisor-daemon run` does once started
                open_loops = [
                    await bench_queue_fixed_rate(
                        pool, fresh[0], args.open_loop_seconds, 5000.0, lanes=args.lanes
                    )
                    for _ in range(3)
                ]
                queue = await bench_queue(
                    pool, fresh[1], args.seconds, args.in_flight, **queue_args
                )
                aged = await bench_queue(pool, aged_ids, args.seconds, args.in_flight, **queue_args)
            fixed = {
                "p99_ms": statistics.median(r["p99_ms"] for r in open_loops),
                "p50_ms": statistics.median(r["p50_ms"] for r in open_loops),
            }
            naive = await bench_naive(pool, fresh[2], args.seconds)
            ceiling = await bench_copy(dsn, fresh[2], 200_000, 1000)
            # The targets were set on a 2-core machine that appends about 260,000
            # rows/s in 100-row batches: this run's figure, set beside it, tells how
            # fast this host is today.
            reference = await bench_copy(dsn, fresh[2], 200_000, 100)
        finally:
            await pool.close()
    result = {
        "supervisors": args.supervisors,
        "seconds": args.seconds,
        "events_per_s": round(queue["events_per_s"]),
        "events_per_s_by_quarter": [round(v) for v in queue["events_per_s_by_quarter"]],
        "p50_ack_ms": round(queue["p50_ack_ms"], 3),
        "p99_ack_ms": round(queue["p99_ack_ms"], 3),
        "p99_ack_ms_at_5k": round(fixed["p99_ms"], 3),
        "p99_ack_ms_at_5k_runs": [round(r["p99_ms"], 3) for r in open_loops],
        "p50_ack_ms_at_5k": round(fixed["p50_ms"], 3),
        "schedule_lag_p99_ms_at_5k": [round(r["lag_p99_ms"], 3) for r in open_loops],
        "aged_events_per_s": round(aged["events_per_s"]),
        "aged_vs_fresh": round(aged["events_per_s"] / queue["events_per_s"], 3),
        "aged_server_cpu_us_per_event": _round(aged["server_cpu_us_per_event"], 2),
        "mean_batch": round(queue["mean_batch"], 1),
        "python_cpu_percent": round(queue["python_cpu_percent"]),
        "python_cpu_us_per_event": round(queue["python_cpu_us_per_event"], 2),
        "server_cpu_us_per_event": _round(queue["server_cpu_us_per_event"], 2),
        "naive_events_per_s": round(naive["events_per_s"]),
        "speedup_vs_naive": round(queue["events_per_s"] / naive["events_per_s"], 2),
        "ceiling_rows_per_s": round(ceiling["rows_per_s"]),
        "copy_100_rows_per_s": round(reference["rows_per_s"]),
        "queue_vs_ceiling": round(queue["events_per_s"] / ceiling["rows_per_s"], 3),
        "machine": machine(),
    }
    print(f"{'method':<34}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'queue (closed loop)':<34}{result['events_per_s']:>12,}"
        f"{result['p50_ack_ms']:>10}{result['p99_ack_ms']:>10}"
    )
    print(
        f"{'queue, aged supervisors':<34}{result['aged_events_per_s']:>12,}"
        f"{round(aged['p50_ack_ms'], 3):>10}{round(aged['p99_ack_ms'], 3):>10}"
    )
    print(
        f"{'queue at 5,000 events/s offered':<34}{'':>12}"
        f"{result['p50_ack_ms_at_5k']:>10}{result['p99_ack_ms_at_5k']:>10}"
        f"  (median of {result['p99_ack_ms_at_5k_runs']})"
    )
    print(
        "  the load generator's own lag behind its schedule, p99 of each run (ms):"
        f" {result['schedule_lag_p99_ms_at_5k']}"
    )
    print(f"{'one UPDATE per save point (pool 10)':<34}{result['naive_events_per_s']:>12,}")
    print(f"{'COPY ceiling (rows/s)':<34}{result['ceiling_rows_per_s']:>12,}")
    print(f"{'COPY, 100-row batches (rows/s)':<34}{result['copy_100_rows_per_s']:>12,}")
    print(
        f"CPU per acknowledged event: daemon {result['python_cpu_us_per_event']} us,"
        f" PostgreSQL {result['server_cpu_us_per_event']} us"
        f" (aged supervisors: {result['aged_server_cpu_us_per_event']} us)"
    )
    print(
        f"speedup vs naive: {result['speedup_vs_naive']}x; "
        f"queue / COPY ceiling: {result['queue_vs_ceiling']}; "
        f"mean batch: {result['mean_batch']} events"
    )
    by_quarter = ", ".join(f"{v:,}" for v in result["events_per_s_by_quarter"])
    print(f"closed loop by quarter of the run (events/s): {by_quarter}")
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--open-loop-seconds", type=float, default=8.0, help="each of the three open-loop runs"
    )
    parser.add_argument("--supervisors", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--flush-delay-ms", type=float, default=0.0)
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument(
        "--in-flight",
        type=int,
        default=8,
        help="save points each supervisor keeps awaiting their ack",
    )
    args = parser.parse_args()
    run(main, args)


if __name__ == "__main__":
    cli()
