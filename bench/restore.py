"""Benchmark: restoring every supervisor at start, for N = 1,000, 10,000 and 100,000.

Each N gets a fresh database on one embedded PostgreSQL: N supervisors with a
20-message conversation history; 10 % wait for an answer to a pending question, 5 %
wait for two tasks (one finished while no daemon ran, one still running), 1 % are
invalid with a valid checkpoint to fall back to, 0.5 % invalid without one. The time
is from "start restoring" (claim) to "every supervisor has an outcome" (written,
questions redelivered, one log line each, as `supervisor-daemon run` does; the log
goes to /dev/null). Peak memory is the process's peak RSS after each N.

Usage (from the repository root): python -m bench.restore [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench._setup import history, machine, open_pool, run
from daemon.db import embedded, migrations
from daemon.db.database import ensure_database
from daemon.restoration.run import restore_all
from daemon.store import DaemonRegistry, RestorationStore

# Server-side generation: fast for 100,000 rows, and the same shape for every N.
FILL = """
WITH made AS (
    INSERT INTO supervisors (id, contract_id, task_id, phase, state, progress,
                             current_activity, owner_daemon_id, owner_epoch, message_seq)
    SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'implement', 'working',
           40, 'writing code', 'bench', 1, jsonb_array_length($2::text::jsonb)
    FROM generate_series(1, $1)
    RETURNING id
)
INSERT INTO supervisor_messages (supervisor_id, seq, message)
SELECT made.id, m.seq, m.message::json
FROM made
CROSS JOIN jsonb_array_elements($2::text::jsonb) WITH ORDINALITY AS m(message, seq)
"""
QUESTIONS = """
UPDATE supervisors SET state = 'waiting_for_user',
    pending_questions = jsonb_build_array(jsonb_build_object(
        'id', gen_random_uuid(), 'question', 'Proceed to review?',
        'choices', jsonb_build_array('yes', 'no'), 'context', NULL,
        'questionType', 'phase_confirmation', 'askedAt', now()))
WHERE id IN (SELECT id FROM supervisors ORDER BY id LIMIT $1)
"""
TASKS = """
WITH chosen AS (
    SELECT id FROM supervisors ORDER BY id DESC LIMIT $1
), made AS (
    INSERT INTO supervisor_tasks (id, supervisor_id, status, spawn_seq)
    SELECT gen_random_uuid(), c.id, s.status, s.seq
    FROM chosen c CROSS JOIN (VALUES ('succeeded', 1), ('running', 2)) AS s(status, seq)
    RETURNING id, supervisor_id
)
UPDATE supervisors s SET state = 'waiting_for_tasks', task_seq = 2, pending_task_ids = t.ids
FROM (SELECT supervisor_id, array_agg(id) AS ids FROM made GROUP BY supervisor_id) t
WHERE s.id = t.supervisor_id
"""
INVALID = """
WITH chosen AS (
    SELECT id FROM supervisors WHERE state = 'working'
    ORDER BY contract_id LIMIT $1 OFFSET $2
), saved AS (
    INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot, message_seq, task_seq)
    SELECT s.id, s.phase, to_jsonb(s), s.message_seq, s.task_seq
    FROM supervisors s JOIN chosen c ON c.id = s.id
    WHERE $3
)
UPDATE supervisors s SET state = 'waiting_for_user'  -- with no question: invalid
FROM chosen c WHERE s.id = c.id
"""


async def prepare(admin_dsn: str, base_dsn: str, n: int) -> str:
    name = f"bench_restore_{n}"
    await ensure_database(admin_dsn, name)
    dsn = base_dsn.replace("/bench?", f"/{name}?")
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn)
        await conn.execute(
            "INSERT INTO daemons (id, hostname, pid, version, lease_expires_at)"
            " VALUES ('bench', 'h', 1, '0', now() + interval '1 hour')"
            " ON CONFLICT (id) DO NOTHING"
        )
        await conn.execute(FILL, n, json.dumps(history(20)))
        await conn.execute(QUESTIONS, n // 10)
        await conn.execute(TASKS, n // 20)
        await conn.execute(INVALID, n // 100, 0, True)  # 1 %: invalid, with a checkpoint
        await conn.execute(INVALID, n // 200, n // 100, False)  # 0.5 %: invalid, none
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return dsn


async def measure(dsn: str) -> dict[str, Any]:
    pool = await open_pool(dsn, 4)
    try:
        await DaemonRegistry(pool).register(
            "bench", hostname="h", pid=os.getpid(), version="0", lease_s=3600
        )
        started = time.perf_counter()
        summary = await restore_all(RestorationStore(pool), "bench")
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "supervisors": summary.supervisors,
        "restore_s": round(elapsed, 3),
        "per_supervisor_us": round(elapsed / max(summary.supervisors, 1) * 1e6, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "actions": summary.by_action,
        "outcomes": summary.by_outcome,
        "questions_redelivered": summary.questions_redelivered,
    }


async def main(sizes: list[int]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sd-bench-restore-"))
    handle = embedded.start(root)
    results: dict[int, dict[str, Any]] = {}
    try:
        admin = embedded.database_url(handle, "postgres")
        base = embedded.database_url(handle, "bench")
        for n in sizes:
            dsn = await prepare(admin, base, n)
            results[n] = await measure(dsn)
    finally:
        handle.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    print(f"{'supervisors':>12}{'restore s':>11}{'us/sup':>9}{'peak RSS MiB':>14}  actions")
    for n, r in results.items():
        print(
            f"{n:>12,}{r['restore_s']:>11}{r['per_supervisor_us']:>9}"
            f"{r['peak_rss_mib']:>14}  {r['actions']}"
        )
    headline = results.get(10_000) or next(iter(results.values()))
    out: dict[str, Any] = {
        "supervisors": headline["supervisors"],
        "restore_s": headline["restore_s"],
        "per_supervisor_us": headline["per_supervisor_us"],
        "restore_s_100k": results.get(100_000, {}).get("restore_s"),
        "by_size": {
            str(n): {k: r[k] for k in ("restore_s", "per_supervisor_us", "peak_rss_mib")}
            for n, r in results.items()
        },
        "machine": machine(),
    }
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(part) for part in args.sizes.split(",")]
    run(main, sizes)


if __name__ == "__main__":
    cli()
