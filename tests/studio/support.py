"""Helpers of the studio tests: PostgreSQL clusters, live studio servers, test recordings, polling."""

from __future__ import annotations

import glob
import io
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn

from tests.conftest import REF_TEXT, speechlike
from utter.audio import to_wav_bytes

FINAL = ("completed", "failed", "cancelled")


# ------------------------------------------------------------------------------------- PostgreSQL
def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_cluster(bindir: Path) -> Iterator[Cluster]:
    """A started :class:`Cluster` (its URL in ``url``), stopped and removed afterwards; a cluster
    that cannot start fails the test with initdb's or pg_ctl's own words."""
    cluster = Cluster(bindir)
    try:
        cluster.url = cluster.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        cluster.stop()
        detail = getattr(exc, "stderr", b"") or b""
        pytest.fail(f"could not start a PostgreSQL cluster: {exc} {detail.decode(errors='replace')}")
    try:
        yield cluster
    finally:
        cluster.stop()


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary folder, trusting local connections.

    The folder names the test process that made it (``owner.pid``): a session killed by a signal
    never runs its fixture's cleanup, so the next one stops and removes clusters whose owner is
    gone (``sweep``) instead of leaving their servers running for good."""

    PREFIX = "utter-pg-"

    def __init__(self, bindir: Path, root: str | None = None) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix=self.PREFIX, dir=root))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self.port = free_port()
        self.as_root = os.geteuid() == 0  # initdb refuses to run as root
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")

    @classmethod
    def sweep(cls, bindir: Path, root: str | None = None) -> list[Path]:
        """Stop and remove the clusters under ``root`` (the temporary folder) whose test process
        no longer runs; returns their folders."""
        swept = []
        for folder in Path(root or tempfile.gettempdir()).glob(cls.PREFIX + "*"):
            try:
                owner = int((folder / "owner.pid").read_text())
            except (OSError, ValueError):
                continue  # not made by this helper, or made by a session still writing it
            if _alive(owner):
                continue
            leftover = cls.__new__(cls)
            leftover.bindir, leftover.dir, leftover.as_root = bindir, folder, os.geteuid() == 0
            try:
                leftover.stop()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
                shutil.rmtree(folder, ignore_errors=True)  # no server left to stop
            swept.append(folder)
        return swept

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.serve()
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def serve(self) -> None:
        """Start the cluster's server (again, after ``halt``)."""
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        data, log = str(self.dir / "data"), str(self.dir / "log")
        self._run("pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start")

    def halt(self) -> None:
        """Stop the server at once (as a crash would), keeping the cluster for ``serve``."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        try:
            self.halt()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def new_pg_database(server_url: str) -> str:
    """A fresh, empty database on the test server; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"utter_test_{uuid.uuid4().hex[:12]}"
    url = make_url(server_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------------------- servers
class StudioServer:
    """``create_studio_app`` served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings, provider=None) -> None:  # StudioSettings, TTSProvider
        from utter.studio.app import create_studio_app

        self.settings = settings
        self.app = create_studio_app(settings, provider)
        self.studio = self.app.state.studio
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def start(self, wait_model: bool = True) -> StudioServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the studio did not start"
            time.sleep(0.02)
        if wait_model:
            while self.client.get("/api/health").json()["model"]["state"] != "ready":
                assert time.monotonic() < deadline, "the model did not load"
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self._sock.close()


def studio_settings(data_dir: Path, model: Path, database_url: str | None = None, **overrides):
    from utter.studio.settings import StudioSettings

    values = dict(
        data_dir=data_dir,
        database_url=database_url,
        model=str(model),
        device="cpu",
        dtype="float32",
        max_upload_mb=1.0,
        min_ref_seconds=2.0,
        max_ref_seconds=8.0,
        max_text_chars=2000,
        chunk_chars=40,
        job_lease_seconds=3.0,
        job_poll_seconds=0.2,
    )
    values.update(overrides)
    return StudioSettings(**values)


# ---------------------------------------------------------------------------------------- helpers
def audio_bytes(seconds: float, fmt: str = "wav", sr: int = 24000, seed: int = 0) -> bytes:
    """A speech-like recording encoded as ``fmt`` (wav, flac, ogg via libsndfile; mp3, m4a via PyAV)."""
    signal = speechlike(seconds, sr, seed=seed)
    if fmt == "wav":
        return to_wav_bytes(signal, sr)
    if fmt in ("flac", "ogg"):
        buf = io.BytesIO()
        sf.write(buf, signal, sr, format=fmt.upper(), subtype="VORBIS" if fmt == "ogg" else "PCM_16")
        return buf.getvalue()
    return _encode_av(signal, sr, fmt)


def _encode_av(signal: np.ndarray, sr: int, fmt: str) -> bytes:
    import av

    codec, container = {"mp3": ("mp3", "mp3"), "m4a": ("aac", "ipod")}[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr)
        stream.layout = "mono"
        pcm = (np.clip(signal, -1, 1) * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def clone(client: httpx.Client, name: str = "Voice", seconds: float = 3.0, **fields) -> str:
    data = {"name": name, "transcript": REF_TEXT, "language": "English", **fields}
    r = client.post("/api/clone", data=data, files={"audio": ("ref.wav", audio_bytes(seconds), "audio/wav")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_task(
    client: httpx.Client, task_id: str, until: tuple[str, ...] = FINAL, timeout: float = 120
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = client.get(f"/api/tasks/{task_id}").json()
        if task["status"] in until:
            return task
        assert time.monotonic() < deadline, f"task stuck: {task}"
        time.sleep(0.1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
