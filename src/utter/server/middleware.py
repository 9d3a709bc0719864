"""Request ids, one structured access-log line per request, and a cap on request body size.

Plain ASGI middleware (not Starlette's BaseHTTPMiddleware), so streamed responses pass
through untouched and the app behaves the same when the studio mounts it under a prefix.
The request id comes from a sane incoming ``X-Request-ID`` or is made here; it is sent back in
the response and added to every log record made while handling the request (see
:class:`RequestIdFilter`), so one grep finds everything about a request.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import time

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

access_log = logging.getLogger("utter.server.access")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("utter_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) for formats like ``%(request_id)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestContextMiddleware:
    """Assigns the request id, enforces ``max_body_bytes`` and logs the outcome."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _SANE_ID.match(incoming) else secrets.token_hex(6)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes
        declared = headers.get("content-length", "")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"The request body is larger than the {limit} bytes allowed.")
            return message

        try:
            if declared.isdigit() and int(declared) > limit:
                await _reject_too_large(send_with_id, limit)
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            access_log.info(
                "request_id=%s method=%s path=%s status=%d duration_ms=%.1f",
                request_id,
                scope.get("method", "-"),
                scope.get("path", ""),
                status,
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)


async def _reject_too_large(send: Send, limit: int) -> None:
    response = error_response(413, f"The request body is larger than the {limit} bytes allowed.")
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
