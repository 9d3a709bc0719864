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
