"""A cap on request bodies, enforced while they arrive (before anything is parsed or spooled).

FastAPI parses a multipart form before the handler runs, spooling files to disk, so a size check
in the handler comes too late for a multi-gigabyte upload. This middleware refuses a declared
``Content-Length`` over the limit at once, and counts the bytes of bodies without one.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..server.errors import error_response


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, prefix: str = "/api") -> None:
        self.app, self.max_bytes, self.prefix = app, max_bytes, prefix

    def _reject(self) -> JSONResponse:
        mb = self.max_bytes / (1024 * 1024)
        return error_response(413, f"The request is too large: the limit is {mb:.0f} MB.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject()(scope, receive, send)
            return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to a broken body is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if too_large and not started:
            await self._reject()(scope, receive, send)
