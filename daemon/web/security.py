"""Who may use the web page, and proof that a form was sent from it.

- Loopback by default. Any other address needs a token; when one is set, every page
  asks for it once (the login form) and then knows the browser by an HttpOnly,
  SameSite=Strict session cookie derived from it (not the token itself). The JSON API
  takes it as `Authorization: Bearer TOKEN` and never a cookie, so a page elsewhere
  cannot borrow a person's session to call it.
- Every form carries a CSRF token: an HMAC, under a key of this process, of a random
  value kept in a cookie of its own. A form posted from another site has neither.
- Every response says: no inline script, nothing from elsewhere, no framing.

Nothing here reads the database.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "sd_session"
CSRF_COOKIE = "sd_csrf"
CSRF_FIELD = "csrf"
SESSION_MAX_AGE_S = 30 * 24 * 3600
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
# Paths served to anyone: the login form and what it needs.
OPEN_PATHS = ("/login", "/static/")

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        b" connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def session_value(token: str) -> str:
    """The session cookie for a token: proves the token was given, without holding it."""
    return hmac.new(token.encode(), b"supervisor-daemon web session", hashlib.sha256).hexdigest()


def bearer_ok(headers: Headers, token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def session_ok(request: Request, token: str) -> bool:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def token_ok(given: str, token: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), token.encode())


def set_session(response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        path="/",
    )


class Csrf:
    """CSRF tokens for forms: HMAC(process key, the browser's csrf cookie)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _sign(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()

    def token(self, request: Request) -> str:
        """The token to put in this request's forms (a new cookie is set if needed)."""
        cookie = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
        if not cookie:
            cookie = request.state.new_csrf = secrets.token_urlsafe(32)
        return self._sign(cookie)

    def set_cookie(self, request: Request, response: Response) -> None:
        new = getattr(request.state, "new_csrf", None)
        if new:
            response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", path="/")

    def valid(self, request: Request, form: dict[str, str]) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        given = form.get(CSRF_FIELD, "")
        if not cookie or not given:
            return False
        return hmac.compare_digest(given.encode(), self._sign(cookie).encode())


class SecurityMiddleware:
    """Security headers on every response; the token asked for when one is set."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refused = self._refusal(scope)
        if refused is not None:
            await refused(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> Response | None:
        if self.token is None:
            return None
        path: str = scope["path"]
        request = Request(scope)
        if path.startswith("/api/"):
            if bearer_ok(request.headers, self.token):
                return None
            return JSONResponse(
                {"error": "this API needs the header Authorization: Bearer TOKEN"},
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        if path.startswith(OPEN_PATHS) or session_ok(request, self.token):
            return None
        if scope["method"] == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"/login?next={_quote_path(request)}", status_code=303)
        return JSONResponse({"error": "log in first"}, status_code=401)


def _quote_path(request: Request) -> str:
    from urllib.parse import quote  # noqa: PLC0415 - only on a redirect to the login form

    return quote(request.url.path, safe="/")


def local_path(value: Any, default: str = "/") -> str:
    """`value` when it is a path on this site (where to go after a form), else `default`:
    never an address elsewhere (//evil.example, https://...)."""
    text = str(value or "")
    if text.startswith("/") and not text.startswith("//") and "\\" not in text:
        return text
    return default
