"""The ASGI application: the pages' and the API's routes, the static files, the
security middleware and the one handler for errors no route expected.

Handlers call daemon.services, the same functions as the CLI, and turn their results
into HTML (pages.py) or JSON (api.py); what they share is in shared.py. Templates
autoescape everything: whatever an agent wrote (questions, choices, messages, task
output) is shown as text, never run.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from daemon.errors import DaemonError
from daemon.logs import get_logger, redact
from daemon.services import Services
from daemon.web import api, pages
from daemon.web.live import Live
from daemon.web.security import LOOPBACK_NAMES, Csrf, SecurityMiddleware
from daemon.web.shared import HERE, Web, message_of, render, status_of, templates

log = get_logger()


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


__all__ = ["create_app"]
