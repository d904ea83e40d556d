"""The inbox's live news (daemon.web.live) on real PostgreSQL: fed by the daemons' NOTIFY,
and by polling while the LISTEN connection is down."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg

from daemon.services import Services
from daemon.store import Store, Stores, WorkStore
from daemon.web.live import Live, News
from daemon.work.delivery import notify_body
from tests.factories import new_question, new_state
from tests.queues import apply_answer, ask

DEADLINE_S = 30.0


async def _next(news: Any) -> News:
    with anyio.fail_after(DEADLINE_S):
        item: News = await news.receive()
        return item


async def test_news_from_notify_then_from_polls_while_listen_is_down(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    live = Live(Services(Stores.over(pool)), fast_poll_s=0.05, slow_poll_s=3600)
    async with anyio.create_task_group() as tg:
        tg.start_soon(live.run)
        with live.subscribe() as news:
            with anyio.fail_after(DEADLINE_S):
                while not live.listening:
                    await anyio.sleep(0.01)
            asked = new_question()
            await ask(pool, state.id, asked)
            body = notify_body(state.id, asked, redelivery=False)
            await WorkStore(pool).notify_question(body)
            assert await _next(news) == News("question", str(asked.id))

            # The listener's connection dies; a question asked meanwhile (its NOTIFY
            # lost with it) is found by the next poll, and an answered one reported.
            killed = await pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
            assert killed == 1
            missed = new_question()
            await ask(pool, state.id, missed)
            await apply_answer(pool, state.id, asked.id, "yes")
            found = {await _next(news), await _next(news)}
            assert found == {News("question", str(missed.id)), News("resolved", str(asked.id))}

            live.publish("answered", str(missed.id))
            assert await _next(news) == News("answered", str(missed.id))
            live.close()
            with anyio.fail_after(DEADLINE_S):
                assert [item async for item in news] == []  # ended: the server stops
        tg.cancel_scope.cancel()
