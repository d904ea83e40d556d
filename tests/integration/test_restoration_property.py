"""Whatever is stored, restoration never raises and always yields an outcome."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.db.pool import init_connection
from daemon.restoration.run import restore_manually
from daemon.store import RestorationStore

# PostgreSQL's jsonb stores any JSON but the NUL character and lone surrogates.
texts = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
    max_size=20,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
# Sometimes a well-formed question, sometimes anything at all.
question_like = st.fixed_dictionaries(
    {"id": st.uuids().map(str), "question": texts,
     "askedAt": st.just("2026-01-01T00:00:00+00:00")},
    optional={"choices": st.lists(texts, max_size=3),
              "questionType": st.sampled_from(["general", "phase_confirmation", "bogus"])},
)  # fmt: skip
uuid_arrays = st.lists(st.uuids(), max_size=4)
states = st.sampled_from(
    [
        "initializing",
        "idle",
        "working",
        "waiting_for_user",
        "waiting_for_tasks",
        "completed",
        "failed",
        "blocked",
    ]
)


async def _write_and_restore(dsn: str, row: dict[str, Any]) -> None:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    pool = None
    try:
        sid = uuid.uuid4()
        await conn.execute(
            "INSERT INTO supervisor_states (id, contract_id, task_id, phase, state,"
            " pending_questions, conversation_history, spawned_task_ids, pending_task_ids,"
            " progress, error_message) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb,"
            " $7::text::jsonb, $8, $9, $10, $11)",
            sid,
            uuid.uuid4(),
            uuid.uuid4(),
            row["phase"],
            row["state"],
            json.dumps(row["questions"]),
            json.dumps(row["history"]),
            row["spawned"],
            row["awaited"],
            row["progress"],
            row["error"],
        )
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init_connection)
        assert pool is not None
        outcome = await restore_manually(RestorationStore(pool), sid)
        assert outcome is not None
        assert outcome.outcome in {"restored", "blocked", "failed"}
        stored = await conn.fetchrow(
            "SELECT state, pending_questions FROM supervisor_states WHERE id = $1", sid
        )
        assert stored is not None
        if outcome.outcome == "restored":
            assert outcome.action.value in {"proceed", "use_checkpoint", "start_fresh"}
    finally:
        if pool is not None:
            await pool.close()
        await conn.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.fixed_dictionaries(
        {
            "phase": st.sampled_from(["plan", "implement", "nonsense"]),
            "state": states,
            "questions": json_values | st.lists(question_like, max_size=3),
            "history": json_values,
            "spawned": uuid_arrays,
            "awaited": uuid_arrays,
            "progress": st.integers(0, 100),
            "error": st.none() | texts,
        }
    )
)
def test_restoration_never_raises(dsn: str, row: dict[str, Any]) -> None:
    # The session's event loop is busy running this sync test: use a loop of its own.
    asyncio.run(_write_and_restore(dsn, row))
