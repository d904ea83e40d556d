"""`supervisor-daemon questions follow`: the pending questions, then each one a daemon
delivers (NOTIFY supervisor_questions), once each, until Ctrl-C; a question whose NOTIFY
carries only a preview is printed whole, read by its id."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from daemon.models import SupervisorStateKind
from daemon.store import Store, WorkStore
from daemon.work.delivery import notify_body
from tests.factories import new_question, new_state
from tests.processes import cli_env
from tests.queues import ask

pytestmark = pytest.mark.asyncio

DEADLINE_S = 30.0


class Follower:
    """The command as a real process, its stdout read line by line with a deadline."""

    def __init__(self, dsn: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "questions", "follow", "--json"],
            env=cli_env({"SUPERVISOR_DAEMON_DATABASE_URL": dsn}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def next(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=DEADLINE_S)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no line; stderr: {self.process.communicate()[1]}") from None
        value: dict[str, Any] = json.loads(line)
        return value

    def nothing_more(self) -> bool:
        return self._lines.empty()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=DEADLINE_S)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


async def _notify(pool: asyncpg.Pool[Any], supervisor_id: uuid.UUID, redelivery: bool) -> str:
    question = new_question()
    await WorkStore(pool).notify_question(notify_body(supervisor_id, question, redelivery))
    return str(question.id)


async def test_follow_shows_pending_then_new_questions_once_and_stops_on_ctrl_c(
    dsn: str, pool: asyncpg.Pool[Any], store: Store
) -> None:
    # Answered while no daemon ran (not applied yet): it waits for nobody, so it is not
    # shown, though it was asked first.
    answered = new_question(asked_at=datetime.now(UTC) - timedelta(hours=1))
    waiting = new_question()
    state = new_state(
        state=SupervisorStateKind.WAITING_FOR_USER, pending_questions=(answered, waiting)
    )
    await store.save_supervisor_state_full(state)
    assert await WorkStore(pool).record_answer(answered.id, state.id, "yes", "ops")
    follower = Follower(dsn)
    try:
        first = follower.next()  # printed after LISTEN: what follows is not missed
        assert (first["questionId"], first["supervisorId"]) == (str(waiting.id), str(state.id))
        assert first["question"] == waiting.question

        asked = await _notify(pool, state.id, redelivery=False)
        await _notify(pool, state.id, redelivery=True)  # a new question, redelivered
        # The pending one again, as a restoration redelivers it.
        await WorkStore(pool).notify_question(notify_body(state.id, waiting, True))
        last = await _notify(pool, state.id, redelivery=False)
        shown = [follower.next()["questionId"] for _ in range(3)]
        assert shown[0] == asked
        assert shown[2] == last
        assert str(waiting.id) not in shown  # shown once, at the start
        assert str(answered.id) not in shown

        follower.process.send_signal(signal.SIGINT)
        assert follower.process.wait(timeout=DEADLINE_S) == 0
        assert follower.nothing_more()
    finally:
        follower.close()


async def test_follow_exits_69_when_its_connection_is_lost(
    dsn: str, pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = new_state(
        state=SupervisorStateKind.WAITING_FOR_USER, pending_questions=(new_question(),)
    )
    await store.save_supervisor_state_full(state)
    follower = Follower(dsn)
    try:
        follower.next()  # listening
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
        assert killed == 1
        code = follower.process.wait(timeout=DEADLINE_S)
        assert follower.process.stderr is not None
        error = follower.process.stderr.read().strip().splitlines()
        assert code == 69, "\n".join(error)
        assert error == ["supervisor-daemon: error: lost the connection to the database"]
    finally:
        follower.close()


async def test_follow_prints_a_long_question_whole_and_a_gone_one_as_its_preview(
    dsn: str, pool: asyncpg.Pool[Any], store: Store
) -> None:
    waiting = new_question()
    state = new_state(state=SupervisorStateKind.WAITING_FOR_USER, pending_questions=(waiting,))
    await store.save_supervisor_state_full(state)
    follower = Follower(dsn)
    try:
        assert follower.next()["questionId"] == str(waiting.id)  # listening from now on
        long = new_question(question="Déployer ce changement ? " * 400, context="le plan")
        await ask(pool, state.id, long)
        await WorkStore(pool).notify_question(notify_body(state.id, long, False))
        shown = follower.next()
        assert (shown["questionId"], shown["question"]) == (str(long.id), long.question)
        assert shown["context"] == "le plan"
        # One answered before it was read: its preview, marked as such.
        gone = new_question(question="Encore ? " * 2000)
        await WorkStore(pool).notify_question(notify_body(state.id, gone, False))
        preview = follower.next()
        assert (preview["questionId"], preview["truncated"]) == (str(gone.id), True)
        assert gone.question.startswith(preview["question"].rstrip("\u2026"))
        assert len(json.dumps(preview, ensure_ascii=False).encode()) < 8000
    finally:
        follower.close()
