"""Questions across kill -9: every pending question is delivered again, an answer given
while no daemon ran is applied and not delivered again.

Nobody answers while a cycle runs, so every load supervisor ends up waiting on a
question. Then the daemon is killed (SIGKILL), a seeded random half of the pending
questions is answered with the real CLI (`supervisor-daemon answer`) while no daemon
runs, `supervisor-daemon questions follow --json` is started, and so is the daemon.
Held: each question still unanswered is redelivered (a `NOTIFY supervisor_questions`
with `"redelivery": true`, the channel `questions follow` listens to, seen by the
bench on a connection of its own) and is printed by `questions follow --json`; each
one answered while down is applied by the restoration (its answer marked applied, the
question no longer pending) and neither redelivered nor printed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import asyncpg

from bench.campaigns.cluster import ROOT, Operator, Server, until
from bench.campaigns.rig import Rig, rig


@contextlib.asynccontextmanager
async def _listening(dsn: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every body NOTIFYed on the questions channel while inside."""
    bodies: list[dict[str, Any]] = []
    conn = await asyncpg.connect(dsn)
    await conn.add_listener(
        "supervisor_questions", lambda _c, _p, _ch, body: bodies.append(json.loads(str(body)))
    )
    try:
        yield bodies
    finally:
        await conn.close()


class _Follow:
    """`supervisor-daemon questions follow --json`, its lines as they come."""

    def __init__(self) -> None:
        self.printed: set[str] = set()  # question ids
        self.proc: anyio.abc.Process | None = None

    async def start(self, w: Rig, env: dict[str, str]) -> None:
        self.proc = await anyio.open_process(
            [sys.executable, "-m", "daemon", "questions", "follow", "--json"], env=env, cwd=ROOT,
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdout=subprocess.PIPE,
        )  # fmt: skip
        w.tg.start_soon(self._read, self.proc.stdout)

    async def _read(self, stdout: anyio.abc.ByteReceiveStream | None) -> None:
        if stdout is None:  # opened with a pipe: never
            return
        buffer = b""
        async for chunk in stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            self.printed |= {str(json.loads(line)["questionId"]) for line in lines if line.strip()}

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await self.proc.wait()


async def _pending(operator: Operator) -> dict[str, uuid.UUID]:
    """Unanswered pending questions: question id -> supervisor."""
    return {
        str(q.question.id): q.supervisor_id
        for q in await operator.services.pending_questions()
        if q.answer is None
    }


async def _cycle(
    w: Rig, operator: Operator, notified: list[dict[str, Any]], supervisors: int
) -> Counter[str]:
    """One kill with every supervisor waiting on a question; what came of it."""
    d = w.daemons[0]
    await d.wait_for("daemon.ready")
    pending: dict[str, uuid.UUID] = {}
    with anyio.fail_after(60):
        while len(set(pending.values())) < supervisors:
            await anyio.sleep(0.1)
            pending = await _pending(operator)
    d.kill()
    await d.wait_exit()
    ids = sorted(pending)
    down = set(w.rng.sample(ids, len(ids) // 2))
    for question_id in sorted(down):
        await anyio.run_process(
            [sys.executable, "-m", "daemon", "answer", question_id, "1"],
            env=d.env, cwd=ROOT, check=True,
        )  # fmt: skip
    follow = _Follow()
    await follow.start(w, d.env)
    before = len(notified)
    await d.start(w.tg)
    await d.wait_for("daemon.ready")
    still = set(ids) - down

    def redelivered() -> set[str]:
        return {b["questionId"] for b in notified[before:] if b.get("redelivery") is True}

    with contextlib.suppress(TimeoutError):
        await until(lambda: still <= redelivered(), 30, "redeliveries")
    with contextlib.suppress(TimeoutError):
        await until(lambda: still <= follow.printed, 30, "questions follow")
    await follow.stop()
    applied = await w.db.fetchval(
        "SELECT count(*) FROM question_answers WHERE question_id = ANY ($1::uuid[])"
        " AND applied_at IS NOT NULL",
        sorted(down),
    )
    return Counter({
        "questions_pending_before": len(still),
        "questions_redelivered": len(still & redelivered()),
        "questions_shown_on_follow": len(still & follow.printed),
        "answered_while_down": len(down),
        "answers_applied": int(applied),
        "answered_yet_redelivered": len(down & redelivered()),
        "answered_yet_shown_on_follow": len(down & follow.printed),
    })  # fmt: skip


async def run(
    server: Server, root: Path, seed: int, *, restarts: int, supervisors: int
) -> dict[str, Any]:
    async with rig(server, root, "questions", seed) as w, _listening(w.dsn) as notified:
        operator = w.operator
        if operator is None:
            raise RuntimeError("the rig has no operator")
        operator.answering = False
        await w.add_load(supervisors, interval_ms=20)
        d = w.daemon("questions")
        await d.start(w.tg)
        totals: Counter[str] = Counter()
        for _ in range(restarts):
            totals.update(await _cycle(w, operator, notified, supervisors))
        operator.answering = True
        await w.wait_for_acks(time.time())
        d.signal(signal.SIGTERM)
        await d.wait_exit()
        found = await w.verify()
        return {
            "question_restarts": restarts, **totals,
            "acked_events": found.acked, "lost_acked_events": found.lost,
            "duplicate_events": found.duplicates,
            "answers_missing": found.answers_missing + found.answers_twice,
        }  # fmt: skip
