"""Bad input fails the one request, task or supervisor it belongs to, on real PostgreSQL.

An agent's bad request is refused before anything is recorded; a task spec read back
from the database that the runner cannot run fails that task; a question of any script
is asked once and delivered with a bounded preview; a NOTIFY that fails never fails the
question; a value the JSON decoder refuses parks its supervisor and no other.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from daemon.store import Store
from tests.factories import new_question, new_state
from tests.processes import run_cli
from tests.queues import ask


async def test_an_answer_too_long_to_record_is_refused_by_the_cli(
    dsn: str, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    question = new_question(choices=())
    await ask(pool, state.id, question)
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    refused = run_cli("answer", str(question.id), "é" * 40_000, env=env)
    assert refused.returncode == 1
    assert "answer is 80,000 bytes of UTF-8; at most 65,536 are allowed" in refused.stderr
    assert run_cli("answer", str(question.id), "é" * 30_000, env=env).returncode == 0
