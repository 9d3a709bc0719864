"""Behaviour under load and while the model is not ready: 429/503 with Retry-After, concurrent
answers that never mix, and the EngineHolder's background loading."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.conftest import REF_TEXT
from tests.server_support import b64, start_server
from utter.server.runtime import EngineHolder, ModelNotReady, ModelState
from utter.server.settings import ServerSettings


def body(ref: str, text: str, frames: int, **extra) -> dict:
    return {
        "text": text,
        "language": "English",
        "ref_audio_base64": ref,
        "ref_text": REF_TEXT,
        "max_new_tokens": frames + 1,
        **extra,
    }


def post_all(http, bodies: list[dict]) -> list:
    """POST every body to /clone at the same time; responses in order."""
    results: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = http.post("/clone", json=bodies[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_answers_equal_answers_alone(engine, ref_wav, tmp_path) -> None:
    ref = b64(ref_wav.read_bytes())
    greedy = {"do_sample": False, "subtalker_do_sample": False}
    bodies = [
        body(ref, "The first request.", 3, **greedy),
        body(ref, "A second, different one.", 5, **greedy),
        body(ref, "Third.", 4, seed=11),
        body(ref, "The fourth speaks German.", 4, seed=12, language="German"),
    ]
    srv = start_server(engine, tmp_path, max_batch=4)
    try:
        with srv.client() as http:
            alone = [http.post("/clone", json=b) for b in bodies]
            together = post_all(http, bodies)
    finally:
        srv.stop()
    for a, t in zip(alone, together):
        assert a.status_code == t.status_code == 200
        assert a.content == t.content
    assert len({a.content for a in alone}) == len(bodies)


def test_full_queue_answers_429_with_retry_after(engine, ref_wav, tmp_path) -> None:
    ref = b64(ref_wav.read_bytes())
    srv = start_server(engine, tmp_path, max_batch=1, max_queue=1, retry_after_s=3)
    try:
        with srv.client() as http:
            assert http.post("/clone", json=body(ref, "Warm the prompt cache.", 1)).status_code == 200
            responses = post_all(http, [body(ref, f"Request {i}.", 12) for i in range(4)])
            busy = [r for r in responses if r.status_code == 429]
            assert busy and all(r.headers["retry-after"] == "3" for r in busy)
            assert "busy" in busy[0].json()["detail"]
            assert all(r.status_code == 200 for r in responses if r not in busy)
            assert http.get("/health").json()["queue"] == {
                "active": 0,
                "waiting": 0,
                "max_batch": 1,
                "max_queue": 1,
            }
    finally:
        srv.stop()


def test_model_not_ready_answers_503(engine, ref_wav, tmp_path) -> None:
    ref = b64(ref_wav.read_bytes())
    loading = EngineHolder("tiny")  # never started: stays "loading"
    srv = start_server(engine, tmp_path, holder=loading, ready_timeout_s=0.2, manage_holder=False)
    try:
        with srv.client() as http:
            r = http.post("/clone", json=body(ref, "Hello.", 2))
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert "loading" in r.json()["detail"]
            health = http.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "loading"
    finally:
        srv.stop()


def test_holder_loads_in_background_and_reports_failure(tiny_checkpoint, tmp_path) -> None:
    holder = EngineHolder(str(tiny_checkpoint), device="cpu", dtype="float32", max_batch=2)
    holder.start()
    assert holder.state in (ModelState.LOADING, ModelState.READY)
    batcher = asyncio.run(holder.wait_ready(120))
    assert holder.state is ModelState.READY and batcher.max_batch == 2
    status = holder.status()
    assert status["state"] == "ready" and "English" in status["languages"] and status["dtype"] == "float32"
    holder.stop()

    broken = EngineHolder(str(tmp_path / "no-such-model"))
    broken.start()
    assert broken.join(30) is ModelState.FAILED
    assert "no checkpoint folder" in broken.error.lower() and broken.hint
    with pytest.raises(ModelNotReady) as info:
        asyncio.run(broken.wait_ready(5))
    assert info.value.state is ModelState.FAILED
    assert broken.status()["state"] == "failed"


def test_a_cpu_server_defaults_to_the_native_kernels_batch(tiny_checkpoint) -> None:
    """With no max_batch set, a CPU server decodes up to CPU_MAX_BATCH (8) requests together, in
    its native kernels on every CPU where they build; set, it is kept."""
    from utter.engine.cpu import native
    from utter.engine.engine import CPU_MAX_BATCH

    holder = EngineHolder(str(tiny_checkpoint), device="cpu", dtype="int8")
    holder.start()
    try:
        batcher = asyncio.run(holder.wait_ready(120))
        assert batcher.max_batch == holder.max_batch == CPU_MAX_BATCH == 8
        if native.library() is not None:
            assert holder.engine.talker.model.native is not None
    finally:
        holder.stop()
    assert ServerSettings().max_batch is None and ServerSettings(max_batch=3).max_batch == 3


def wait_idle(batcher, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if batcher.active == 0 and batcher.queued == 0:
            return True
        time.sleep(0.05)
    return False


def test_clients_that_go_away_stop_their_generation(engine, ref_wav, tmp_path) -> None:
    ref = b64(ref_wav.read_bytes())
    srv = start_server(engine, tmp_path)
    try:
        batcher = srv.holder.batcher
        with srv.client() as http:
            assert http.post("/clone", json=body(ref, "Warm up.", 1)).status_code == 200
            with http.stream("POST", "/clone", json=body(ref, "Streamed.", 3000, stream=True)) as r:
                next(r.iter_raw())  # first audio, then hang up
            assert wait_idle(batcher)
        with srv.client(timeout=1.0) as impatient:
            with pytest.raises(httpx.TimeoutException):
                impatient.post("/clone", json=body(ref, "Not streamed.", 3000))
        assert wait_idle(batcher)
    finally:
        srv.stop()


def test_download_progress_is_reported(tmp_path) -> None:
    from utter.engine.checkpoint import _watch_progress

    seen: list[float] = []
    done = threading.Event()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "weights.incomplete").write_bytes(b"\0" * 500)
    thread = _watch_progress(tmp_path, 1000, seen.append, done)
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    thread.join(5)
    assert seen and seen[0] == 0.5

    holder = EngineHolder("Qwen/Qwen3-TTS-12Hz-0.6B-Base")
    holder._on_progress(0.42)  # what resolve_checkpoint calls while downloading
    assert holder.state is ModelState.DOWNLOADING and holder.status()["progress"] == 0.42
    with pytest.raises(ModelNotReady, match="downloading \\(42%\\)"):
        asyncio.run(holder.wait_ready(0))
