"""Helpers for the server tests: a real uvicorn server on a free loopback port, in a thread."""

from __future__ import annotations

import base64
import io
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import uvicorn

from utter.server.app import create_app
from utter.server.http.connections import uvicorn_limits
from utter.server.runtime import EngineHolder
from utter.server.settings import ServerSettings

API_KEY = "test-key-123"


def _calm_tls(context: ssl.SSLContext) -> None:
    """TLS 1.2 without session tickets on the test server.

    The websockets sync client (ours and the ElevenLabs SDK's) reads in a background thread while
    the caller writes, and CPython 3.11's ssl module lets both into one OpenSSL connection at once.
    With TLS 1.3 the server's session tickets arrive after the handshake, so the read thread
    processes handshake records while the caller sends its upgrade request: once in a full run on
    a 2-core AVX2 machine, libssl aborted the whole test process there ("Fatal Python error:
    Aborted" in ssl send). TLS 1.2 without tickets sends nothing after the handshake."""
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET


class LiveServer:
    """``create_app`` (or ``app``) served by uvicorn over loopback; ``stop()`` shuts it down."""

    def __init__(
        self, settings: ServerSettings, holder: EngineHolder, app=None, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.settings, self.holder = settings, holder
        self.app = app if app is not None else create_app(settings, holder)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        limits = uvicorn_limits(settings)
        if tls:  # (certificate, key): for clients that only speak wss:// (ElevenLabs' realtime SDK)
            limits = {**limits, "ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])}
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on", **limits)
        if tls:
            config.load()  # makes config.ssl now (the server would on start) to narrow it
            _calm_tls(config.ssl)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Shut down as on SIGTERM. A server left running would keep its batcher stepping the
        session's shared engine under the next test's batcher (a race that fails a later,
        unrelated test), so one that does not stop fails here."""
        self.server.should_exit = True
        self.thread.join(timeout=self.settings.shutdown_grace_s + 20)
        self._sock.close()
        if self.thread.is_alive():
            self.server.force_exit = True
            if self.settings.manage_holder:
                self.holder.stop()
            raise RuntimeError("the test server did not stop within its shutdown grace")

    def client(self, api_key: str | None = API_KEY, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def start_server(
    engine, tmp: Path, holder: EngineHolder | None = None, tls: tuple[Path, Path] | None = None, **overrides
) -> LiveServer:
    """A server around the session's tiny engine (its own batcher), with test-sized limits."""
    values = dict(
        model="tiny",
        data_dir=tmp,
        api_key=API_KEY,
        max_text_chars=300,
        ref_max_seconds=5.0,
        max_request_bytes=2_000_000,
        ready_timeout_s=5.0,
        generation_timeout_s=120.0,
        first_chunk_frames=1,
        chunk_frames=2,
        shutdown_grace_s=3.0,
    )
    values.update(overrides)
    settings = ServerSettings(**values)
    if holder is None:
        holder = EngineHolder.from_engine(
            engine,
            model="tiny",
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            first_chunk_frames=settings.first_chunk_frames,
            chunk_frames=settings.chunk_frames,
            max_frames=settings.max_frames,
        )
    return LiveServer(settings, holder, tls=tls).start()


def paced_timeout(srv: LiveServer, request, floor_s: float, factor: float, repeats: int = 3) -> float:
    """Set ``srv``'s generation timeout (read per request) to ``factor`` times the fastest of
    ``repeats`` runs of ``request()`` alone, and at least ``floor_s``; returns it.

    Tests whose well-behaved requests must finish within the timeout under load while others run
    past it need a timeout in this machine's own pace: a fixed one that held on a fast CPU
    failed on a 2-core AVX2 EPYC that runs the tiny model 2.5x slower."""
    times = []
    for _ in range(repeats):
        start = time.monotonic()
        request()
        times.append(time.monotonic() - start)
    timeout = max(floor_s, factor * min(times))
    srv.settings.generation_timeout_s = timeout
    return timeout


def store_voice(http: httpx.Client, ref_wav: Path, name: str = "Ada") -> dict:
    """``POST /v1/voices`` with the test reference and its transcript; the stored voice's info."""
    from tests.conftest import REF_TEXT

    files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
    r = http.post("/v1/voices", files=files, data={"name": name, "ref_text": REF_TEXT, "language": "English"})
    assert r.status_code == 201, r.text
    return r.json()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def read_wav(data: bytes) -> tuple[np.ndarray, int, str]:
    """(int16 samples, rate, subtype) of a WAV file in memory."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        return f.read(dtype="int16"), f.samplerate, f.subtype


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (openssl), for TLS on loopback."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install -y openssl)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
