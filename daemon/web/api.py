"""The JSON API beside the page, for programs: the same services, the same rules.

Errors are `{"error": message}` with 400 (malformed), 401 (token), 404 (unknown id),
409 (answered already, or an id prefix shared by several: `candidates`), 415 (not
JSON), 422 (not among the choices: `choices`), 503 (database). A POST must be JSON,
which a form on another site cannot send. Described by /api/openapi.json (openapi.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from daemon.errors import DaemonError
from daemon.models import SupervisorStateKind
from daemon.services.views import row_json
from daemon.web.openapi import document
from daemon.web.shared import message_of, status_of, web

MAX_BODY_BYTES = 64 * 1024


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


def _error(exc: Exception) -> Response:
    body: dict[str, Any] = {"error": message_of(exc)}
    for extra in ("candidates", "choices"):
        if getattr(exc, extra, None) is not None:
            body[extra] = list(getattr(exc, extra))
    return Json(body, status_code=status_of(exc))


async def _body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise _NotJsonError
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ValueError(f"a request body is at most {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


class _NotJsonError(Exception):
    pass


def _limit(request: Request, default: int, most: int) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 0 < int(text) <= most:
        raise ValueError(f"limit must be a whole number from 1 to {most}")
    return int(text)


def _before(request: Request) -> int | None:
    text = request.query_params.get("before")
    if text is None:
        return None
    if not text.isdigit():
        raise ValueError("before must be a whole number")
    return int(text)


async def questions(request: Request) -> Response:
    found = await web(request).services.pending_questions()
    return Json([item.to_json() for item in found])


async def answer(request: Request) -> Response:
    shared = web(request)
    try:
        body = await _body(request)
        text, by = body.get("answer"), body.get("by")
        if not isinstance(text, str) or not isinstance(by, str | None):
            raise ValueError('the body must be {"answer": "...", "by": "..." (optional)}')
        receipt = await shared.services.answer(request.path_params["question_id"], text, by=by)
    except _NotJsonError:
        return Json({"error": "send the answer as application/json"}, status_code=415)
    except (DaemonError, ValueError) as exc:
        return _error(exc)
    if shared.live is not None:
        shared.live.publish("answered", str(receipt.question_id))
    return Json(receipt.to_json())


async def supervisors(request: Request) -> Response:
    query = request.query_params
    services = web(request).services
    try:
        state = SupervisorStateKind(query["state"]) if query.get("state") else None
        phase, daemon = query.get("phase") or None, query.get("daemon") or None
        found = await services.list_supervisors(
            state=state, phase=phase, daemon_id=daemon, limit=_limit(request, 100, 10_000)
        )
        counts = await services.count_supervisors(phase=phase, daemon_id=daemon)
    except (DaemonError, ValueError) as exc:
        return _error(exc)
    listed = []
    for state_found in found:
        item = state_found.to_json()
        del item["conversationHistory"]  # never loaded for a list
        listed.append(item)
    return Json({"supervisors": listed, "counts": counts})


async def supervisor(request: Request) -> Response:
    try:
        page = await web(request).services.supervisor(request.path_params["supervisor_id"])
    except (DaemonError, ValueError) as exc:
        return _error(exc)
    return Json(page.to_json())


async def _paged(request: Request, kind: str) -> Response:
    services = web(request).services
    read = services.conversation if kind == "conversation" else services.journal
    try:
        page = await read(
            request.path_params["supervisor_id"],
            before=_before(request),
            limit=_limit(request, 50, 1000),
        )
    except (DaemonError, ValueError) as exc:
        return _error(exc)
    return Json(page.to_json())


async def conversation(request: Request) -> Response:
    return await _paged(request, "conversation")


async def journal(request: Request) -> Response:
    return await _paged(request, "journal")


async def restore(request: Request) -> Response:
    try:
        await _body(request)
        outcome = await web(request).services.restore(request.path_params["supervisor_id"])
    except _NotJsonError:
        return Json({"error": "send the request as application/json ({})"}, status_code=415)
    except (DaemonError, ValueError) as exc:
        return _error(exc)
    return Json(
        {
            "supervisorId": str(outcome.supervisor_id),
            "outcome": outcome.outcome,
            "action": outcome.action.value,
            "validation": outcome.validation.to_json(),
            "context": outcome.context.to_json(),
        }
    )


async def daemons(request: Request) -> Response:
    return Json([row_json(row) for row in await web(request).services.daemons()])


async def openapi(request: Request) -> Response:
    return Json(document())


def routes() -> list[BaseRoute]:
    return [
        Route("/api/openapi.json", openapi),
        Route("/api/questions", questions),
        Route("/api/questions/{question_id}/answer", answer, methods=["POST"]),
        Route("/api/supervisors", supervisors),
        Route("/api/supervisors/{supervisor_id}", supervisor),
        Route("/api/supervisors/{supervisor_id}/conversation", conversation),
        Route("/api/supervisors/{supervisor_id}/journal", journal),
        Route("/api/supervisors/{supervisor_id}/restore", restore, methods=["POST"]),
        Route("/api/daemons", daemons),
    ]
