"""`run_api_server` (what `utter serve --api-only` runs) in its own process: it answers /health at
once, loads the model in the background, then serves; it stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx

LAUNCH = (
    "import argparse, sys\n"
    "from utter.server.commands import add_server_args, run_api_server\n"
    "p = argparse.ArgumentParser(); add_server_args(p)\n"
    "run_api_server(p.parse_args(sys.argv[1:]))\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_server_process(tiny_checkpoint, tmp_path) -> None:
    port = free_port()
    args = [
        "--model",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, states = time.monotonic() + 180, set()
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the server exited"
            try:
                health = httpx.get(url + "/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            states.add(health.json()["status"])
            if health.status_code == 200:
                break
            assert health.status_code == 503 and health.headers["x-request-id"]
            time.sleep(0.1)
        assert "healthy" in states
        assert httpx.get(url + "/languages").json()["default"] == "Auto"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.seek(0)
        output = log.read()
        log.close()
    assert code in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal after a clean shutdown
    assert "Application shutdown complete" in output
    assert "request_id=" in output and "path=/languages status=200" in output


def test_clients_that_hold_answers_open_cannot_keep_a_stopping_server_up(
    tiny_checkpoint, ref_wav, tmp_path
) -> None:
    """SIGTERM while one client holds a long streamed answer and reads none of it and another
    sends a body that never ends: uvicorn alone would wait for both (for ever, or a body
    timeout); the server gives answers in flight UTTER_SHUTDOWN_GRACE_S, then cuts them and
    stops cleanly."""
    import json
    import os

    port = free_port()
    args = ["--model", str(tiny_checkpoint), "--device", "cpu", "--port", str(port)]
    env = {**os.environ, "UTTER_SHUTDOWN_GRACE_S": "2"}
    log = open(tmp_path / "server.log", "w+")
    launch = [sys.executable, "-c", LAUNCH, *args, "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(launch, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    head = "POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        files = {"audio": ("ref.wav", ref_wav.read_bytes(), "audio/wav")}
        data = {"name": "v", "x_vector_only": "true"}
        voice = httpx.post(url + "/v1/voices", files=files, data=data).json()["id"]
        body = json.dumps({"input": "Hello there. " * 20, "voice": voice, "response_format": "pcm"}).encode()
        reader = socket.create_connection(("127.0.0.1", port))  # asks, then reads nothing
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        writer = socket.create_connection(("127.0.0.1", port))  # a body that stops half-way
        writer.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(2)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=45)
        took = time.monotonic() - stopped
        reader.close()
        writer.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        output = log.read()
        log.close()
    assert code in (0, -signal.SIGTERM), output
    assert took < 15, took  # the grace and a little; the body timeout alone is 60 s
    assert "timeout graceful shutdown exceeded" in output and "Application shutdown complete" in output
