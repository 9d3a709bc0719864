"""Bad input gets a clear message in the page (checked before sending) or a 4xx JSON error from the
server (checked again there), and nothing typed is lost."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import REF_TEXT, speechlike

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Page, expect


def test_clone_page_checks_the_upload_and_the_form(page: Page, ref_audio: Path, tmp_path: Path, shot) -> None:
    from utter.audio import write_wav

    notes = tmp_path / "notes.txt"
    notes.write_text("not audio at all")
    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 40)
    short = tmp_path / "short.wav"
    write_wav(short, speechlike(1.0, 24000), 24000)

    page.goto("/clone")
    error = page.locator("#audio-error")
    page.set_input_files("#audio-input", str(notes))
    expect(error).to_contain_text("is not an audio file")
    page.set_input_files("#audio-input", str(fake))
    expect(error).to_contain_text("could not be read as audio")
    page.set_input_files("#audio-input", str(short))
    expect(error).to_contain_text("at least 3 s")
    expect(page.locator("#audio-preview")).to_be_hidden()

    # The form says what is missing, one thing at a time, and keeps what was typed.
    form_error = page.locator("#clone-error")
    page.fill("#voice-name", "Needs audio")
    page.click("#clone-btn")
    expect(form_error).to_have_text("Choose or record a reference audio first.")
    page.set_input_files("#audio-input", str(ref_audio))
    expect(error).to_be_hidden()
    page.click("#clone-btn")
    expect(form_error).to_contain_text("Type the transcript of the audio, or tick transcript-free mode")
    expect(page.locator("#voice-name")).to_have_value("Needs audio")
    shot(page, "clone-errors")

    # The server checks again: 4xx with a JSON sentence, whatever the page did.
    def post(name: str, audio: Path, transcript: str | None = REF_TEXT) -> tuple[int, dict]:
        form: dict = {
            "name": name,
            "audio": {"name": audio.name, "mimeType": "audio/wav", "buffer": audio.read_bytes()},
        }
        if transcript is not None:
            form["transcript"] = transcript
        res = page.request.post("/api/clone", multipart=form)
        return res.status, res.json()

    for name, audio, transcript, words in [
        ("Text file", notes, REF_TEXT, "notes.txt"),
        ("Too short", short, REF_TEXT, "between 3 and 60 seconds"),
        ("No transcript", ref_audio, None, "transcript"),
        ("   ", ref_audio, REF_TEXT, "name"),
    ]:
        status, body = post(name, audio, transcript)
        assert 400 <= status < 500, (name, status, body)
        assert words in body["detail"], (name, body)


def test_generate_page_checks_the_text_and_options(page: Page, make_voice, shot) -> None:
    voice = make_voice(f"Checker {uuid.uuid4().hex[:6]}")
    page.goto(f"/generate?voice={voice['id']}")
    error = page.locator("#generate-error")
    page.click("#generate-btn")
    expect(error).to_have_text("Type some text to speak.")

    too_long = "a" * 20001
    page.fill("#text", too_long)
    counter = page.locator("#char-counter")
    expect(counter).to_have_text("20,001 / 20,000")
    expect(counter).to_have_class("counter mono over")
    page.click("#generate-btn")
    expect(error).to_contain_text("the limit is 20,000")
    shot(page, "generate-errors")
    # Nothing is lost: the draft survives a reload.
    page.reload()
    expect(page.locator("#text")).to_have_value(too_long)

    page.fill("#text", "Fine text.")
    page.locator("#advanced summary").click()
    page.fill("#top-p", "3")
    page.click("#generate-btn")
    expect(error).to_contain_text("Top-p must be a number between 0.01 and 1")
    page.fill("#top-p", "")
    page.fill("#seed", "1.5")
    page.click("#generate-btn")
    expect(error).to_contain_text("Seed must be a whole number")
    page.fill("#seed", "")

    # A voice deleted behind the page's back: the server's 404 sentence shows in the page.
    assert page.request.delete(f"/api/voices/{voice['id']}").status == 204
    page.click("#generate-btn")
    expect(error).to_contain_text("Voice not found")
    expect(page.locator("#text")).to_have_value("Fine text.")

    # And the server refuses bad requests on its own with 4xx JSON.
    other = make_voice(f"Other {uuid.uuid4().hex[:6]}")
    for body, status, words in [
        ({"voice_id": other["id"], "text": "   "}, 422, "empty"),
        ({"voice_id": other["id"], "text": too_long}, 422, "limit is 20000"),
        ({"voice_id": other["id"], "text": "Hi.", "top_p": 3}, 422, "top_p"),
        ({"voice_id": other["id"], "text": "Hi.", "language": "Klingon"}, 422, "Klingon"),
        ({"voice_id": "nope", "text": "Hi."}, 404, "Voice not found"),
    ]:
        res = page.request.post("/api/generate", data=body)
        assert res.status == status, (body, res.status, res.text())
        assert words in res.json()["detail"], (body, res.json())
