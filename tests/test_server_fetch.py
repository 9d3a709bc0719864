"""The SSRF-safe reference fetch: address checks, and (with private targets allowed, as a trusted
internal network would) a real fetch from a loopback file server with size and redirect limits."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import threading

import pytest

from tests.conftest import REF_TEXT
from tests.server_support import start_server
from utter.server.voices.fetch import FetchError, check_url, fetch_audio, is_public


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("224.0.0.1", False),
        # IPv6 addresses that embed an IPv4 one are judged by the IPv4 inside.
        ("::ffff:7f00:1", False),  # mapped, hex spelling
        ("0:0:0:0:0:ffff:7f00:0001", False),  # mapped, long spelling
        ("::ffff:a9fe:a9fe", False),  # mapped cloud metadata
        ("::ffff:8.8.8.8", True),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::a00:1", False),  # IPv4-compatible 10.0.0.1
        ("::ffff:0:127.0.0.1", False),  # IPv4-translated
        ("64:ff9b::127.0.0.1", False),  # NAT64
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to cloud metadata
        ("64:ff9b::c0a8:101", False),  # NAT64 to 192.168.1.1
        ("64:ff9b::8.8.8.8", True),
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo (client 127.0.0.1)
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://localhost/a.wav", "non-public"),
        ("http://127.1/a.wav", "non-public"),
        ("https://[fe80::1]/a.wav", "non-public"),
        ("file:///etc/passwd", "http(s)"),
        ("javascript:alert(1)", "http(s)"),
        ("http://user:pw@example.com/a.wav", "credentials"),
        ("http:///a.wav", "no host"),
    ],
)
def test_check_url_refuses(url: str, words: str) -> None:
    with pytest.raises(FetchError, match=words.replace("(", r"\(").replace(")", r"\)")):
        asyncio.run(check_url(url))


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ref.wav")
            self.end_headers()
            return
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def file_server(ref_wav):
    _Files.files = {"/ref.wav": ref_wav.read_bytes(), "/big.bin": b"\0" * 300_000}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_limits(file_server, ref_wav) -> None:
    def fetch(path: str, max_bytes: int = 1_000_000) -> bytes:
        return asyncio.run(fetch_audio(file_server + path, max_bytes, 10, allow_private=True))

    assert fetch("/ref.wav") == ref_wav.read_bytes()
    assert fetch("/redirect") == ref_wav.read_bytes()
    with pytest.raises(FetchError, match="larger than"):
        fetch("/big.bin", max_bytes=100_000)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch("/missing.wav")
    with pytest.raises(FetchError, match="redirected more than"):
        fetch("/loop")
    with pytest.raises(FetchError, match="non-public"):  # the default refuses the same server
        asyncio.run(fetch_audio(file_server + "/ref.wav", 1_000_000, 10))


def test_clone_from_url(engine, file_server, tmp_path) -> None:
    body = {"text": "From a URL.", "ref_text": REF_TEXT, "max_new_tokens": 3, "seed": 1}
    off = start_server(engine, tmp_path / "off")
    try:
        r = off.client().post("/clone", json=body | {"ref_audio_url": file_server + "/ref.wav"})
        assert r.status_code == 400 and "disabled" in r.json()["detail"]
    finally:
        off.stop()
    on = start_server(engine, tmp_path / "on", allow_ref_audio_url=True, ref_audio_url_allow_private=True)
    try:
        r = on.client().post("/clone", json=body | {"ref_audio_url": file_server + "/ref.wav"})
        assert r.status_code == 200 and r.content[:4] == b"RIFF"
    finally:
        on.stop()
