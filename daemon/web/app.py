"""The ASGI application: routes, templates, and the rules every handler shares.

Handlers call daemon.services, the same functions as the CLI, and turn their results
into HTML (pages.py) or JSON (api.py). Templates autoescape everything: whatever an
agent wrote (questions, choices, messages, task output) is shown as text, never run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from daemon.errors import (
    AmbiguousIdError,
    BadChoiceError,
    ConflictError,
    DaemonError,
    DatabaseError,
    NotFoundError,
)
from daemon.logs import get_logger, redact
from daemon.models import PHASES, SupervisorStateKind
from daemon.services import Services
from daemon.web.live import Live
from daemon.web.security import LOOPBACK_NAMES, Csrf, SecurityMiddleware

log = get_logger()
HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Web:
    """What handlers share, kept on `app.state.web`."""

    services: Services
    live: Live | None
    csrf: Csrf
    token: str | None
    templates: jinja2.Environment


def web(request: Request) -> Web:
    found: Web = request.app.state.web
    return found


def status_of(exc: Exception) -> int:
    """The HTTP status for one of the daemon's errors."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError | AmbiguousIdError):
        return 409
    if isinstance(exc, BadChoiceError):
        return 422
    if isinstance(exc, ValueError):
        return 400
    return 503 if isinstance(exc, DatabaseError) else 500


def message_of(exc: Exception) -> str:
    if isinstance(exc, DatabaseError):
        # A driver's message may name a host or a DSN: people get the gist only.
        return "the database cannot be reached or refused the operation; try again shortly"
    return redact(str(exc))


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (the only kind our pages send), last value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ValueError(f"a form is at most {MAX_FORM_BYTES} bytes")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


# -- template helpers -------------------------------------------------------------------


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str, ensure_ascii=False)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: agents' text is data
    )
    env.filters.update(
        ago=_ago, when=_when, pretty=_pretty, compact=_compact, short=lambda v: str(v)[:8]
    )
    env.globals.update(states=[s.value for s in SupervisorStateKind], phases=PHASES)
    return env


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    shared = web(request)
    html = shared.templates.get_template(name).render(
        request=request,
        csrf=shared.csrf.token(request),
        logged_in=shared.token is not None,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    shared.csrf.set_cookie(request, response)
    return response


Handler = Callable[[Request], Awaitable[Response]]


async def _daemon_error(request: Request, exc: Exception) -> Response:
    """An error no handler expected (the database went away mid-page): its gist, in the
    form the caller reads, never a driver's message."""
    log.warning("web.request_failed", path=request.url.path, error=redact(str(exc)))
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message_of(exc)}, status_code=status_of(exc))
    return render(request, "error.html", status_of(exc), message=message_of(exc))


def create_app(
    services: Services,
    *,
    live: Live | None = None,
    token: str | None = None,
    loopback: bool = True,
    extra_hosts: tuple[str, ...] = (),
) -> Starlette:
    """The application. On loopback it answers only to loopback host names, so that a
    page elsewhere cannot reach it through a name it controls (DNS rebinding)."""
    from daemon.web import api, pages  # noqa: PLC0415 - they import this module's helpers

    routes: list[BaseRoute] = [
        *pages.routes(),
        *api.routes(),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(SecurityMiddleware, token=token)]
    if loopback:
        allowed = [*LOOPBACK_NAMES, *extra_hosts]
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed))
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={DaemonError: _daemon_error}
    )
    app.state.web = Web(
        services=services, live=live, csrf=Csrf(), token=token, templates=templates()
    )
    return app


__all__ = ["Web", "create_app", "message_of", "read_form", "render", "status_of"]
