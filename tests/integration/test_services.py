"""People's commands (daemon.services) and their rules, on real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from daemon.errors import AmbiguousIdError, BadChoiceError, ConflictError, NotFoundError
from daemon.models import SupervisorStateKind, TaskStatus
from daemon.persistence import events
from daemon.persistence.queue import PersistenceQueue
from daemon.services import Services, parse_id, pick_choice
from daemon.store import DaemonRegistry, EventStore, Store, Stores
from tests.factories import new_question, new_state, now
from tests.queues import apply_answer, ask, running, spawn


def _id(text: str) -> uuid.UUID:
    return uuid.UUID(text)


# -- ids as people type them (pure) --------------------------------------------------------


def test_parse_id_takes_whole_ids_and_prefixes_of_4_or_more() -> None:
    whole = uuid.uuid4()
    assert parse_id(str(whole).upper()).whole == whole
    typed = parse_id("EB05")
    assert (typed.whole, typed.low, typed.high) == (
        None,
        "eb050000-0000-0000-0000-000000000000",
        "eb05ffff-ffff-ffff-ffff-ffffffffffff",
    )
    assert parse_id("eb05d3a1-12").low == parse_id("eb05d3a112").low
    for bad in ("eb0", "not-a-uuid", "eb05d-3a1", "eb05%", ""):
        with pytest.raises(ValueError, match="is not a UUID"):
            parse_id(bad)


def test_pick_choice_by_text_or_number() -> None:
    question = uuid.uuid4()
    assert pick_choice(question, ("yes", "no"), "no") == "no"
    assert pick_choice(question, ("yes", "no"), "2") == "no"
    assert pick_choice(question, ("1", "2"), "2") == "2"  # a choice's own text wins
    assert pick_choice(question, (), "42") == "42"  # free text is taken as written
    for bad in ("3", "0", "perhaps", "  "):
        with pytest.raises(BadChoiceError):
            pick_choice(question, ("yes", "no"), bad)


# -- on the database -----------------------------------------------------------------------


async def test_prefixes_resolve_when_unique_and_list_candidates_otherwise(
    store: Store, pool: asyncpg.Pool[Any]
) -> None:
    services = Services(Stores.over(pool))
    a = await store.save_supervisor_state_full(
        new_state(id=_id("abcd0000-0000-4000-8000-00000000000a"))
    )
    await store.save_supervisor_state_full(
        new_state(id=_id("abcd0000-0000-4000-8000-00000000000b"))
    )
    await store.save_supervisor_state_full(
        new_state(id=_id("abce0000-0000-4000-8000-00000000000c"))
    )
    assert await services.supervisor_id("abcd0000-0000-4000-8000-00000000000a") == a.id
    assert await services.supervisor_id(str(a.id).replace("-", "")) == a.id
    with pytest.raises(AmbiguousIdError) as ambiguous:
        await services.supervisor_id("abcd")
    assert ambiguous.value.candidates == (
        "abcd0000-0000-4000-8000-00000000000a",
        "abcd0000-0000-4000-8000-00000000000b",
    )
    assert "abcd0000-0000-4000-8000-00000000000b" in str(ambiguous.value)
    assert (await services.supervisor_id("abce")).hex.endswith("c")
    with pytest.raises(NotFoundError, match="no supervisor id starts with abcf"):
        await services.supervisor_id("abcf")

    task = await spawn(pool, a.id, _id("feed0000-0000-4000-8000-000000000001"))
    assert await services.task_id("feed") == task.id
    question = new_question(id=_id("beef0000-0000-4000-8000-000000000001"))
    await ask(pool, a.id, question)
    assert await services.question_id("beef") == question.id
    await services.answer("beef", "yes")
    # Answered and applied (gone from the pending list): the prefix still finds it.
    await apply_answer(pool, a.id, question.id, "yes")
    with pytest.raises(ConflictError, match="already answered"):
        await services.answer("beef", "no")


async def test_answer_rules_write_nothing_when_refused(
    store: Store, pool: asyncpg.Pool[Any]
) -> None:
    services = Services(Stores.over(pool))
    state = await store.save_supervisor_state_full(new_state())
    question = new_question(choices=("yes", "no"))
    await ask(pool, state.id, question)
    with pytest.raises(NotFoundError, match="no supervisor waits on question"):
        await services.answer(uuid.uuid4(), "yes")
    with pytest.raises(BadChoiceError, match="1 yes, 2 no"):
        await services.answer(question.id, "perhaps")
    assert await pool.fetchval("SELECT count(*) FROM question_answers") == 0

    receipt = await services.answer(str(question.id)[:8], "2", by="alice")
    assert (receipt.answer, receipt.supervisor_id, receipt.answered_by) == ("no", state.id, "alice")
    with pytest.raises(ConflictError):
        await services.answer(question.id, "yes")
    row = await pool.fetchrow("SELECT answer, answered_by FROM question_answers")
    assert row is not None
    assert tuple(row.values()) == ("no", "alice")
    # Still pending until the daemon applies it; the inbox shows the answer beside it.
    (pending,) = await services.pending_questions()
    assert (pending.question.id, pending.answer) == (question.id, "no")


async def test_complete_task_rules(store: Store, pool: asyncpg.Pool[Any]) -> None:
    services = Services(Stores.over(pool))
    state = await store.save_supervisor_state_full(new_state())
    task = await spawn(pool, state.id, spec={"kind": "external"})
    with pytest.raises(NotFoundError, match="does not exist"):
        await services.complete_task(uuid.uuid4())
    done = await services.complete_task(task.id, TaskStatus.FAILED, {"why": "flaky"})
    assert (done.status, done.result) == (TaskStatus.FAILED, {"why": "flaky"})
    with pytest.raises(ConflictError, match=r"already finished \(failed\)"):
        await services.complete_task(task.id)


async def test_lists_filter_and_count(store: Store, pool: asyncpg.Pool[Any]) -> None:
    services = Services(Stores.over(pool))
    await DaemonRegistry(pool).register("d1", hostname="h", pid=1, version="0", lease_s=30,
                                        capacity=7)  # fmt: skip
    blocked = new_state(phase="review", state=SupervisorStateKind.BLOCKED, error_message="stuck")
    for state in (new_state(), new_state(phase="review"), blocked):
        await store.save_supervisor_state_full(state)
    await pool.execute("UPDATE supervisor_states SET owner_daemon_id = 'd1' WHERE id = $1",
                       blocked.id)  # fmt: skip

    listed = await services.list_supervisors(phase="review")
    assert len(listed) == 2
    assert all(state.conversation_history == () for state in listed)  # never loaded
    assert [s.id for s in await services.list_supervisors(daemon_id="d1")] == [blocked.id]
    only = await services.list_supervisors(state=SupervisorStateKind.BLOCKED, phase="review")
    assert [s.id for s in only] == [blocked.id]
    assert await services.count_supervisors() == {"blocked": 1, "initializing": 2}
    assert await services.count_supervisors(phase="plan") == {"initializing": 1}
    (daemon,) = await services.daemons()
    assert (daemon["id"], daemon["capacity"], daemon["supervisors"], daemon["unfinished"]) == (
        "d1",
        7,
        1,
        1,
    )


async def test_questions_oldest_first(store: Store, pool: asyncpg.Pool[Any]) -> None:
    services = Services(Stores.over(pool))
    first, second = new_state(), new_state()
    for state in (first, second):
        await store.save_supervisor_state_full(state)
    late = new_question(asked_at=now())
    early = new_question(asked_at=now() - timedelta(hours=1), question="<script>x</script>")
    await ask(pool, first.id, late)
    await ask(pool, second.id, early)
    pending = await services.pending_questions()
    assert [item.question.id for item in pending] == [early.id, late.id]
    assert pending[0].supervisor_id == second.id
    assert pending[0].contract_id == second.contract_id
    assert [item.question.id for item in await services.pending_questions(first.id)] == [late.id]


async def test_supervisor_page_with_journal_and_conversation_pages(
    store: Store, pool: asyncpg.Pool[Any]
) -> None:
    services = Services(Stores.over(pool))
    messages = tuple({"role": "assistant", "content": f"message {n}"} for n in range(1, 8))
    state = await store.save_supervisor_state_full(new_state(conversation_history=messages))
    await spawn(pool, state.id, spec={"command": "true"})  # the journal's first event
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        for n in range(4):
            await queue.submit(events.activity_reported(state.id, f"step {n}"))

    page = await services.supervisor(str(state.id)[:6], journal_limit=2)
    assert page.state.id == state.id
    assert page.conversation_length == 7
    assert len(page.tasks) == 1
    assert [entry["seq"] for entry in page.journal.entries] == [5, 4]
    assert page.journal.older == 4
    older = await services.journal(state.id, before=page.journal.older, limit=2)
    assert [entry["seq"] for entry in older.entries] == [3, 2]
    last = await services.journal(state.id, before=older.older, limit=2)
    assert ([entry["seq"] for entry in last.entries], last.older) == ([1], None)
    assert "conversationHistory" not in page.to_json()

    newest = await services.conversation(state.id, limit=3)
    assert [pos for pos, _ in newest.messages] == [7, 6, 5]
    assert newest.messages[0][1]["content"] == "message 7"
    rest = await services.conversation(state.id, before=newest.older, limit=10)
    assert ([pos for pos, _ in rest.messages], rest.older) == ([4, 3, 2, 1], None)
    with pytest.raises(NotFoundError):
        await services.supervisor(uuid.uuid4())


async def test_restore_unparks_a_blocked_supervisor(store: Store, pool: asyncpg.Pool[Any]) -> None:
    services = Services(Stores.over(pool))
    parked = new_state(state=SupervisorStateKind.BLOCKED, error_message="crash loop")
    await store.save_supervisor_state_full(parked)
    outcome = await services.restore(str(parked.id)[:8])
    assert outcome.outcome == "restored"
    assert outcome.context.restoration_count == 1
    row = await store.get_supervisor(parked.id)
    assert row is not None
    assert row.state is not SupervisorStateKind.BLOCKED
    with pytest.raises(NotFoundError):
        await services.restore(uuid.uuid4())
