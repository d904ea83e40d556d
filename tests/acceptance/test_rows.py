"""What grows with a supervisor's age is rows: messages, spawned tasks, checkpoint
positions; the supervisor_states view still reads (and writes) by the original names."""

from __future__ import annotations

import json
import uuid

import anyio

from daemon.store import Store
from tests.factories import new_message, new_state
from tests.processes import run_cli


async def test_history_messages_pages_the_conversation_for_people(dsn: str, store: Store) -> None:
    history = (*(new_message(n) for n in range(5)), ["not", "a", "chat", "message"])
    sid = (await store.save_supervisor_state_full(new_state(conversation_history=history))).id
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    first = await anyio.to_thread.run_sync(
        lambda: run_cli("history", str(sid), "--messages", "--limit", "2", env=env)
    )
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].split()[0] == "1"
    assert lines[0].endswith("user: message 0")
    assert lines[1].endswith("assistant: message 1")
    assert lines[-1] == "... 4 more: --after 2"
    last = await anyio.to_thread.run_sync(
        lambda: run_cli("history", str(sid), "--messages", "--after", "5", "--json", env=env)
    )
    assert last.returncode == 0, last.stderr
    assert [(m["seq"], m["message"]) for m in json.loads(last.stdout)] == [(6, history[5])]
    missing = await anyio.to_thread.run_sync(
        lambda: run_cli("history", str(uuid.uuid4()), "--messages", env=env)
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("does not exist")
