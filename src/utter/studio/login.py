"""An optional login for the studio: one password (``UTTER_PASSWORD``), required for every page,
every ``/api`` route and the TTS service under ``/tts`` when set, and required to listen on a
non-loopback address at all (``utter serve`` refuses to start otherwise, unless told the network
is trusted with ``UTTER_OPEN=1``).

People sign in on ``/login`` and get a session cookie (HttpOnly, SameSite=Lax, 30 days): an
expiry time signed with HMAC under a key derived from the password, so every worker process
checks it alike and changing the password ends every session. Programs send the password (or
the TTS service's ``UTTER_API_KEY``) as ``Authorization: Bearer ...`` or ``X-API-Key``. The check
runs first, before a byte of a body is read. ``/login``, the static files the login page needs
and the two health checks stay open. Wrong passwords are limited per client address.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import parse_qs, quote

import jinja2
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..server.http.errors import error_response
from ..server.http.middleware import api_key_matches

COOKIE = "utter_session"
SESSION_SECONDS = 30 * 24 * 3600
OPEN_PATHS = frozenset({"/login", "/logout", "/api/health", "/tts/health", "/static/favicon.svg"})
OPEN_PREFIXES = ("/static/css/",)
MAX_FAILURES = 10  # wrong passwords per client address ...
FAILURE_WINDOW_S = 300.0  # ... within this many seconds, then 429 until the window passes
MAX_FORM_BYTES = 4096

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def needs_password(host: str) -> bool:
    """Whether listening on ``host`` opens the studio to other machines."""
    return host not in LOOPBACK and not host.startswith("127.")


class LoginGate:
    """ASGI middleware: lets a request through only with a session cookie or the key."""

    def __init__(
        self, app: ASGIApp, password: str, api_key: str | None = None, secure_cookie: bool = False
    ) -> None:
        self.app = app
        self.password = password
        self.keys = [k for k in (password, api_key) if k]
        self.service_key = api_key or password  # what /tts asks for: a signed-in page gets it
        self.secret = hashlib.sha256(b"utter-session\0" + password.encode()).digest()
        self.secure_cookie = secure_cookie
        self.failures: defaultdict[str, deque[float]] = defaultdict(deque)

    # ----------------------------------------------------------- sessions
    def _token(self, expires: int) -> str:
        mac = hmac.new(self.secret, str(expires).encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def _session_ok(self, cookie_header: str) -> bool:
        for part in cookie_header.split(";"):
            name, _, value = part.strip().partition("=")
            if name != COOKIE:
                continue
            expires, _, mac = value.partition(".")
            if expires.isdigit() and int(expires) > time.time():
                return hmac.compare_digest(self._token(int(expires)), value)
        return False

    def _authorised(self, headers: dict[str, str]) -> bool:
        if self._session_ok(headers.get("cookie", "")):
            return True
        return any(api_key_matches(headers, key) for key in self.keys)

    # -------------------------------------------------------------- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path == "/login":
            await self._login(scope, receive, send, headers)
            return
        if path == "/logout":
            response: Response = RedirectResponse("/login", status_code=303)
            response.delete_cookie(COOKIE, path="/")
            await response(scope, receive, send)
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self._session_ok(headers.get("cookie", "")):
            if path.startswith("/tts/") and "authorization" not in headers and "x-api-key" not in headers:
                # The studio's own pages call the TTS service (the Design page): a session is the key.
                extra = (b"authorization", f"Bearer {self.service_key}".encode("latin-1"))
                scope = {**scope, "headers": [*scope.get("headers", []), extra]}
            await self.app(scope, receive, send)
            return
        if self._authorised(headers):
            await self.app(scope, receive, send)
            return
        browser = scope.get("method") == "GET" and "text/html" in headers.get("accept", "")
        if browser and not path.startswith(("/api/", "/tts/")):
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            message = (
                "Sign in first: this studio needs its password (a session, or 'Authorization: Bearer ...')."
            )
            response = error_response(401, message, {"WWW-Authenticate": "Bearer", "Connection": "close"})
        await response(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        target = _safe_next(query.get("next", ["/"])[0])
        if scope.get("method") != "POST":
            await _page(target)(scope, receive, send)
            return
        client = (scope.get("client") or ("-", 0))[0]
        recent = self.failures[client]
        while recent and recent[0] < time.monotonic() - FAILURE_WINDOW_S:
            recent.popleft()
        if len(recent) >= MAX_FAILURES:
            await _page(target, "Too many wrong passwords; wait a few minutes.", 429)(scope, receive, send)
            return
        form = await _read_form(receive)
        password = form.get("password", [""])[0]
        target = _safe_next(form.get("next", [target])[0])
        if not hmac.compare_digest(password.encode(), self.password.encode()):
            recent.append(time.monotonic())
            await _page(target, "Wrong password.", 401)(scope, receive, send)
            return
        response = RedirectResponse(target, status_code=303)
        expires = int(time.time()) + SESSION_SECONDS
        response.set_cookie(
            COOKIE,
            self._token(expires),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure_cookie,
        )
        await response(scope, receive, send)


def _safe_next(target: str) -> str:
    """Only a path on this site (no scheme, no ``//host``): never an open redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or "\n" in target:
        return "/"
    return target


async def _read_form(receive: Receive) -> dict[str, list[str]]:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES or not message.get("more_body", False):
            break
    return parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True
)


def _page(target: str, error: str = "", status: int = 200) -> HTMLResponse:
    """The sign-in page: plain HTML with the studio's style sheet, no script."""
    page = _TEMPLATES.get_template("login.html").render(target=target, error=error)
    return HTMLResponse(page, status_code=status)
