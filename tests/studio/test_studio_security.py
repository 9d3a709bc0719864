"""Nothing from a request reaches outside the data directory, and uploads are capped on the server."""

from __future__ import annotations

import httpx
import pytest

from tests.studio.support import audio_bytes, clone, unique
from utter.studio.storage import Storage, UnsafePathError, check_id


@pytest.mark.parametrize(
    "path",
    [
        "/api/voices/..%2F..%2F..%2Fetc%2Fpasswd/preview",
        "/api/voices/%2e%2e/preview",
        "/api/voices/..%5C..%5Cutter.db/preview",
        "/api/generations/..%2Futter.db/audio",
        "/api/generations/%2e%2e%2f%2e%2e%2fetc%2fpasswd/audio",
        "/api/generations/....//....//etc/passwd/audio",
        "/api/voices/%00/preview",
        "/static/..%2F..%2Fstudio%2Fsettings.py",
        "/static/../settings.py",
    ],
)
def test_traversal_attempts_find_nothing(studio, path: str) -> None:
    # Raw paths: the client must not normalise the dots away before they reach the server.
    with httpx.Client(base_url=studio.url) as raw:
        r = raw.send(raw.build_request("GET", studio.url + path))
    assert r.status_code in (400, 404, 422), (path, r.status_code)
    assert b"root:" not in r.content and b"SQLite" not in r.content and b"BaseSettings" not in r.content


def test_stored_paths_are_checked_too(tmp_path) -> None:
    storage = Storage(tmp_path / "data")
    for bad in ("../x", "voices/../../x", "/etc/passwd", ""):
        with pytest.raises(UnsafePathError):
            storage.resolve(bad)
    for bad in ("../x", "ABCDEF" * 6, "a" * 31, "g" * 32, "a/b"):
        with pytest.raises(UnsafePathError):
            check_id(bad)
    with pytest.raises(UnsafePathError):
        storage.voice_prompt("a" * 32, "../x")
    assert storage.resolve("voices/" + "a" * 32).parent == storage.root / "voices"


def test_upload_over_the_limit_is_refused_before_it_is_read(client) -> None:
    big = b"\0" * (3 * 1024 * 1024)  # the test server's limit is 1 MB (+1 MB for the form)
    r = client.post("/api/clone", data={"name": "big", "transcript": "t"}, files={"audio": ("a.wav", big)})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_upload_between_the_limits_is_refused_by_the_route(client) -> None:
    big = audio_bytes(2.0)[:44] + b"\0" * (1024 * 1024 + 10)  # just over 1 MB of file in a small form
    r = client.post("/api/clone", data={"name": "big", "transcript": "t"}, files={"audio": ("a.wav", big)})
    assert r.status_code == 413 and "1 MB" in r.json()["detail"]


def test_chunked_upload_without_length_is_counted(studio) -> None:
    def body():  # a well-formed form whose file part never ends within the limit
        yield b'--x\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * (128 * 1024)
        yield b"\r\n--x--\r\n"

    with httpx.Client(base_url=studio.url) as raw:
        r = raw.post(
            "/api/clone", content=body(), headers={"content-type": "multipart/form-data; boundary=x"}
        )
    assert r.status_code == 413


def test_voice_ids_are_opaque(client) -> None:
    voice_id = clone(client, unique("opaque"))
    assert len(voice_id) == 32 and all(c in "0123456789abcdef" for c in voice_id)


def test_nul_and_control_characters_are_harmless(client) -> None:
    for path in ("/api/voices", "/api/generations"):
        r = client.get(path, params={"search": "\x00x\x1b"})
        assert r.status_code == 200, r.text
    for path in ("/api/voices/\x00", "/api/tasks/\x00", "/api/generations/\x00"):
        assert client.get(path.replace("\x00", "%00")).status_code == 404
    voice_id = clone(client, "nul\x00name\x1b[31m")
    assert client.get(f"/api/voices/{voice_id}").json()["name"] == "nulname[31m"
    r = client.post("/api/generate", json={"voice_id": voice_id, "text": "\x00\x01"})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.post("/api/generate", json={"voice_id": "\x00", "text": "Hi"})
    assert r.status_code == 404
