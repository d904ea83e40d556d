"""What every handler of the web page shares: the Web record on the app, errors as
statuses and messages, form reading, and the templates (autoescaping everything).

Imported by pages.py and api.py, and by app.py, which puts the routes together; it
imports none of them.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from daemon.errors import (
    AmbiguousIdError,
    BadChoiceError,
    ConflictError,
    DatabaseError,
    NotFoundError,
)
from daemon.logs import get_logger, redact
from daemon.models import PHASES, SupervisorStateKind
from daemon.services import Services
from daemon.web.live import Live
from daemon.web.security import Csrf

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
