"""The web page and its JSON API, in process (httpx over ASGI) on real PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.routing import Route

from daemon.models import SupervisorStateKind
from daemon.services import Services
from daemon.store import DaemonRegistry, Store, Stores
from daemon.web.app import create_app
from daemon.web.openapi import document
from tests.factories import WEB_TOKEN, new_question, new_state
from tests.queues import ask, spawn

BASE = "http://127.0.0.1:8765"


XSS = "<script>window.pwned = 1</script><img src=x onerror=alert(1)>"


def _client(pool: asyncpg.Pool[Any], token: str | None = None) -> httpx.AsyncClient:
    app = create_app(Services(Stores.over(pool)), token=token)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest.fixture
async def client(pool: asyncpg.Pool[Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(pool) as c:
        yield c


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html
    return found.group(1)


async def _waiting(pool: asyncpg.Pool[Any], **question: Any) -> tuple[uuid.UUID, uuid.UUID]:
    state = await Store(pool).save_supervisor_state_full(new_state(phase="review"))
    asked = new_question(**question)
    await ask(pool, state.id, asked)
    return state.id, asked.id


async def test_inbox_escapes_what_agents_wrote(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    await _waiting(pool, question=XSS, choices=("<b>yes</b>", "no"), context="<i>ctx</i>")
    await _waiting(pool, question="Free text?", choices=())
    page = await client.get("/")
    assert page.status_code == 200
    html = page.text
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html
    assert "<script>window" not in html
    assert "<img src=x" not in html
    assert 'value="&lt;b&gt;yes&lt;/b&gt;"' in html
    assert "&lt;i&gt;ctx&lt;/i&gt;" in html
    assert "<textarea" in html  # the free-form one
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert "httponly" in page.headers["set-cookie"].lower()


async def test_answering_from_the_page_follows_the_cli_rules(
    client: httpx.AsyncClient, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    supervisor_id, question_id = await _waiting(pool, choices=("yes", "no"))
    csrf = _csrf((await client.get("/")).text)
    url = f"/questions/{question_id}/answer"

    forged = await client.post(url, data={"answer": "yes"})  # no CSRF token
    assert forged.status_code == 403
    assert "security token" in forged.text
    client.cookies.clear()  # another browser: its cookie does not match this token
    stolen = await client.post(url, data={"answer": "yes", "csrf": csrf})
    assert stolen.status_code == 403
    csrf = _csrf((await client.get("/")).text)
    wrong = await client.post(url, data={"answer": "perhaps", "csrf": csrf})
    assert wrong.status_code == 422
    assert "not among the choices" in wrong.text
    unknown = await client.post(
        f"/questions/{uuid.uuid4()}/answer", data={"answer": "yes", "csrf": csrf}
    )
    assert unknown.status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM question_answers") == 0

    done = await client.post(url, data={"answer": "yes", "csrf": csrf})
    assert done.status_code == 303
    assert done.headers["location"] == f"/?answered={question_id}"
    shown = await client.get(done.headers["location"])
    assert "is recorded" in shown.text
    assert "Answered <strong>yes</strong>" in shown.text
    again = await client.post(url, data={"answer": "no", "csrf": csrf, "next": "//evil.example"})
    assert again.status_code == 409
    assert "already answered" in again.text
    row = await pool.fetchrow("SELECT answer, answered_by FROM question_answers")
    assert row is not None
    assert tuple(row.values()) == ("yes", "web page")

    # From a supervisor's page, back to it.
    _, other = await _waiting(pool, choices=("go", "stop"))
    back = await client.post(
        f"/questions/{other}/answer",
        data={"answer": "2", "csrf": csrf, "next": f"/supervisors/{supervisor_id}"},
    )
    assert back.headers["location"] == f"/supervisors/{supervisor_id}?answered={other}"


async def test_supervisors_pages(
    client: httpx.AsyncClient, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    await DaemonRegistry(pool).register(
        "d-1", hostname="h", pid=7, version="0", lease_s=30, capacity=50
    )
    parked = new_state(
        state=SupervisorStateKind.BLOCKED,
        error_message="crash loop: <b>x</b>",
        conversation_history=tuple({"role": "user", "content": f"m{n}"} for n in range(30)),
    )
    await store.save_supervisor_state_full(parked)
    await store.save_supervisor_state_full(new_state(phase="review"))
    await spawn(pool, parked.id, spec={"command": "echo <hi>"})
    await pool.execute(
        "UPDATE supervisor_states SET owner_daemon_id = 'd-1' WHERE id = $1", parked.id
    )

    listed = await client.get("/supervisors", params={"state": "blocked"})
    assert str(parked.id)[:8] in listed.text
    assert "blocked <b>1</b>" in listed.text
    by_daemon = await client.get("/supervisors", params={"daemon": "d-1", "phase": "review"})
    assert "No supervisor matches" in by_daemon.text
    assert (await client.get("/supervisors", params={"state": "nope"})).status_code == 400

    page = await client.get(f"/supervisors/{str(parked.id)[:8]}")
    html = page.text
    assert page.status_code == 200
    assert "crash loop: &lt;b&gt;x&lt;/b&gt;" in html
    assert "echo &lt;hi&gt;" in html
    assert "#30" in html
    assert "#11" in html
    assert "#10" not in html
    assert "?before=11" in html
    assert "d-1" in html
    assert 'id="restore"' in html
    older = await client.get(f"/supervisors/{parked.id}", params={"before": 11})
    assert "#10" in older.text
    assert "#1<" in older.text

    confirm = await client.get(f"/supervisors/{parked.id}/restore")
    assert "Yes, restore it" in confirm.text
    refused = await client.post(f"/supervisors/{parked.id}/restore", data={})
    assert refused.status_code == 403
    restored = await client.post(
        f"/supervisors/{parked.id}/restore", data={"csrf": _csrf(confirm.text)}
    )
    assert restored.status_code == 200
    assert "restored" in restored.text
    assert "restoration" in restored.text.lower()
    state = await store.get_supervisor(parked.id)
    assert state is not None
    assert state.state is not SupervisorStateKind.BLOCKED

    daemons = await client.get("/daemons")
    assert "d-1" in daemons.text
    assert "50" in daemons.text
    missing = await client.get(f"/supervisors/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_only_loopback_host_names_are_served(client: httpx.AsyncClient) -> None:
    rebound = await client.get("/", headers={"host": "attacker.example"})
    assert rebound.status_code == 400
    assert (await client.get("/", headers={"host": "localhost:8765"})).status_code == 200


async def test_a_token_is_asked_once_then_kept_in_a_cookie(
    pool: asyncpg.Pool[Any], store: Store
) -> None:
    await _waiting(pool)
    async with _client(pool, token=WEB_TOKEN) as client:
        first = await client.get("/", headers={"accept": "text/html"})
        assert (first.status_code, first.headers["location"]) == (303, "/login?next=/")
        assert (await client.get("/events")).status_code == 401
        form = await client.get("/login?next=/supervisors")
        assert WEB_TOKEN not in form.text
        csrf = _csrf(form.text)
        bad = await client.post("/login", data={"token": "guess", "csrf": csrf})
        assert bad.status_code == 401
        good = await client.post(
            "/login", data={"token": WEB_TOKEN, "csrf": csrf, "next": "/supervisors"}
        )
        assert (good.status_code, good.headers["location"]) == (303, "/supervisors")
        cookie = good.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert WEB_TOKEN.lower() not in cookie
        assert (await client.get("/")).status_code == 200
        # The API takes the token as a bearer header, never the page's cookie.
        assert (await client.get("/api/questions")).status_code == 401
        api = await client.get("/api/questions", headers={"authorization": f"Bearer {WEB_TOKEN}"})
        assert api.status_code == 200
        assert len(api.json()) == 1


async def test_json_api(client: httpx.AsyncClient, store: Store, pool: asyncpg.Pool[Any]) -> None:
    supervisor_id, question_id = await _waiting(pool, choices=("yes", "no"))
    parked = new_state(state=SupervisorStateKind.BLOCKED, error_message="stuck")
    await store.save_supervisor_state_full(parked)

    (question,) = (await client.get("/api/questions")).json()
    assert (question["id"], question["supervisorId"]) == (str(question_id), str(supervisor_id))
    url = f"/api/questions/{str(question_id)[:6]}/answer"
    assert (await client.post(url, data={"answer": "yes"})).status_code == 415
    wrong = await client.post(url, json={"answer": "maybe"})
    assert (wrong.status_code, wrong.json()["choices"]) == (422, ["yes", "no"])
    assert (await client.post(url, json={"answer": 1})).status_code == 400
    ok = await client.post(url, json={"answer": "1", "by": "a program"})
    assert ok.status_code == 200
    assert ok.json() == {
        "questionId": str(question_id),
        "supervisorId": str(supervisor_id),
        "answer": "yes",
        "answeredBy": "a program",
    }
    assert (await client.post(url, json={"answer": "no"})).status_code == 409
    unknown = await client.post(f"/api/questions/{uuid.uuid4()}/answer", json={"answer": "x"})
    assert unknown.status_code == 404

    listed = (await client.get("/api/supervisors", params={"state": "blocked"})).json()
    assert [s["id"] for s in listed["supervisors"]] == [str(parked.id)]
    assert listed["counts"] == {"blocked": 1, "waiting_for_user": 1}
    assert (await client.get("/api/supervisors", params={"state": "bad"})).status_code == 400
    shown = (await client.get(f"/api/supervisors/{supervisor_id}")).json()
    assert shown["questions"][0]["answer"] == "yes"
    conversation = (await client.get(f"/api/supervisors/{supervisor_id}/conversation")).json()
    assert conversation["length"] == 1
    journal = await client.get(f"/api/supervisors/{supervisor_id}/journal?limit=0")
    assert journal.status_code == 400

    restored = await client.post(f"/api/supervisors/{parked.id}/restore", json={})
    body = restored.json()
    assert (restored.status_code, body["outcome"]) == (200, "restored")
    assert "restoration" in body["context"]["restorationContextMessage"].lower()
    assert body["context"]["restorationCount"] == 1
    gone = await client.post(f"/api/supervisors/{uuid.uuid4()}/restore", json={})
    assert gone.status_code == 404

    await store.save_supervisor_state_full(
        new_state(id=uuid.UUID(f"{parked.id.hex[:8]}-0000-4000-8000-000000000000"))
    )
    ambiguous = await client.get(f"/api/supervisors/{parked.id.hex[:8]}")
    assert ambiguous.status_code == 409
    assert str(parked.id) in ambiguous.json()["candidates"]
    assert (await client.get("/api/daemons")).json() == []


async def test_the_openapi_document_names_every_api_route(client: httpx.AsyncClient) -> None:
    served = (await client.get("/api/openapi.json")).json()
    assert served["openapi"].startswith("3.")
    app = create_app(Services.__new__(Services))
    routes = {r.path for r in app.routes if isinstance(r, Route) and r.path.startswith("/api/")}
    assert set(document()["paths"]) == routes


async def test_a_database_gone_mid_request_is_a_503_without_details(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    await pool.close()  # every query now fails as a lost connection would
    async with _client(pool) as client:
        page = await client.get("/")
        assert page.status_code == 503
        assert "database cannot be reached" in page.text
        assert dsn not in page.text
        api = await client.get("/api/questions")
        assert api.status_code == 503
        assert api.json() == {
            "error": "the database cannot be reached or refused the operation; try again shortly"
        }
