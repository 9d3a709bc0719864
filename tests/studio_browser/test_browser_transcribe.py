"""The Clone page's Transcribe button fills the transcript with what the studio's Whisper hears
(a tiny random one, loaded through the real code on first use), and a clone sent without words
is transcribed on the server; with transcription off the button is not offered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Browser, Page, Studio, expect, open_page, start_studio


@pytest.fixture(scope="module")
def asr_studio(tiny_checkpoint: Path, tiny_whisper: Path, tmp_path_factory) -> Iterator[Studio]:
    base = tmp_path_factory.mktemp("asr-browser")
    s = start_studio(
        str(tiny_checkpoint), base / "data", base / "server.log", {"UTTER_ASR_MODEL": str(tiny_whisper)}
    )
    try:
        s.wait_model(("ready",))
        yield s
    finally:
        s.stop()


def test_transcribe_fills_the_transcript(
    browser: Browser, asr_studio: Studio, ref_audio: Path, tiny_whisper, shot
):
    from utter.asr import Transcriber, resolve_asr_model
    from utter.audio import SAMPLE_RATE, load_audio

    wav, _ = load_audio(ref_audio.read_bytes(), target_sr=SAMPLE_RATE)
    heard = Transcriber.load(resolve_asr_model(str(tiny_whisper)), device="cpu").transcribe(wav, SAMPLE_RATE)
    ctx, page, errors = open_page(browser, asr_studio.url)
    try:
        page.goto("/clone")
        button = page.locator("#transcribe-btn")
        expect(button).to_be_visible()
        expect(button).to_be_disabled()  # nothing to transcribe yet
        page.set_input_files("#audio-input", str(ref_audio))
        expect(button).to_be_enabled()
        button.click()
        expect(page.locator("#transcript")).to_have_value(heard.text, timeout=60000)
        expect(page.locator("#transcribe-status")).to_contain_text("Transcribed")
        if heard.language != "Auto":
            expect(page.locator("#language")).to_have_value(heard.language)
        shot(page, "clone-transcribed")

        # Left empty, the transcript is made when the voice is cloned.
        page.fill("#transcript", "")
        page.fill("#voice-name", "Heard in the browser")
        page.click("#clone-btn")
        expect(page.locator("#clone-success")).to_be_visible(timeout=60000)
        found = page.request.get("/api/voices", params={"search": "Heard in the browser"}).json()["voices"]
        assert len(found) == 1 and found[0]["reference_transcript"] == heard.text
    finally:
        ctx.close()
    assert not errors, errors


def test_no_transcribe_button_when_transcription_is_off(page: Page) -> None:
    page.goto("/clone")
    expect(page.locator("#clone-btn")).to_be_visible()
    page.wait_for_load_state("networkidle")
    expect(page.locator("#transcribe-btn")).to_be_hidden()
    page.set_input_files("#audio-input", str(Path(__file__)))  # any file: the button stays hidden
    expect(page.locator("#transcribe-btn")).to_be_hidden()
