"""What the studio browser tests share: starting ``utter serve`` on a free port, and a browser page."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("UTTER_CHROMIUM", "/usr/bin/chromium")
# Importing this module skips the importing test module cleanly when the browser cannot run.
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")

from playwright.sync_api import Browser, BrowserContext, Page, Route, expect  # noqa: E402

__all__ = ["Browser", "Page", "Route", "expect", "Studio", "open_page", "start_studio"]

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake microphone (a beep) for the recording test, allowed without a prompt.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
VIEWPORT = {"width": 1280, "height": 860}
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return json.loads(r.read())


@dataclass
class Studio:
    """A running ``utter serve`` process."""

    url: str
    proc: subprocess.Popen
    log: Path
    data_dir: Path

    def health(self) -> dict:
        return get_json(self.url + "/api/health")

    def wait_model(self, states: tuple[str, ...], timeout: float = 180.0) -> dict:
        """Wait until the model's state is one of ``states``; fail with the server log if not."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the studio exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                last = self.health()
                if last.get("model", {}).get("state") in states:
                    return last
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.25)
        pytest.fail(f"model state never became {states}; last health {last}\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@functools.cache
def serve_command() -> tuple[str, ...]:
    """``utter serve`` (``python -m utter.cli serve``), or the studio's own entry point (the same
    command) while the CLI does not list it yet."""
    probe = subprocess.run(
        [sys.executable, "-m", "utter.cli", "serve", "--help"], capture_output=True, timeout=120
    )
    module = "utter.cli" if probe.returncode == 0 else "utter.studio.commands"
    return (sys.executable, "-m", module, "serve")


def start_studio(model: str, data_dir: Path, log: Path, extra_env: dict[str, str] | None = None) -> Studio:
    """Start ``utter serve`` on a free loopback port; return once it answers HTTP."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    cmd = [
        *serve_command(),
        "--model", model, "--data-dir", str(data_dir),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
    ]  # fmt: skip
    data_dir.mkdir(parents=True, exist_ok=True)
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data_dir)
    studio = Studio(f"http://127.0.0.1:{port}", proc, log, data_dir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`{' '.join(cmd)}` exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            studio.health()
            return studio
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.2)
    studio.stop()
    pytest.fail(f"the studio did not answer within 60 s:\n{log.read_text()[-4000:]}")


def open_page(browser: Browser, base_url: str) -> tuple[BrowserContext, Page, list[str]]:
    """A fresh browser context (its own localStorage) and page; uncaught script errors are collected.

    Console messages about failed requests are not errors here: the bad-input tests cause 4xx on purpose.
    """
    ctx = browser.new_context(base_url=base_url, viewport=VIEWPORT, accept_downloads=True)
    ctx.set_default_timeout(20000)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    pg.on(
        "console",
        lambda m: m.type == "error" and "Failed to load resource" not in m.text and errors.append(m.text),
    )
    return ctx, pg, errors
