"""End to end: the real daemon process meets bad input and keeps running.

A command agent's bad spawn_task gets an error reply while the daemon and the other
supervisors go on; a supervisor row holding a number the JSON decoder refuses is parked
with its named issue while the others are restored.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.models import SupervisorStateKind
from daemon.store import Store
from tests.daemonlog import LogLines
from tests.factories import new_question, new_state
from tests.processes import daemon_process, run_cli

pytestmark = pytest.mark.acceptance

AGENT = Path(__file__).parents[1] / "agents" / "scripted.py"
DEADLINE_S = 60.0


async def _state_of(
    proc: subprocess.Popen[str], pool: asyncpg.Pool[Any], sid: Any, wanted: str
) -> asyncpg.Record:
    with anyio.fail_after(DEADLINE_S):
        while True:
            assert proc.poll() is None, f"the daemon exited with {proc.returncode}"
            row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", sid)
            assert row is not None
            if row["state"] == wanted:
                found: asyncpg.Record = row
                return found
            assert row["state"] not in ("failed", "blocked"), row["error_message"]
            await anyio.sleep(0.05)


async def test_a_bad_spawn_task_gets_an_error_reply_and_the_daemon_goes_on(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    store = Store(pool)
    bad = await store.save_supervisor_state_full(
        new_state(agent=f"cmd:{sys.executable} -u {AGENT} bad-spec", conversation_history=())
    )
    other = await store.save_supervisor_state_full(
        new_state(agent=f"cmd:{sys.executable} -u {AGENT} ask", conversation_history=())
    )
    with daemon_process(dsn, tmp_path) as proc:
        log = LogLines(proc)
        log.until("daemon.ready")
        row = await _state_of(proc, pool, bad.id, "completed")
        reply = row["conversation_history"][-1]["reply"]
        assert (reply["type"], reply["id"]) == ("error", "bad")
        assert "timeoutS" in reply["error"]
        # The other supervisor still progresses after the refused request.
        waiting = await _state_of(proc, pool, other.id, "waiting_for_user")
        question_id = waiting["pending_questions"][0]["id"]
        answered = run_cli(
            "answer", question_id, "yes", env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
        )
        assert answered.returncode == 0, answered.stderr
        assert (await _state_of(proc, pool, other.id, "completed"))["current_activity"] == (
            "answer was yes"
        )
        assert proc.poll() is None  # still running
        proc.send_signal(signal.SIGTERM)
        log.until("daemon.stopped")
        assert proc.wait(timeout=DEADLINE_S) == 0
        log.close()
    assert not [line for line in log.seen if line["event"] == "daemon.crashed"]
    refused = [line for line in log.seen if line["event"] == "agent.bad_request"]
    assert len(refused) == 1
    assert "timeoutS" in refused[0]["error"]
    tasks = await pool.fetch("SELECT spec, status FROM supervisor_tasks")
    assert [(t["spec"], t["status"]) for t in tasks] == [({"command": "echo fine"}, "succeeded")]


async def test_a_row_the_decoder_refuses_is_parked_and_the_others_restored(
    dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    store = Store(pool)
    good = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    odd = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    # As another tool may write them: a number no double holds in a pending question
    # of one (read at restoration: parked) and in a message of the other (messages are
    # read when an agent pages them: restored).
    await pool.execute(
        "UPDATE supervisor_states SET state = 'waiting_for_user', pending_questions ="
        " jsonb_build_array($2::jsonb || '{\"weight\": 1e400}'::jsonb) WHERE id = $1",
        odd.id,
        new_question().to_json(),
    )
    await pool.execute(
        "UPDATE supervisor_states SET conversation_history ="
        ' \'[{"role": "tool", "content": 1e400}]\' WHERE id = $1',
        good.id,
    )
    with daemon_process(dsn, tmp_path) as proc:
        log = LogLines(proc)
        seen = log.until("daemon.ready")
        restored = {
            line["supervisor_id"]: line for line in seen if line["event"] == "supervisor.restored"
        }
        assert restored[str(good.id)]["outcome"] == "restored"
        assert restored[str(odd.id)]["outcome"] == "blocked"
        assert any("non-finite number" in issue for issue in restored[str(odd.id)]["issues"])
        listed = run_cli(
            "supervisors", "list", "--state", "blocked",
            env={"SUPERVISOR_DAEMON_DATABASE_URL": dsn},
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert str(odd.id) in listed.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
        log.close()
    rows = {
        row["id"]: row
        for row in await pool.fetch(
            "SELECT id, state, error_message, restoration_count FROM supervisor_states"
        )
    }
    assert (rows[good.id]["state"], rows[good.id]["restoration_count"]) == ("working", 1)
    assert rows[odd.id]["state"] == "blocked"
    assert "non-finite number" in rows[odd.id]["error_message"]
