"""Bounds on what one connection can hold: a deadline for request headers, an idle keep-alive
timeout and a cap on open connections, for the uvicorn server of the service and the studio.

uvicorn closes idle keep-alive connections, but a connection that never finishes its request
headers (one byte a minute, or nothing at all after connecting) is kept open for ever, and
enough of them exhaust the process's file descriptors ("slowloris"). :class:`GuardedH11Protocol`
gives every request's headers ``header_timeout_s`` from the first byte (or from the connection
for the first request) and closes the connection when they are late. Request bodies have their
own deadline in :mod:`.middleware`, where the app reads them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.

    A class attribute, not a constructor argument: uvicorn builds protocols itself, and worker
    processes import this class by name (:func:`uvicorn_limits` sets it in every process)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:  # the next request has begun (keep-alive)
                self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.info("closing a connection whose request headers took over %g s", self.header_timeout_s)
            self.transport.close()


def uvicorn_limits(settings: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` that apply the connection limits
    of ``settings`` (the TTS service's or the studio's: both have these fields).

    ``limit_concurrency`` makes uvicorn answer 503 to connections beyond ``max_connections``
    instead of accepting them without bound. ``timeout_graceful_shutdown``: uvicorn otherwise
    waits at shutdown until every answer in flight is sent, so one client that stops reading a
    streamed answer would keep a stopped server running for ever."""
    GuardedH11Protocol.header_timeout_s = settings.header_timeout_s
    return {
        "http": GuardedH11Protocol,
        "timeout_keep_alive": settings.idle_timeout_s,
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }


def check_address(host: str, port: int) -> None:
    """Exit with a one-line error when ``host:port`` cannot be listened on (another server
    there, a host that is not this machine's), before anything loads: uvicorn finds out only
    after the app has started, with the model loading in the background, and its process then
    dies mid-load. Binds the way uvicorn does (``SO_REUSEADDR``), so a port in TIME_WAIT passes."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = " (another server there? choose --port)" if exc.errno == errno.EADDRINUSE else ""
        raise SystemExit(f"utter: error: cannot listen on {host}:{port}: {reason}{hint}") from None
