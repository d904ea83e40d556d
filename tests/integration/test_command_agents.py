"""Command agents: the JSON-lines protocol, fuzzed, and real agent processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, cast

import anyio
import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.agents.command import Session
from daemon.agents.supervisor import Supervisor
from daemon.models import SupervisorStateKind
from daemon.persistence.queue import PersistenceQueue
from daemon.runtime.host import Host
from daemon.store import EventStore, Store, WorkStore
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner
from tests.factories import json_values, new_state
from tests.queues import running

AGENT = Path(__file__).parents[1] / "agents" / "scripted.py"


class FakeSupervisor:
    """Accepts every call; the fuzz test is about the protocol layer, not durability."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return {} if name == "wait_for_tasks" else uuid.uuid4()

        if name == "report_progress":
            return lambda *a, **k: self.calls.append(name)
        return call


requests = st.fixed_dictionaries(
    {"type": st.sampled_from(["spawn_task", "wait_for_tasks", "ask", "await_answer",
                              "change_phase", "report_activity", "report_progress",
                              "append_message", "complete", "fail", "teleport"])},
    optional={"id": json_values, "phase": json_values, "activity": json_values,
              "progress": json_values, "question": json_values, "choices": json_values,
              "questionType": json_values, "questionId": json_values, "taskIds": json_values,
              "errorMessage": json_values, "spec": json_values, "awaited": json_values},
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(line=st.binary(max_size=200) | requests.map(lambda r: json.dumps(r).encode()))
def test_any_line_gets_a_reply_and_never_raises(line: bytes) -> None:
    async def check() -> None:
        reply = await Session(cast(Supervisor, FakeSupervisor())).handle(line)
        assert reply["type"] in {"result", "error"}
        if reply["type"] == "error":
            assert isinstance(reply["error"], str)

    anyio.run(check)


async def _host_run(
    dsn: str, pool: asyncpg.Pool[Any], agent: str, until: Any
) -> dict[uuid.UUID, Any]:
    await pool.execute(
        "INSERT INTO daemons (id, hostname, pid, version, lease_expires_at)"
        " VALUES ('d1', 'h', 1, '0', now() + interval '1 minute')"
        " ON CONFLICT DO NOTHING"
    )
    state = await Store(pool).save_supervisor_state_full(new_state(agent=agent))
    await pool.execute("UPDATE supervisor_states SET owner_daemon_id = 'd1'")
    hub = Hub(WorkStore(pool, dsn=dsn), poll_s=0.1)
    async with running(PersistenceQueue(EventStore(pool))) as queue, \
            anyio.create_task_group() as tg:  # fmt: skip
        await tg.start(hub.run)
        host = Host(
            Store(pool),
            WorkStore(pool),
            "d1",
            queue=queue,
            hub=hub,
            runner=TaskRunner(WorkStore(pool), tg, daemon_id="d1"),
            delivery=Delivery(WorkStore(pool), tg),
            tg=tg,
        )
        assert await host.start({}) == 1
        with anyio.fail_after(30):
            await until(state.id)
            while host.running:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    return {s.id: s for s in await Store(pool).list_supervisors()}


async def test_a_command_agent_survives_garbage_and_completes(
    dsn: str, pool: asyncpg.Pool[Any]
) -> None:
    async def answer_when_asked(sid: uuid.UUID) -> None:
        while True:
            state = await Store(pool).get_supervisor(sid)
            if state is not None and state.pending_questions:
                await WorkStore(pool).record_answer(
                    state.pending_questions[0].id, sid, "yes", "tester"
                )
                return
            await anyio.sleep(0.05)

    agent = f"cmd:{sys.executable} -u {AGENT} work"
    final = next(iter((await _host_run(dsn, pool, agent, answer_when_asked)).values()))
    assert final.state is SupervisorStateKind.COMPLETED, final.error_message
    assert final.current_activity == "answer was yes"
    note = final.conversation_history[-1]
    # not JSON, unknown type, not an object, too long: four error replies
    assert note == {"errorsSeen": 4, "first": "start", "task": "succeeded"}


async def test_a_killed_agent_is_restarted_with_a_restoration_context(
    dsn: str, pool: asyncpg.Pool[Any]
) -> None:
    async def kill_it(sid: uuid.UUID) -> None:
        while True:
            state = await Store(pool).get_supervisor(sid)
            if state is not None and (state.current_activity or "").startswith("pid "):
                os.kill(int(str(state.current_activity)[4:]), signal.SIGKILL)
                return
            await anyio.sleep(0.05)

    agent = f"cmd:{sys.executable} -u {AGENT} die-once"
    final = next(iter((await _host_run(dsn, pool, agent, kill_it)).values()))
    assert final.state is SupervisorStateKind.COMPLETED, final.error_message
    restoration = final.conversation_history[-1]["restoration"]
    assert "restarted because its agent process exited with code -9" in restoration
    assert "Phase: plan" in restoration


@pytest.mark.parametrize("agent", ["cmd:", "cmd:/no/such/binary"])
async def test_an_agent_that_cannot_start_does_not_crash_the_host(
    dsn: str, pool: asyncpg.Pool[Any], agent: str
) -> None:
    async def nothing(_: uuid.UUID) -> None:
        return

    final = next(iter((await _host_run(dsn, pool, agent, nothing)).values()))
    assert final.state is SupervisorStateKind.FAILED
    assert "cannot" in str(final.error_message) or "names no command" in str(final.error_message)


def test_the_schema_names_every_request_the_daemon_serves() -> None:
    schema = json.loads(
        (Path(__file__).parents[2] / "docs" / "agent-protocol.schema.json").read_text()
    )
    documented = {
        option["properties"]["type"]["const"] for option in schema["$defs"]["agentRequest"]["oneOf"]
    }
    assert documented == set(Session(cast(Supervisor, FakeSupervisor())).handlers)
