"""Bad input fails the one request, task or supervisor it belongs to, on real PostgreSQL.

An agent's bad request is refused before anything is recorded; a task spec read back
from the database that the runner cannot run fails that task; a question of any script
is asked once and delivered with a bounded preview; a NOTIFY that fails never fails the
question; a value the JSON decoder refuses parks its supervisor and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.agents.command import Session
from daemon.agents.supervisor import Supervisor
from daemon.db.pool import init_connection
from daemon.errors import TransientDatabaseError
from daemon.models import StateRecoveryAction, SupervisorStateKind, TaskStatus
from daemon.persistence.queue import PersistenceQueue
from daemon.store import EventStore, RestorationStore, Store, WorkStore
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner
from tests.factories import new_question, new_state, own
from tests.queues import ask, restore_outcomes, running

DEADLINE_S = 20


# A question and choices of a few thousand non-ASCII characters (3 bytes each in UTF-8).
LONG_QUESTION = "この変更を本番環境に反映してもよろしいですか" * 150


LONG_CHOICES = [f"{n}: " + "はい、確認しました。" * 120 for n in range(3)]


@contextlib.asynccontextmanager
async def supervisor_on(
    pool: asyncpg.Pool[Any], dsn: str, *, delivery_pool: asyncpg.Pool[Any] | None = None
) -> AsyncIterator[Supervisor]:
    """An in-process supervisor wired to the real queue, hub, runner and delivery."""
    state = await Store(pool).save_supervisor_state_full(new_state())
    await own(pool, "d1", state.id, epoch=state.owner_epoch)
    hub = Hub(WorkStore(pool, dsn=dsn), poll_s=0.1)
    async with running(PersistenceQueue(EventStore(pool))) as queue, \
            anyio.create_task_group() as tg:  # fmt: skip
        delivery = Delivery(WorkStore(delivery_pool or pool), tg)
        yield Supervisor(
            state, queue=queue, hub=hub, runner=TaskRunner(WorkStore(pool), tg, daemon_id="d1"),
            deliver=delivery.deliver,
        )  # fmt: skip
        tg.cancel_scope.cancel()


async def _pending_question_ids(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> list[str]:
    rows = await pool.fetch(
        "SELECT q->>'id' AS id FROM supervisor_states,"
        " jsonb_array_elements(pending_questions) AS q WHERE supervisor_states.id = $1",
        sid,
    )
    return [row["id"] for row in rows]


async def _wait_for_question(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> uuid.UUID:
    with anyio.fail_after(DEADLINE_S):
        while not (ids := await _pending_question_ids(pool, sid)):
            await anyio.sleep(0.02)
    (question_id,) = ids
    return uuid.UUID(question_id)


BAD_SPECS = [
    ({"command": "true", "timeoutS": "x"}, "timeoutS"),
    ({"command": "true", "timeoutS": -1}, "timeoutS"),
    ({"command": "true", "timeoutS": 10**9}, "timeoutS"),
    ({"command": "true", "idempotent": "yes"}, "idempotent"),
    ({"command": 42}, "command"),
    ({"command": "echo a\x00b"}, "NUL"),
    ({"note": "x" * 300_000}, "bytes"),
]


@pytest.mark.parametrize(("spec", "named"), BAD_SPECS)
async def test_a_bad_task_spec_is_refused_before_it_is_recorded(
    pool: asyncpg.Pool[Any], dsn: str, spec: Any, named: str
) -> None:
    async with supervisor_on(pool, dsn) as sup:
        with pytest.raises(ValueError, match=named):
            await sup.spawn_task(spec)
        # The same request from a command agent: an error reply naming the field.
        reply = await Session(sup).handle(
            json.dumps({"id": 7, "type": "spawn_task", "spec": spec}).encode()
        )
        assert reply["type"] == "error", reply
        assert reply["id"] == 7
        assert named in reply["error"]
        good = await sup.spawn_task({"command": "true"})
        assert (await sup.wait_for_tasks([good]))[good] == TaskStatus.SUCCEEDED
    assert await pool.fetchval("SELECT count(*) FROM supervisor_tasks") == 1
    assert sup.state.spawned_task_count == 1


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        ({"type": "ask", "question": "Pick", "choices": ["x" * 5000]}, "choices[0]"),
        ({"type": "ask", "question": "Pick", "choices": [str(n) for n in range(100)]}, "choices"),
        ({"type": "ask", "question": "é" * 40_000}, "question"),
        ({"type": "ask", "question": "Why?", "context": "ü" * 40_000}, "context"),
        ({"type": "ask", "question": ""}, "question"),
        ({"type": "report_activity", "activity": "a\x00b"}, "NUL"),
        ({"type": "fail", "errorMessage": "€" * 30_000}, "error"),
        ({"type": "append_message", "message": {"text": "x" * 300_000}}, "bytes"),
        ({"type": "append_message", "message": json.loads("[" * 100 + "]" * 100)}, "deep"),
        ({"type": "wait_for_tasks", "taskIds": [str(uuid.uuid4())] * 20_000}, "taskIds"),
        # A question this supervisor never asked: an error, not a wait that never ends.
        ({"type": "await_answer", "questionId": str(uuid.uuid4())}, "not pending"),
    ],
)
async def test_a_bad_request_gets_an_error_reply_and_changes_nothing(
    pool: asyncpg.Pool[Any], dsn: str, request_: dict[str, Any], named: str
) -> None:
    async with supervisor_on(pool, dsn) as sup:
        before = await Store(pool).get_supervisor(sup.id)
        with anyio.fail_after(DEADLINE_S):  # an ask that is accepted would wait for its answer
            reply = await Session(sup).handle(json.dumps({"id": "r", **request_}).encode())
        assert reply["type"] == "error", reply
        assert named in reply["error"]
        assert await Store(pool).get_supervisor(sup.id) == before
    assert await pool.fetchval("SELECT count(*) FROM supervisor_events") == 0


async def test_await_answer_gives_an_answer_already_applied_once_and_no_other(
    pool: asyncpg.Pool[Any], dsn: str
) -> None:
    """A question whose answer was applied (here by the running supervisor; one given
    while no daemon ran, by the restoration) is no longer pending: an agent that waits
    for it all the same gets the recorded answer at once, journaled once. Another
    supervisor's question is refused like an unknown one."""
    async with supervisor_on(pool, dsn) as other, supervisor_on(pool, dsn) as sup:
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sup.ask, "Ship it?")
                question_id = await _wait_for_question(pool, sup.id)
                await WorkStore(pool).record_answer(question_id, sup.id, "yes", "ops")
        assert not sup.state.pending_questions
        session = Session(sup)
        with anyio.fail_after(DEADLINE_S):
            again = await session.handle(
                json.dumps({"id": 1, "type": "await_answer", "questionId": str(question_id)})
                .encode()
            )  # fmt: skip
            elsewhere = await Session(other).handle(
                json.dumps({"id": 2, "type": "await_answer", "questionId": str(question_id)})
                .encode()
            )  # fmt: skip
    assert again == {"type": "result", "id": 1, "ok": True, "value": "yes"}
    assert elsewhere["type"] == "error"
    assert "not pending" in elsewhere["error"]
    kinds = await pool.fetch(
        "SELECT e->>1 AS kind FROM supervisor_events, json_array_elements(events) AS e"
        " WHERE supervisor_id = $1",
        sup.id,
    )
    assert [row["kind"] for row in kinds].count("question_answered") == 1


async def test_a_spec_the_runner_cannot_run_fails_its_task_not_the_daemon(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    """Specs written by another tool or an older version: each one fails alone."""
    state = await store.save_supervisor_state_full(new_state())
    await _own(pool, state.id)
    specs = {
        "timeout": {"command": "true", "timeoutS": "x"},
        "infinite": {"command": "true", "timeoutS": 1},  # made 1e400 below
        "idempotent": {"command": "true", "idempotent": "no"},
        "command": {"command": ["rm", "-rf"]},
        "good": {"command": "echo fine"},
    }
    # Inserted as that tool would (the daemon's own task_spawned refuses most of them).
    tasks = {name: uuid.uuid4() for name in specs}
    for name, spec in specs.items():
        await pool.execute(
            "INSERT INTO supervisor_tasks (id, supervisor_id, spec) VALUES ($1, $2, $3)",
            tasks[name], state.id, spec,
        )  # fmt: skip
    await pool.execute(
        'UPDATE supervisor_tasks SET spec = \'{"command": "true", "timeoutS": 1e400}\''
        " WHERE id = $1",
        tasks["infinite"],
    )
    await pool.execute(
        "UPDATE supervisor_tasks SET status = 'running' WHERE id = $1", tasks["idempotent"]
    )
    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            await TaskRunner(WorkStore(pool), tg, daemon_id="d1").resume()
    rows: dict[str, asyncpg.Record] = {}
    for name, task in tasks.items():
        row = await pool.fetchrow("SELECT status, result FROM supervisor_tasks WHERE id = $1", task)
        assert row is not None
        rows[name] = row
    assert rows["good"]["status"] == "succeeded"
    for name, field in [("timeout", "timeoutS"), ("infinite", "timeoutS"),
                        ("idempotent", "idempotent"), ("command", "command")]:  # fmt: skip
        row = rows[name]
        assert row["status"] == "failed", name
        assert row["result"]["error"].startswith("invalid task spec: "), row["result"]
        assert field in row["result"]["error"]


async def _own(pool: asyncpg.Pool[Any], sid: uuid.UUID) -> None:
    """Daemon d1 owns the supervisor: its tasks are the ones `resume("d1")` runs."""
    await pool.execute(
        "INSERT INTO daemons (id, hostname, pid, version, lease_expires_at)"
        " VALUES ('d1', 'h', 1, '0', now() + interval '1 minute') ON CONFLICT DO NOTHING"
    )
    await pool.execute("UPDATE supervisor_states SET owner_daemon_id = 'd1' WHERE id = $1", sid)


async def test_a_question_in_any_script_is_asked_once_with_a_bounded_notify(
    pool: asyncpg.Pool[Any], dsn: str
) -> None:
    listener = await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("supervisor_questions", lambda *a: received.put_nowait(a[3]))
    try:
        async with supervisor_on(pool, dsn) as sup:
            asking = asyncio.ensure_future(sup.ask(LONG_QUESTION, choices=LONG_CHOICES))
            body = await asyncio.wait_for(received.get(), DEADLINE_S)
            question_id = await _wait_for_question(pool, sup.id)
            assert len(body.encode()) < 8000
            notified = json.loads(body)
            assert (notified["questionId"], notified["supervisorId"]) == (
                str(question_id), str(sup.id)
            )  # fmt: skip
            assert notified["truncated"] is True
            assert LONG_QUESTION.startswith(notified["question"].rstrip("…"))
            assert await WorkStore(pool).record_answer(question_id, sup.id, LONG_CHOICES[1], "t")
            assert await asyncio.wait_for(asking, DEADLINE_S) == LONG_CHOICES[1]
    finally:
        await listener.close()
    kinds = await pool.fetch(
        "SELECT e->>1 AS kind FROM supervisor_events, json_array_elements(events) AS e"
    )
    assert [row["kind"] for row in kinds].count("question_asked") == 1
    assert await _pending_question_ids(pool, sup.id) == []


async def test_a_notify_that_fails_does_not_fail_the_ask(
    pool: asyncpg.Pool[Any], dsn: str, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """The NOTIFY goes through a pool that is closed: a real failure of delivery."""
    closed = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=init_connection)
    assert closed is not None
    await closed.close()
    async with supervisor_on(pool, dsn, delivery_pool=closed) as sup:
        asking = asyncio.ensure_future(sup.ask("Ship it?", choices=("yes", "no")))
        question_id = await _wait_for_question(pool, sup.id)
        assert await WorkStore(pool).record_answer(question_id, sup.id, "yes", "t")
        assert await asyncio.wait_for(asking, DEADLINE_S) == "yes"
    failed = [line for line in captured_logs if line["event"] == "question.notify_failed"]
    assert [line["question_id"] for line in failed] == [str(question_id)]
    delivered = [line for line in captured_logs if line["event"] == "question.delivered"]
    assert [line["question_id"] for line in delivered] == [str(question_id)]


async def test_restoration_redelivers_a_long_question_with_a_bounded_notify(
    pool: asyncpg.Pool[Any], store: Store, dsn: str
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    question = new_question(question=LONG_QUESTION, choices=tuple(LONG_CHOICES))
    await ask(pool, state.id, question)
    listener = await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("supervisor_questions", lambda *a: received.put_nowait(a[3]))
    try:
        outcome = (await restore_outcomes(pool))[state.id]
        body = await asyncio.wait_for(received.get(), DEADLINE_S)
    finally:
        await listener.close()
    assert outcome.outcome == "restored"
    assert len(body.encode()) < 8000
    notified = json.loads(body)
    assert (notified["questionId"], notified["redelivery"]) == (str(question.id), True)


async def test_restoration_goes_on_when_its_notify_fails(
    pool: asyncpg.Pool[Any],
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    async def refuse(self: Any, bodies: list[str]) -> None:
        raise TransientDatabaseError("ConnectionResetError: the server went away")

    monkeypatch.setattr(RestorationStore, "notify_questions", refuse)
    state = await store.save_supervisor_state_full(new_state())
    question = new_question()
    await ask(pool, state.id, question)
    outcome = (await restore_outcomes(pool))[state.id]
    assert outcome.outcome == "restored"
    row = await pool.fetchrow("SELECT * FROM supervisor_states WHERE id = $1", state.id)
    assert row is not None
    assert (row["state"], row["restoration_count"]) == ("waiting_for_user", 1)
    assert await _pending_question_ids(pool, state.id) == [str(question.id)]
    failed = [line for line in captured_logs if line["event"] == "question.notify_failed"]
    assert len(failed) == 1
    assert failed[0]["questions"] == 1


async def test_a_value_the_decoder_refuses_parks_that_supervisor_only(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    good = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    odd = await store.save_supervisor_state_full(new_state(state=SupervisorStateKind.WORKING))
    # Valid JSON that PostgreSQL stores, as another tool may write it: in a pending
    # question (read at restoration) of one, in a message (read when an agent pages
    # it) of the other.
    question = new_question().to_json()
    await pool.execute(
        "UPDATE supervisor_states SET state = 'waiting_for_user', pending_questions ="
        " jsonb_build_array($2::jsonb || '{\"weight\": 1e400}'::jsonb) WHERE id = $1",
        odd.id,
        question,
    )
    await pool.execute(
        "UPDATE supervisor_states SET conversation_history ="
        ' \'[{"role": "tool", "content": 1e400}]\' WHERE id = $1',
        good.id,
    )
    outcomes = await restore_outcomes(pool)
    restored = outcomes[good.id]
    assert restored.outcome == "restored"
    # The message is read (the number no double holds comes back whole: jsonb printed it
    # in full), not raised on.
    assert list(restored.context.conversation_history) == [{"role": "tool", "content": 10**400}]
    parked = outcomes[odd.id]
    assert (parked.outcome, parked.action) == ("blocked", StateRecoveryAction.MANUAL_INTERVENTION)
    (issue,) = [i for i in parked.validation.issues if "pending_questions" in i]
    assert "non-finite number" in issue
    row = await pool.fetchrow(
        "SELECT state, error_message, pending_questions::text AS questions"
        " FROM supervisor_states WHERE id = $1",
        odd.id,
    )
    assert row is not None
    assert row["state"] == "blocked"
    assert "non-finite number" in row["error_message"]
    assert "1" + "0" * 400 in row["questions"]  # left as it was (jsonb prints it in full)
    # Readers that list every supervisor still work.
    assert {s.id for s in await store.list_supervisors()} == {good.id, odd.id}
