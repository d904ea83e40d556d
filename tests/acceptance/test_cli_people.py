"""The CLI people type: id prefixes, readable pages, --json everywhere, choices by number."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from daemon.models import SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore, Store
from tests.factories import new_question, new_state
from tests.processes import run_cli
from tests.queues import ask, running, spawn


async def test_prefixes_choices_by_number_and_a_readable_show(
    dsn: str, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    one = uuid.UUID("c0ffee00-0000-4000-8000-000000000001")
    two = uuid.UUID("c0ffee00-0000-4000-8000-000000000002")
    for supervisor_id in (one, two):
        await store.save_supervisor_state_full(new_state(id=supervisor_id, agent="demo"))
    question = new_question(choices=("yes", "no"), question="Ship <it>?")
    await ask(pool, one, question)
    task = await spawn(pool, one, spec={"command": "make build"})
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        await queue.submit(events.activity_reported(one, "reading the contract"))

    ambiguous = run_cli("supervisors", "show", "c0ffee", env=env)
    assert ambiguous.returncode == 1
    error = ambiguous.stderr.strip()
    assert error.startswith("supervisor-daemon: error: c0ffee is the start of several")
    assert str(one) in error
    assert str(two) in error
    missing = run_cli("history", "dead", env=env)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "supervisor-daemon: error: no supervisor id starts with dead",
    )
    too_short = run_cli("answer", "c0f", "yes", env=env)
    assert too_short.returncode == 2
    assert "at least 4 hex digits" in too_short.stderr

    shown = run_cli("supervisors", "show", str(one).upper(), env=env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"supervisor    {one}" in text
    assert "pending questions (1)" in text
    assert "Ship <it>?" in text
    assert "choices: 1 yes, 2 no" in text
    assert f"{task.id}  pending" in text
    assert "activity_reported" in text
    as_json = json.loads(run_cli("supervisors", "show", str(one), "--json", env=env).stdout)
    assert as_json["id"] == str(one)
    assert [t["id"] for t in as_json["tasks"]] == [str(task.id)]
    assert as_json["journal"]["length"] == 3

    answered = run_cli("answer", str(question.id)[:8], "2", env=env)
    assert answered.returncode == 0, answered.stderr
    assert await pool.fetchval("SELECT answer FROM question_answers") == "no"
    done = run_cli("tasks", "complete", str(task.id)[:5], env=env)
    assert done.returncode == 0, done.stderr
    history = run_cli("history", str(one).replace("-", ""), "--json", env=env)
    assert [entry["kind"] for entry in json.loads(history.stdout)] == [
        "question_asked",
        "task_spawned",
        "activity_reported",
    ]


async def test_listings_filter_and_speak_json(dsn: str, store: Store) -> None:
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    review = new_state(phase="review", state=SupervisorStateKind.WORKING)
    blocked = new_state(phase="review", state=SupervisorStateKind.BLOCKED, error_message="loop")
    for state in (new_state(), review, blocked):
        await store.save_supervisor_state_full(state)

    listed = run_cli("supervisors", "list", "--phase", "review", "--json", env=env)
    assert {s["id"] for s in json.loads(listed.stdout)} == {str(review.id), str(blocked.id)}
    only = run_cli("supervisors", "list", "--state", "blocked", "--phase", "review", env=env)
    assert str(blocked.id) in only.stdout
    assert str(review.id) not in only.stdout
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    assert status["supervisors"] == {"blocked": 1, "initializing": 1, "working": 1}
    questions = run_cli("questions", "list", "--json", env=env)
    assert json.loads(questions.stdout) == []
    migrations = json.loads(run_cli("migrate", "--status", "--json", env=env).stdout)
    assert {m["state"] for m in migrations} == {"applied"}
