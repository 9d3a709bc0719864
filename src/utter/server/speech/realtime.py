"""A WebSocket speech session whose text arrives while its audio is sent (voice agents).

The text comes in messages (an LLM's reply, token by token) and goes into a
:class:`~utter.engine.sched.textfeed.TextFeed`; the request starts speaking with its first final
word and the engine parks it whenever it runs out of text. Audio goes out as it is made.
A long reply is spoken in parts, as the API speaks a long text (``longform.py``): a
:class:`~utter.server.textsplit.PartCutter` ends a part at a sentence end once it is long
enough, its feed is closed, and the text after it goes into the next part's feed, a request of
its own that starts at once (generated beside the one speaking, its audio joined after it with
a crossfade), so no reply is cut short by one request's frame limit or drifts with its length.
Two protocols share this: our own (``routes/realtime.py``) and ElevenLabs' ``stream-input``
(``routes/elevenlabs.py``); each says how messages look, this module does the rest: auth,
limits, the idle timeout, cancelling when the client leaves, and errors as messages.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from ...audio.encode import AudioEncoder
from ...engine.engine import Request
from ...engine.sampling import GenerationOptions
from ...engine.sched.batcher import Batcher, QueueFullError, WorkerError
from ...engine.sched.textfeed import TextFeed
from ...engine.voice import VoicePrompt
from ..deps import Service
from ..http.errors import ApiError
from .longform import PartedStream, parts_at_once
from .submit import _stream_error
from .textsplit import PartCutter

logger = logging.getLogger(__name__)

SESSION_START_FAILED = "The session could not start on the server (the server log says why); retry shortly."
POLICY_VIOLATION = 1008  # WebSocket close codes
INTERNAL_ERROR = 1011


@dataclass
class Incoming:
    """One client message, decoded: text to add, and whether to flush or end the input."""

    text: str = ""
    flush: bool = False
    close: bool = False


class SessionError(Exception):
    """Ends a session with an error message to the client (``status`` as in HTTP)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def key_of(ws: WebSocket) -> str | None:
    """The API key a WebSocket client sent in its headers or query string (browsers cannot set
    headers on a WebSocket): ``Authorization: Bearer``, ``X-API-Key``, ``xi-api-key``, or
    ``?api_key=`` / ``?xi_api_key=``."""
    h = ws.headers
    auth = h.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    for value in (h.get("x-api-key"), h.get("xi-api-key"), ws.query_params.get("api_key"),
                  ws.query_params.get("xi_api_key")):  # fmt: skip
        if value:
            return value
    return None


def key_ok(given: object, expected: str | None) -> bool:
    """Whether ``given`` is the server's key (anything but a non-empty string is not: a JSON
    message may carry a number or a list where the key goes)."""
    if expected is None:
        return True
    return isinstance(given, str) and bool(given) and hmac.compare_digest(given.encode(), expected.encode())


async def receive_text(ws: WebSocket) -> str:
    """The next message, which must be a text frame: a binary frame is a :class:`SessionError`
    (400) rather than the KeyError Starlette's ``receive_text`` raises for it."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text = message.get("text")
    if text is None:
        raise SessionError("Messages are JSON in text frames, not binary ones.")
    return text


class TextInSession(ABC):
    """One utterance over one WebSocket: messages in (:meth:`read`), audio out (:meth:`send_audio`)."""

    def __init__(self, ws: WebSocket, service: Service, encoder: AudioEncoder) -> None:
        self.ws, self.service, self.encoder = ws, service, encoder
        self.feeds = [TextFeed()]  # one per part of the reply, in order
        self.cutter = PartCutter(service.settings.split_chars)
        self.closed = False  # the client ended its text
        self.chars = 0
        self.stream: PartedStream | None = None
        self._part: Callable[[TextFeed], Request] | None = None  # a part's request, once running

    # -------------------------------------------------------------- protocol
    @abstractmethod
    async def read(self) -> Incoming:
        """The next client message; raises WebSocketDisconnect when the client is gone and
        SessionError for a message that breaks the protocol."""

    @abstractmethod
    async def send_audio(self, data: bytes) -> None: ...

    @abstractmethod
    async def send_done(self, stream: PartedStream) -> None: ...

    @abstractmethod
    async def send_error(self, message: str, status: int) -> None: ...

    # ------------------------------------------------------------------- run
    def add(self, message: Incoming) -> None:
        """Apply one message to the text input, within the service's text limit."""
        if message.text:
            self.chars += len(message.text)
            limit = self.service.settings.max_text_chars
            if self.chars > limit:
                raise SessionError(f"The text is over {limit} characters; end this input and start another.")
            if self.closed:
                raise SessionError("The text input was already closed.")
            for text, ends in self.cutter.push(message.text):
                self._push(text)
                if ends:
                    self.feeds[-1].close()
        if message.flush and not self.feeds[-1].closed:
            if self.cutter.flush():  # a sentence end that ends the part: its feed is complete
                self.feeds[-1].close()
            else:
                self.feeds[-1].flush()
        if message.close:
            self.closed = True
            self.feeds[-1].close()
            if self.stream is not None:
                self.stream.end()

    def _push(self, text: str) -> None:
        """Text for the current part; after a cut, the first text opens the next part."""
        feed = self.feeds[-1]
        if feed.closed:
            if not text.strip():
                return
            feed = TextFeed()
            self.feeds.append(feed)
            if self.stream is not None and self._part is not None:
                try:
                    self.stream.add(self._part(feed))
                except WorkerError as exc:
                    raise SessionError(f"The server cannot generate now: {exc}.", 503) from exc
        feed.push(text)

    async def _read_loop(self) -> None:
        """Feed the text in until the input closes; a silent client times out."""
        idle = self.service.settings.realtime_idle_timeout_s
        while not self.closed:
            try:
                message = await asyncio.wait_for(self.read(), idle)
            except asyncio.TimeoutError:
                raise SessionError(
                    f"No text for {idle:g} s: the input is closed for inactivity.", 408
                ) from None
            self.add(message)

    async def run(
        self, batcher: Batcher, prompt: VoicePrompt, language: str, options: GenerationOptions
    ) -> None:
        """Speak the text as it arrives; returns when the audio is sent or the session failed."""

        def part(feed: TextFeed) -> Request:
            return Request("", prompt, language, options, feed=feed)

        settings = self.service.settings
        try:
            self.stream = PartedStream(
                batcher,
                [part(feed) for feed in self.feeds],
                parts_at_once(settings.split_parallel, batcher),
                options.max_frames,
                settings.split_crossfade_ms,
                open=not self.closed,
            )
            self._part = part
        except QueueFullError as exc:
            raise SessionError(f"The server is busy ({exc}); retry shortly.", 429) from exc
        except WorkerError as exc:
            raise SessionError(f"The server cannot generate now: {exc}.", 503) from exc
        except ValueError as exc:
            raise SessionError(str(exc)) from exc
        logger.info("realtime %s started (%s, %s)", self.stream.id, language,
                    "x-vector" if prompt.x_vector_only else "icl")  # fmt: skip
        reader = asyncio.create_task(self._read_loop())
        try:
            await self._send_loop(reader)
        finally:
            reader.cancel()
            if self.stream.finish_reason is None:
                self.stream.cancel()

    async def _send_loop(self, reader: asyncio.Task) -> None:
        stream = self.stream
        assert stream is not None
        chunks = stream.__aiter__()
        timeout = self.service.settings.generation_timeout_s
        while True:
            nxt = asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait({nxt, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception() is not None:  # the client left or misbehaved
                nxt.cancel()
                raise reader.exception()  # type: ignore[misc]
            if nxt not in done:
                if not done:  # neither text nor audio for the whole timeout
                    nxt.cancel()
                    raise SessionError(f"No audio for {timeout:g} s: stopped.", 504)
                await asyncio.wait({nxt}, timeout=timeout)  # the input closed: audio follows
                if not nxt.done():
                    nxt.cancel()
                    raise SessionError(f"No audio for {timeout:g} s: stopped.", 504)
            try:
                chunk = nxt.result()
            except StopAsyncIteration:
                break
            except Exception as exc:  # noqa: BLE001 - this request's failure, said to its client
                err = _stream_error(stream, exc)
                raise SessionError(err.message, err.status) from exc
            data = self.encoder.write(chunk.pcm)
            if data:
                await self.send_audio(data)
        tail = self.encoder.close()
        if tail:
            await self.send_audio(tail)
        if stream.finish_reason == "cancelled":
            raise SessionError("The server is shutting down; the generation was cancelled.", 503)
        await self.send_done(stream)

    async def serve(
        self, batcher: Batcher, prompt: VoicePrompt, language: str, options: GenerationOptions
    ) -> None:
        """:meth:`run`, with every ending turned into the right message and close code."""
        try:
            await self.run(batcher, prompt, language, options)
            await self.ws.close(1000)
        except WebSocketDisconnect:
            logger.info("realtime client left%s", f"; cancelled {self.stream.id}" if self.stream else "")
        except (SessionError, ApiError) as exc:
            message = exc.message
            status = exc.status
            await self._fail(message, status)
        except Exception:  # noqa: BLE001 - one error message, logged once
            logger.exception("realtime session failed")
            await self._fail("The session failed on the server; the server log has the details.", 500)

    async def _fail(self, message: str, status: int) -> None:
        try:
            await self.send_error(message, status)
            await self.ws.close(INTERNAL_ERROR if status >= 500 else POLICY_VIOLATION)
        except (WebSocketDisconnect, RuntimeError):  # already gone
            pass
