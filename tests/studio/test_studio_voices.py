"""``/api/clone`` and ``/api/voices``: real uploads in every format, every bad input, and files
that go away with their voice. Runs against a live server on SQLite and on PostgreSQL."""

from __future__ import annotations

import io

import pytest
import soundfile as sf

from tests.conftest import REF_TEXT
from tests.studio.support import audio_bytes, clone, unique
from utter.studio.views import MAX_PAGE


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3", "m4a"])
def test_clone_decodes_every_common_format(client, studio, fmt: str) -> None:
    name = unique(f"fmt-{fmt}")
    r = client.post(
        "/api/clone",
        data={"name": name, "transcript": REF_TEXT, "language": "english"},
        files={
            "audio": (f"ref.{fmt}", audio_bytes(3.0, fmt, sr=44100 if fmt != "m4a" else 48000), "audio/x")
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name and len(body["id"]) == 32
    voice = client.get(f"/api/voices/{body['id']}").json()
    assert voice["language"] == "English"  # canonical spelling
    assert 2.8 < voice["reference_seconds"] < 3.3
    preview = client.get(voice["preview_url"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "audio/wav"
    audio, sr = sf.read(io.BytesIO(preview.content))
    assert sr == 24000 and audio.ndim == 1  # stored decoded: 24 kHz mono
    assert (studio.settings.data_dir / "voices" / body["id"] / "reference.wav").is_file()


@pytest.mark.parametrize(
    ("data", "audio", "status", "words"),
    [
        ({"transcript": REF_TEXT}, ("a.wav", audio_bytes(3)), 422, "name"),
        ({"name": "   ", "transcript": REF_TEXT}, ("a.wav", audio_bytes(3)), 422, "name"),
        ({"name": "x" * 101, "transcript": REF_TEXT}, ("a.wav", audio_bytes(3)), 422, "too long"),
        ({"name": "n", "transcript": " "}, ("a.wav", audio_bytes(3)), 422, "transcript"),
        ({"name": "n"}, ("a.wav", audio_bytes(3)), 422, "transcript"),
        ({"name": "n", "transcript": "t" * 2001}, ("a.wav", audio_bytes(3)), 422, "transcript is too long"),
        (
            {"name": "n", "transcript": "t", "language": "Klingon"},
            ("a.wav", audio_bytes(3)),
            422,
            "Unknown language",
        ),
        ({"name": "n", "transcript": "t"}, None, 422, "audio"),
        ({"name": "n", "transcript": "t"}, ("a.wav", b"not audio at all" * 50), 422, "not a supported audio"),
        ({"name": "n", "transcript": "t"}, ("a.wav", b""), 422, "empty"),
        ({"name": "n", "transcript": "t"}, ("a.wav", audio_bytes(3)[:60]), 422, "a.wav"),
        ({"name": "n", "transcript": "t"}, ("a.wav", audio_bytes(1.0)), 422, "between 2 and 8 seconds"),
        ({"name": "n", "transcript": "t"}, ("a.wav", audio_bytes(9.0)), 422, "9.0 s long"),
    ],
)
def test_clone_rejects_bad_input_with_a_clear_message(client, studio, data, audio, status, words) -> None:
    before = client.get("/api/voices", params={"per_page": 100}).json()["total"]
    files = {"audio": (*audio, "audio/wav")} if audio else None
    r = client.post("/api/clone", data=data, files=files)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words.lower() in detail.lower(), detail
    assert client.get("/api/voices", params={"per_page": 100}).json()["total"] == before  # nothing stored


def test_x_vector_only_voices_need_no_transcript(client) -> None:
    voice_id = clone(client, unique("xvec"), transcript="", x_vector_only="true")
    assert client.get(f"/api/voices/{voice_id}").json()["reference_transcript"] is None


def test_list_search_and_paginate(client) -> None:
    tag = unique("page")
    ids = [clone(client, f"{tag} {i}") for i in range(3)]
    page1 = client.get("/api/voices", params={"search": tag, "per_page": 2}).json()
    page2 = client.get("/api/voices", params={"search": tag, "per_page": 2, "page": 2}).json()
    assert (
        page1["total"] == 3
        and page1["pages"] == 2
        and len(page1["voices"]) == 2
        and len(page2["voices"]) == 1
    )
    assert [v["id"] for v in page1["voices"] + page2["voices"]] == ids[::-1]  # newest first
    assert (
        client.get("/api/voices", params={"search": "%"}).json()["total"] == 0
    )  # LIKE wildcards are literal
    assert client.get("/api/voices", params={"search": tag.upper()}).json()["total"] == 3  # case-insensitive
    for bad in ({"page": 0}, {"per_page": 0}, {"per_page": 101}, {"page": "x"}, {"page": 10**20}):
        for path in ("/api/voices", "/api/generations"):  # 10**20 was a 500 (SQLite's integers)
            r = client.get(path, params=bad)
            assert r.status_code == 422 and isinstance(r.json()["detail"], str), (path, bad, r.text)
    for path, key in (("/api/voices", "voices"), ("/api/generations", "generations")):
        last = client.get(path, params={"page": MAX_PAGE, "per_page": 100})  # far past the end: empty
        assert last.status_code == 200 and last.json()[key] == [], (path, last.text)


def test_patch_renames_and_retranscribes(client, studio) -> None:
    voice_id = clone(client, unique("patch"))
    prompt = studio.settings.data_dir / "voices" / voice_id / "prompt-0123.safetensors"
    prompt.write_bytes(b"stale")  # a cached voice that a new transcript must invalidate
    r = client.patch(f"/api/voices/{voice_id}", json={"name": "  Renamed  "})
    assert r.status_code == 200 and r.json()["name"] == "Renamed" and prompt.exists()
    r = client.patch(f"/api/voices/{voice_id}", json={"reference_transcript": "New   words."})
    assert r.json()["reference_transcript"] == "New words." and not prompt.exists()
    assert (
        client.patch(f"/api/voices/{voice_id}", json={"language": "chinese"}).json()["language"] == "Chinese"
    )
    for bad, status in (({"name": ""}, 422), ({"name": " "}, 422), ({}, 422), ({"bogus": 1}, 422)):
        r = client.patch(f"/api/voices/{voice_id}", json=bad)
        assert r.status_code == status and isinstance(r.json()["detail"], str), r.text
    r = client.patch(
        f"/api/voices/{voice_id}", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422)
    assert client.patch(f"/api/voices/{'f' * 32}", json={"name": "x"}).status_code == 404


def test_delete_removes_the_voice_and_its_files(client, studio) -> None:
    voice_id = clone(client, unique("delete"))
    folder = studio.settings.data_dir / "voices" / voice_id
    assert folder.is_dir()
    assert client.delete(f"/api/voices/{voice_id}").status_code == 204
    assert not folder.exists()
    assert client.get(f"/api/voices/{voice_id}").status_code == 404
    assert client.get(f"/api/voices/{voice_id}/preview").status_code == 404
    assert client.delete(f"/api/voices/{voice_id}").status_code == 404


def test_search_folds_case_in_any_script_and_says_why(client) -> None:
    tag = unique("fold")
    élodie = clone(client, f"ÉLODIE {tag}")
    straße = clone(client, f"Straße {tag}", transcript=f"Die GROSSE Straße am Ufer, {tag}.")
    wide = clone(client, f"ＡＢＣ {tag}")  # full-width letters

    def found(search: str) -> dict[str, dict]:
        voices = client.get("/api/voices", params={"search": search}).json()["voices"]
        return {v["id"]: v["match"] for v in voices}

    assert set(found(f"élodie {tag}")) == {élodie}  # SQLite's LIKE folds only ASCII
    assert set(found(f"strasse {tag}")) == {straße}  # ß folds to ss
    assert set(found(f"abc {tag}")) == {wide}
    why = found("große straße")[straße]
    snippet = f"Die GROSSE Straße am Ufer, {tag}."
    assert why == {"field": "transcript", "snippet": snippet, "matched": "GROSSE Straße"}
    assert found(f"élodie {tag}")[élodie]["field"] == "name"
    assert client.get(f"/api/voices/{élodie}").json()["match"] is None  # no search, no match


def test_duplicate_names_are_refused(client, studio) -> None:
    name = unique("Twin")
    first = clone(client, name)
    r = client.post(
        "/api/clone",
        data={"name": name.upper(), "transcript": "words"},
        files={"audio": ("a.wav", audio_bytes(3))},
    )
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    other = clone(client, unique("Other"))
    r = client.patch(f"/api/voices/{other}", json={"name": f" {name.lower()} "})
    assert r.status_code == 409
    assert client.patch(f"/api/voices/{first}", json={"name": name}).status_code == 200  # itself: fine
    # The same library through the TTS API under /tts.
    files = {"audio": ("a.wav", audio_bytes(3), "audio/wav")}
    r = client.post("/tts/v1/voices", files=files, data={"name": name, "ref_text": "words"})
    assert r.status_code == 409, r.text
