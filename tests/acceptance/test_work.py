"""Tasks, answers and agents at work, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.models import QuestionType, SupervisorStateKind, TaskStatus
from daemon.persistence.queue import PersistenceQueue
from daemon.runtime.host import Host
from daemon.store import EventStore, Store, WorkStore
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner
from tests.factories import new_question, new_state, own
from tests.processes import run_cli
from tests.queues import ask, running, spawn


async def _task_row(pool: asyncpg.Pool[Any], task_id: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM supervisor_tasks WHERE id = $1", task_id
    )
    assert row is not None
    return row


# -- the CLI, with no daemon running -------------------------------------------------------


async def test_answer_cli_checks_and_records(
    dsn: str, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    question = new_question(choices=("yes", "no"))
    await ask(pool, state.id, question)
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}

    unknown = run_cli("answer", str(uuid.uuid4()), "yes", env=env)
    assert unknown.returncode == 1
    assert "no supervisor waits on question" in unknown.stderr
    wrong = run_cli("answer", str(question.id), "perhaps", env=env)
    assert wrong.returncode == 1
    assert "not among the choices" in wrong.stderr
    assert await pool.fetchval("SELECT count(*) FROM question_answers") == 0

    ok = run_cli("answer", str(question.id), "yes", "--by", "alice", env=env)
    assert ok.returncode == 0, ok.stderr
    row = await pool.fetchrow("SELECT * FROM question_answers WHERE question_id = $1", question.id)
    assert row is not None
    assert (row["answer"], row["answered_by"], row["applied_at"]) == ("yes", "alice", None)
    twice = run_cli("answer", str(question.id), "no", env=env)
    assert twice.returncode == 1
    assert "already answered" in twice.stderr

    listed = run_cli("questions", "list", env=env)
    assert str(question.id) in listed.stdout


async def test_tasks_complete_cli(dsn: str, store: Store, pool: asyncpg.Pool[Any]) -> None:
    state = await store.save_supervisor_state_full(new_state())
    task = await spawn(pool, state.id, spec={"kind": "external"})
    env = {"SUPERVISOR_DAEMON_DATABASE_URL": dsn}
    missing = run_cli("tasks", "complete", str(uuid.uuid4()), env=env)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    bad = run_cli("tasks", "complete", str(task.id), "--result", "{nope", env=env)
    assert bad.returncode == 1
    assert "not JSON" in bad.stderr
    done = run_cli("tasks", "complete", str(task.id), "--result", '{"pr": 42}', env=env)
    assert done.returncode == 0, done.stderr
    row = await _task_row(pool, task.id)
    assert (row["status"], row["result"]) == ("succeeded", {"pr": 42})
    again = run_cli("tasks", "complete", str(task.id), "--status", "failed", env=env)
    assert again.returncode == 1
    assert "already finished" in again.stderr


# -- the task runner ------------------------------------------------------------------------


async def test_command_tasks_run_with_their_outcome(
    pool: asyncpg.Pool[Any], store: Store, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    ok = await spawn(pool, state.id, spec={"command": "echo hello; echo world"})
    bad = await spawn(pool, state.id, spec={"command": "echo oops >&2; exit 3"})
    slow = await spawn(pool, state.id, spec={"command": "sleep 30", "timeoutS": 0.3})
    await own(pool, "d1", state.id, epoch=1)
    ids: dict[str, Any] = {"supervisor_id": state.id, "contract_id": state.contract_id, "epoch": 1}
    outcomes: list[str] = []  # what the metrics count
    async with anyio.create_task_group() as tg:
        runner = TaskRunner(WorkStore(pool), tg, daemon_id="d1", finished=outcomes.append)
        for task in (ok, bad, slow):
            assert runner.start(task.id, task.spec, **ids)
        assert not runner.start(uuid.uuid4(), {"kind": "external"}, **ids)
    task_lines = [line for line in captured_logs if line["event"].startswith("task.")]
    assert len(task_lines) == 6  # started and finished, three times
    assert {(line["supervisor_id"], line["contract_id"]) for line in task_lines} == {
        (str(state.id), str(state.contract_id))
    }
    assert sorted(outcomes) == ["failed", "succeeded", "timed_out"]
    ok_row, bad_row, slow_row = [await _task_row(pool, t.id) for t in (ok, bad, slow)]
    assert ok_row["status"] == "succeeded"
    assert ok_row["result"] == {"exitCode": 0, "outputTail": "hello\nworld\n"}
    assert (bad_row["status"], bad_row["result"]["exitCode"]) == ("failed", 3)
    assert "oops" in bad_row["result"]["outputTail"]
    assert slow_row["status"] == "failed"
    assert "timed out" in slow_row["result"]["error"]


async def test_resume_fails_interrupted_tasks_and_starts_pending(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    await own(pool, "d1", state.id, epoch=2)
    interrupted = await spawn(pool, state.id, spec={"command": "echo again"})
    retryable = await spawn(pool, state.id, spec={"command": "true", "idempotent": True})
    pending = await spawn(pool, state.id, spec={"command": "true"})
    for task in (interrupted, retryable):  # started under the previous owner's epoch
        await pool.execute(
            "UPDATE supervisor_tasks SET status = 'running', run_epoch = 1, runs = 1 WHERE id = $1",
            task.id,
        )
    outcomes: list[str] = []
    async with anyio.create_task_group() as tg:
        await TaskRunner(WorkStore(pool), tg, daemon_id="d1", finished=outcomes.append).resume()
    assert sorted(outcomes) == ["interrupted", "succeeded", "succeeded"]
    rows = {t.id: await _task_row(pool, t.id) for t in (interrupted, retryable, pending)}
    assert rows[interrupted.id]["status"] == "failed"
    assert "interrupted" in rows[interrupted.id]["result"]["error"]
    assert rows[retryable.id]["status"] == "succeeded"
    assert rows[pending.id]["status"] == "succeeded"


# -- the hub: LISTEN first, polling as fallback ---------------------------------------------


@pytest.mark.parametrize("listening", [True, False])
async def test_an_answer_wakes_its_waiter(
    dsn: str, pool: asyncpg.Pool[Any], store: Store, listening: bool
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    question = new_question()
    await ask(pool, state.id, question)
    hub = Hub(WorkStore(pool, dsn=dsn), poll_s=0.2 if not listening else 30)
    async with anyio.create_task_group() as tg:
        if listening:
            await tg.start(hub.run)
            with anyio.fail_after(10):
                while not hub.listening:
                    await anyio.sleep(0.01)
        waiter = asyncio.ensure_future(hub.wait_answer(question.id))
        await anyio.sleep(0.05)
        assert not waiter.done()
        assert await WorkStore(pool).record_answer(question.id, state.id, "yes", "bob")
        with anyio.fail_after(5):  # NOTIFY at once; polling within its interval
            assert await waiter == ("yes", "bob")
        tg.cancel_scope.cancel()


# -- agents in process ----------------------------------------------------------------------


async def scripted_agent(sup: Any) -> None:
    await sup.change_phase("implement")
    task = await sup.spawn_task({"command": "echo built"})
    statuses = await sup.wait_for_tasks([task])
    assert statuses[task] == "succeeded"
    answer = await sup.ask(
        "Ship?", choices=("yes", "no"), question_type=QuestionType.PHASE_CONFIRMATION
    )
    await sup.report_activity(f"operator said {answer}")
    await sup.complete()


async def broken_agent(sup: Any) -> None:
    await sup.report_activity("about to break")
    raise RuntimeError("the model hallucinated a file")


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on loopback that fails its first request."""
    received: list[dict[str, Any]] = []
    calls = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls["n"] += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if calls["n"] == 1:
                self.send_response(503)
            else:
                received.append(json.loads(body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


async def test_agents_drive_supervisors_durably(
    dsn: str,
    pool: asyncpg.Pool[Any],
    store: Store,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook
    await pool.execute(
        "INSERT INTO daemons (id, hostname, pid, version, lease_expires_at)"
        " VALUES ('d1', 'h', 1, '0', now() + interval '1 minute')"
    )
    good = await store.save_supervisor_state_full(
        new_state(agent="tests.acceptance.test_work:scripted_agent")
    )
    bad = await store.save_supervisor_state_full(
        new_state(agent="tests.acceptance.test_work:broken_agent")
    )
    missing = await store.save_supervisor_state_full(new_state(agent="no.such.module:run"))
    await pool.execute("UPDATE supervisor_states SET owner_daemon_id = 'd1'")
    hub = Hub(WorkStore(pool, dsn=dsn), poll_s=0.1)
    async with running(PersistenceQueue(EventStore(pool))) as queue, \
            anyio.create_task_group() as tg:  # fmt: skip
        await tg.start(hub.run)
        work = WorkStore(pool)
        delivery = Delivery(work, tg, webhook_url=url)
        runner = TaskRunner(work, tg, daemon_id="d1")
        host = Host(Store(pool), work, "d1", queue=queue, hub=hub, runner=runner,
                    delivery=delivery, tg=tg)  # fmt: skip
        assert await host.start({}) == 3
        with anyio.fail_after(20):
            while not await pool.fetchval(
                "SELECT pending_questions <> '[]' FROM supervisor_states WHERE id = $1", good.id
            ):
                await anyio.sleep(0.05)
        pending = await store.get_supervisor(good.id)
        assert pending is not None
        (question,) = pending.pending_questions
        assert pending.state is SupervisorStateKind.WAITING_FOR_USER
        assert await WorkStore(pool).record_answer(question.id, good.id, "yes", "carol")
        with anyio.fail_after(20):
            while host.running or not received:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    final = {s.id: s for s in await store.list_supervisors()}
    assert final[good.id].state is SupervisorStateKind.COMPLETED
    assert final[good.id].current_activity == "operator said yes"
    assert final[good.id].pending_task_ids == ()
    assert final[bad.id].state is SupervisorStateKind.FAILED
    assert "hallucinated" in str(final[bad.id].error_message)
    assert final[missing.id].state is SupervisorStateKind.FAILED
    assert "cannot be imported" in str(final[missing.id].error_message)
    assert [hook["questionId"] for hook in received] == [str(question.id)]
    task_ids = final[good.id].spawned_task_ids
    assert [(await _task_row(pool, t))["status"] for t in task_ids] == [TaskStatus.SUCCEEDED]


async def test_restoration_redeliveries_reach_the_webhook(
    pool: asyncpg.Pool[Any], webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    from daemon.models import SupervisorRestorationContext

    url, received = webhook
    question = new_question()
    sid = uuid.uuid4()
    async with anyio.create_task_group() as tg:
        Delivery(WorkStore(pool), tg, webhook_url=url).webhook_redeliveries({
            sid: SupervisorRestorationContext(success=True, pending_questions=(question,)),
        })  # fmt: skip
    assert [(hook["questionId"], hook["redelivery"]) for hook in received] == [
        (str(question.id), True)
    ]
