"""The HTML pages: the questions inbox, supervisors, one supervisor, daemons, login.

Every handler reads through daemon.services and renders a template; every form posts
back here with a CSRF token, and a refused one (unknown question, answered already,
not a choice, a stale form) shows its reason on the page with nothing written.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from daemon.errors import DaemonError
from daemon.models import PHASES, SupervisorStateKind
from daemon.web.security import SESSION_COOKIE, local_path, set_session, token_ok
from daemon.web.shared import message_of, read_form, render, status_of, web

KEEPALIVE_S = 15.0
PAGE = 20  # journal entries and messages per page
LIST_LIMIT = 200


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


# -- the inbox --------------------------------------------------------------------------


async def inbox(request: Request, *, error: str | None = None, status: int = 200) -> Response:
    questions = await web(request).services.pending_questions()
    answered = request.query_params.get("answered")
    return render(
        request, "inbox.html", status_code=status, questions=questions, error=error,
        answered=next((q for q in questions if str(q.question.id) == answered), None),
        answered_id=answered,
    )  # fmt: skip


async def inbox_page(request: Request) -> Response:
    return await inbox(request)


async def question_fragment(request: Request) -> Response:
    """One question's card, for a page that just heard of it (inserted by inbox.js)."""
    wanted = request.path_params["question_id"]
    for item in await web(request).services.pending_questions():
        if str(item.question.id) == wanted:
            return render(request, "_question.html", item=item, next_path="/")
    return Response("not pending", status_code=404, media_type="text/plain")


def _sse(kind: str, question_id: str) -> str:
    return f"event: {kind}\ndata: {json.dumps({'questionId': question_id})}\n\n"


async def events(request: Request) -> Response:
    """Server-sent events: every pending question at connect, then the news."""
    shared = web(request)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        if shared.live is None:
            return
        with shared.live.subscribe() as news:
            # Subscribed first, then listed: a question asked in between is not missed.
            for item in await shared.services.pending_questions():
                yield _sse("question", str(item.question.id))
            while True:
                with anyio.move_on_after(KEEPALIVE_S) as waited:
                    try:
                        item_news = await news.receive()
                    except anyio.EndOfStream:
                        return  # the server is stopping
                if waited.cancelled_caught:
                    yield ": keepalive\n\n"
                    continue
                yield _sse(item_news.kind, item_news.question_id)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
    )


async def answer(request: Request) -> Response:
    shared = web(request)
    form = await read_form(request)
    back = local_path(form.get("next"))
    if not shared.csrf.valid(request, form):
        return await _refused(request, back, _STALE_FORM, 403)
    question_id = request.path_params["question_id"]
    try:
        receipt = await shared.services.answer(question_id, form.get("answer", ""), by="web page")
    except (DaemonError, ValueError) as exc:
        return await _refused(request, back, message_of(exc), status_of(exc))
    if shared.live is not None:
        shared.live.publish("answered", str(receipt.question_id))
    separator = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{separator}answered={receipt.question_id}", status_code=303)


_STALE_FORM = (
    "This form cannot be accepted: its security token is missing or out of date (the page"
    " was open while the server restarted, or it was sent from elsewhere). Nothing was"
    " written. Reload the page and try again."
)


async def _refused(request: Request, back: str, message: str, status: int) -> Response:
    """The page the form came from, with the reason it was refused."""
    if back.startswith("/supervisors/"):
        supervisor = back.removeprefix("/supervisors/").split("/")[0].split("?")[0]
        return await _supervisor(request, supervisor, error=message, status=status)
    return await inbox(request, error=message, status=status)


# -- supervisors ------------------------------------------------------------------------


async def supervisors(request: Request) -> Response:
    query = request.query_params
    state, phase = query.get("state") or None, query.get("phase") or None
    daemon = query.get("daemon") or None
    if state and state not in SupervisorStateKind.__members__.values():
        return render(request, "error.html", 400, message=f"no state is called {state!r}")
    if phase and phase not in PHASES:
        return render(request, "error.html", 400, message=f"no phase is called {phase!r}")
    services = web(request).services
    found = await services.list_supervisors(
        state=SupervisorStateKind(state) if state else None, phase=phase, daemon_id=daemon,
        limit=LIST_LIMIT,
    )  # fmt: skip
    counts = await services.count_supervisors(phase=phase, daemon_id=daemon)
    return render(
        request, "supervisors.html", supervisors=found, counts=counts, total=sum(counts.values()),
        state=state, phase=phase, daemon=daemon, limit=LIST_LIMIT,
    )  # fmt: skip


async def supervisor(request: Request) -> Response:
    return await _supervisor(request, request.path_params["supervisor_id"])


async def _supervisor(
    request: Request, typed: str, *, error: str | None = None, status: int = 200
) -> Response:
    services = web(request).services
    query = request.query_params
    try:
        page = await services.supervisor(typed, journal_limit=PAGE)
        journal = page.journal
        if (before := _int(query.get("journal_before"))) is not None:
            journal = await services.journal(page.state.id, before=before, limit=PAGE)
        conversation = await services.conversation(
            page.state.id, before=_int(query.get("before")), limit=PAGE
        )
    except (DaemonError, ValueError) as exc:
        return render(request, "error.html", status_of(exc), message=message_of(exc),
                      candidates=getattr(exc, "candidates", ()))  # fmt: skip
    answered = query.get("answered")
    return render(
        request, "supervisor.html", status_code=status, page=page, s=page.state,
        journal=journal, conversation=conversation, error=error, answered_id=answered,
        answered=next((q for q in page.questions if str(q.question.id) == answered), None),
    )  # fmt: skip


async def restore_confirm(request: Request) -> Response:
    try:
        page = await web(request).services.supervisor(request.path_params["supervisor_id"])
    except (DaemonError, ValueError) as exc:
        return render(request, "error.html", status_of(exc), message=message_of(exc))
    return render(request, "restore_confirm.html", s=page.state)


async def restore(request: Request) -> Response:
    shared = web(request)
    form = await read_form(request)
    typed = request.path_params["supervisor_id"]
    if not shared.csrf.valid(request, form):
        return render(request, "error.html", 403, message=_STALE_FORM)
    try:
        outcome = await shared.services.restore(typed)
    except (DaemonError, ValueError) as exc:
        return render(request, "error.html", status_of(exc), message=message_of(exc))
    return render(request, "restore_done.html", outcome=outcome)


async def daemons(request: Request) -> Response:
    return render(request, "daemons.html", daemons=await web(request).services.daemons())


# -- login ------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    shared = web(request)
    if shared.token is None:
        return RedirectResponse("/", status_code=303)
    next_path = local_path(request.query_params.get("next"))
    if request.method == "GET":
        return render(request, "login.html", next_path=next_path, error=None)
    form = await read_form(request)
    next_path = local_path(form.get("next"))
    if not shared.csrf.valid(request, form):
        return render(request, "login.html", 403, next_path=next_path, error=_STALE_FORM)
    if not token_ok(form.get("token", ""), shared.token):
        return render(request, "login.html", 401, next_path=next_path,
                      error="That is not the token this server was started with.")  # fmt: skip
    response = RedirectResponse(next_path, status_code=303)
    set_session(response, shared.token)
    return response


async def logout(request: Request) -> Response:
    form = await read_form(request)
    if not web(request).csrf.valid(request, form):
        return render(request, "error.html", 403, message=_STALE_FORM)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# What a page's handler is: a request in, a response out.
Endpoint = Callable[[Request], Awaitable[Response]]


def routes() -> list[BaseRoute]:
    def page(path: str, endpoint: Endpoint, methods: tuple[str, ...] = ("GET",)) -> Route:
        return Route(path, endpoint, methods=list(methods))

    return [
        page("/", inbox_page),
        page("/events", events),
        page("/fragments/questions/{question_id}", question_fragment),
        page("/questions/{question_id}/answer", answer, ("POST",)),
        page("/supervisors", supervisors),
        page("/supervisors/{supervisor_id}", supervisor),
        page("/supervisors/{supervisor_id}/restore", restore_confirm),
        page("/supervisors/{supervisor_id}/restore", restore, ("POST",)),
        page("/daemons", daemons),
        page("/login", login, ("GET", "POST")),
        page("/logout", logout, ("POST",)),
    ]
