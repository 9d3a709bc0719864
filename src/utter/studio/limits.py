"""A cap on request bodies, in size and time, enforced while they arrive (before anything is
parsed or spooled).

FastAPI parses a multipart form before the handler runs, spooling files to disk, so a size check
in the handler comes too late for a multi-gigabyte upload. This middleware refuses a declared
``Content-Length`` over the limit at once, and counts the bytes of bodies without one.
"""

from __future__ import annotations

import asyncio
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..server.http.errors import error_response


class _Refused(Exception):
    """The body broke a limit; ``response`` is the answer to send instead of the app's."""

    def __init__(self, response: JSONResponse) -> None:
        self.response = response


class BodySizeLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        prefix: str = "/api",
        timeout_s: float = 120.0,
        shown_limit_mb: float | None = None,
    ) -> None:
        self.app, self.max_bytes, self.prefix, self.timeout_s = app, max_bytes, prefix, timeout_s
        # The limit people are told (the upload's own), not the body's (which adds form framing).
        self.shown_limit_mb = shown_limit_mb if shown_limit_mb is not None else max_bytes / (1024 * 1024)

    def _too_large(self) -> JSONResponse:
        return error_response(413, f"The request is too large: the limit is {self.shown_limit_mb:g} MB.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        received = 0
        refused: JSONResponse | None = None
        started = False
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, refused, body_done
            if body_done:  # later reads wait for a disconnect: no deadline on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                refused = error_response(408, f"The upload took over {self.timeout_s:g} s; try again.")
                raise _Refused(refused) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    refused = self._too_large()
                    raise _Refused(refused)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None:
                return  # the app's answer to a broken body is replaced by the refusal below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused:
            pass
        if refused is not None and not started:
            await refused(scope, receive, send)
