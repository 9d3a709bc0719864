"""The optional login: with a password, every route of the studio (pages, /api, /tts, scripts)
refuses without a session or the key, the sign-in works and cannot be brute-forced or turned
into an open redirect, and ``utter serve`` will not listen beyond loopback without a password."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.studio.support import StudioServer, studio_settings

PASSWORD = "correct horse battery"
ANY_ID = "0" * 32


@pytest.fixture(scope="module")
def gated(tmp_path_factory, tiny_checkpoint):
    server = StudioServer(
        studio_settings(tmp_path_factory.mktemp("gated"), tiny_checkpoint, password=PASSWORD)
    )
    server.start(wait_model=False)
    yield server
    server.stop()


def _api_routes(routes) -> list[APIRoute]:
    """Every API route of an app, through included routers (wrapped in newer FastAPI)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += _api_routes(inner.routes)
    return found


def _fresh(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)


def test_every_route_refuses_without_the_password(gated) -> None:
    checked = 0
    with _fresh(gated) as c:
        for route in _api_routes(gated.app.routes):
            if route.path in ("/login", "/logout", "/api/health"):  # open on purpose (health checks)
                continue
            path = re.sub(r"\{[^}]+\}", ANY_ID, route.path)
            for method in route.methods - {"HEAD"}:
                for accept in ("application/json", "text/html"):
                    r = c.request(method, path, headers={"Accept": accept})
                    if r.status_code == 303:
                        assert r.headers["location"].startswith("/login?next="), (method, path)
                    else:
                        assert r.status_code == 401, (method, path, r.status_code)
                    checked += 1
        for method, path in [
            ("POST", "/tts/clone"),
            ("GET", "/tts/v1/audio/voices"),
            ("POST", "/tts/v1/audio/speech"),
            ("GET", "/static/js/app.js"),
            ("GET", "/no/such/page"),
        ]:
            assert c.request(method, path).status_code == 401, path
    # An unauthenticated upload is refused from its headers, before the body is read.
    host, port = gated.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /api/clone HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 401")
    assert checked > 20


def test_open_paths_keys_and_sessions(gated) -> None:
    with _fresh(gated) as c:
        assert c.get("/login").status_code == 200 and "password" in c.get("/login").text
        assert c.get("/api/health").status_code == 200
        assert c.get("/tts/health").status_code in (200, 503)  # open; says how the model is
        assert c.get("/static/css/studio.css").status_code == 200  # the sign-in page's style
        bearer = {"Authorization": f"Bearer {PASSWORD}"}
        assert c.get("/api/voices", headers=bearer).status_code == 200
        assert c.get("/tts/v1/audio/voices", headers={"X-API-Key": PASSWORD}).status_code == 200  # one secret
        assert c.get("/api/voices", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/login", data={"password": PASSWORD, "next": "/history?page=2"})
        assert r.status_code == 303 and r.headers["location"] == "/history?page=2"
        cookie = r.cookies.get("utter_session")
        assert cookie and "httponly" in r.headers["set-cookie"].lower()
    with _fresh(gated) as c:
        c.cookies.set("utter_session", cookie)
        page = c.get("/generate", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "Generate" in page.text
        assert c.get("/api/voices").status_code == 200
        assert c.get("/tts/v1/audio/voices").status_code == 200  # the studio's pages call /tts too
        assert c.get("/tts/v1/audio/voices", headers={"X-API-Key": "wrong"}).status_code == 401
        c.cookies.set("utter_session", cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))  # forged
        assert c.get("/api/voices").status_code == 401
        out = c.get("/logout")
        assert out.status_code == 303 and "utter_session" in out.headers["set-cookie"]


def test_sign_in_is_no_open_redirect_and_no_brute_force(gated) -> None:
    with _fresh(gated) as c:
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            r = c.post("/login", data={"password": PASSWORD, "next": target})
            assert r.status_code == 303 and r.headers["location"] == "/"
        statuses = [c.post("/login", data={"password": f"guess {i}"}).status_code for i in range(11)]
        assert statuses[:10] == [401] * 10 and statuses[10] == 429
        assert c.post("/login", data={"password": PASSWORD}).status_code == 429  # locked for a while


def test_serve_refuses_a_network_address_without_a_password(tmp_path, tiny_checkpoint) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UTTER_")}
    command = [sys.executable, "-m", "utter.cli", "serve", "--host", "0.0.0.0", "--port", "0"]
    command += ["--model", str(tiny_checkpoint), "--data-dir", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "UTTER_PASSWORD" in done.stderr
