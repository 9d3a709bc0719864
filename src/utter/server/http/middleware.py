"""Request ids, the API key, bounds on request bodies, a last resort for errors, and one
structured access-log line per request.

Plain ASGI middleware (not Starlette's BaseHTTPMiddleware), so streamed responses pass
through untouched and the app behaves the same when the studio mounts it under a prefix.
The request id comes from a sane incoming ``X-Request-ID`` or is made here; it is sent back in
the response and added to every log record made while handling the request (see
:class:`RequestIdFilter`), so one grep finds everything about a request.

Order matters for hostile clients: the API key is checked from the headers before a byte of
the body is read (FastAPI reads and parses the body before it runs dependencies), the body must
arrive within ``body_timeout_s`` and ``max_body_bytes``, and an exception nothing else handled
becomes a 500 that carries the request id, logged once with it (a disk or quota that ran out:
507, logged as one line). Answering it here, not in uvicorn, also keeps the connection: an
exception that leaves the app makes uvicorn drop it, and a client reusing it gets a reset.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import re
import secrets
import time
from collections.abc import Mapping

from fastapi import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import STORAGE_FULL_MESSAGE, error_response, is_storage_full

access_log = logging.getLogger("utter.server.access")
logger = logging.getLogger(__name__)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("utter_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Paths that answer without the API key (health checks and the API's own documentation).
OPEN_PATHS = frozenset({"/health", "/languages", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
API_KEY_MESSAGE = "Missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'."


def log_safe(text: object) -> str:
    """``text`` with control characters escaped: client text (a path, a header) can never start
    a log line of its own or rewrite the terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))


def api_key_matches(headers: Mapping[str, str], expected: str | None) -> bool:
    """Whether lower-cased ``headers`` carry ``expected`` as ``Authorization: Bearer KEY``,
    ``X-API-Key: KEY`` or ``xi-api-key: KEY`` (always True without a key). Constant-time comparison."""
    if expected is None:
        return True
    given = headers.get("x-api-key", "") or headers.get("xi-api-key", "")  # the latter: ElevenLabs clients
    auth = headers.get("authorization", "")
    if not given and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) for formats like ``%(request_id)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class SingleLineFormatter(logging.Formatter):
    """Every record's message on one line, control characters escaped (tracebacks, which the
    formatter appends after the message, keep their lines): whatever text a client manages to
    put into a message, it cannot forge a log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = log_safe(record.message)
        return super().formatMessage(record)


class RequestContextMiddleware:
    """Assigns the request id, checks the API key, bounds the body, answers unhandled errors and
    logs the outcome."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int | None,
        body_timeout_s: float | None = 60.0,
        api_key: str | None = None,
        mounted: tuple[str, ...] = (),
    ) -> None:
        """``max_body_bytes`` and ``body_timeout_s`` None: no cap on the body here (the studio caps
        its uploads itself); paths under ``mounted`` belong to a mounted app with a middleware of
        its own and pass untouched."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.api_key = api_key
        self.mounted = tuple(prefix.rstrip("/") + "/" for prefix in mounted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.mounted):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _SANE_ID.match(incoming) else secrets.token_hex(6)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes if self.max_body_bytes is not None else float("inf")
        declared = headers.get("content-length", "")

        status_sent: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status = status_sent = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0
        body_done = False
        deadline = time.monotonic() + (self.body_timeout_s or 0.0)

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later reads wait for a disconnect: no deadline on those
                return await receive()
            if self.body_timeout_s is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    message = f"The request body took over {self.body_timeout_s:g} s to arrive."
                    raise HTTPException(408, message) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise HTTPException(413, f"The request body is larger than the {limit} bytes allowed.")
            return message

        path = scope.get("path", "")
        root = scope.get("root_path", "")
        route = path[len(root) :] if root and path.startswith(root) else path
        try:
            public = route in OPEN_PATHS or route.startswith("/docs/assets/")
            if not public and not api_key_matches(headers, self.api_key):
                # Connection: close, so the unread body is never read (nor waited for).
                refusal = error_response(
                    401, API_KEY_MESSAGE, {"WWW-Authenticate": "Bearer", "Connection": "close"}
                )
                await _send(send_with_id, refusal)
            elif declared.isdigit() and int(declared) > limit:
                await _reject_too_large(send_with_id, limit)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - the last resort: one log line with the id, one 500
            where = f"{scope.get('method', '-')} {log_safe(path)}"
            if is_storage_full(exc):
                logger.error("out of disk space in %s: %s", where, log_safe(exc))
                if status_sent is None:
                    await _send(send_with_id, error_response(507, STORAGE_FULL_MESSAGE))
            else:
                logger.exception("unhandled error in %s", where)
                if status_sent is None:
                    message = f"Internal server error (request id {request_id}); see the server log."
                    await _send(send_with_id, error_response(500, message))
        finally:
            access_log.info(
                "request_id=%s method=%s path=%s status=%d duration_ms=%.1f",
                request_id,
                log_safe(scope.get("method", "-")),
                log_safe(path),
                status,
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)


async def _send(send: Send, response: Response) -> None:
    start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    await send(start)
    await send({"type": "http.response.body", "body": response.body})


async def _reject_too_large(send: Send, limit: int) -> None:
    message = f"The request body is larger than the {limit} bytes allowed."
    await _send(send, error_response(413, message, {"Connection": "close"}))
