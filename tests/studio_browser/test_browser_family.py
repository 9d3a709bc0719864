"""The family in the studio, with a CustomVoice and a VoiceDesign model (tiny, random) loaded
beside the Base one: the Design page makes takes of a described voice and keeps one as a voice;
the Generate page offers the preset speakers, with an instruction. Without a VoiceDesign model
the Design page says how to add one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Browser, Page, Studio, expect, open_page, start_studio


@pytest.fixture(scope="module")
def design_studio(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[Studio]:
    from utter.dev.tiny_checkpoint import write_tiny_checkpoint

    base = tmp_path_factory.mktemp("design-browser")
    designer = write_tiny_checkpoint(base / "Tiny-VoiceDesign", seed=4, variant="voice_design")
    presets = write_tiny_checkpoint(base / "Tiny-CustomVoice", seed=3, variant="custom_voice")
    extra = {"UTTER_EXTRA_MODELS": f"{designer},{presets}"}
    s = start_studio(str(tiny_checkpoint), base / "data", base / "server.log", extra)
    try:
        s.wait_model(("ready",))
        yield s
    finally:
        s.stop()


def test_design_takes_and_keep_one(browser: Browser, design_studio: Studio, shot) -> None:
    ctx, page, errors = open_page(browser, design_studio.url)
    try:
        page.goto("/design")
        expect(page.locator("#design-off")).to_be_hidden()
        chip = page.locator("#model-chip")  # the header's model badge names every model
        expect(chip).to_have_attribute("title", re.compile(r"Tiny-VoiceDesign \(voice_design\): ready"))
        expect(chip).to_have_attribute("title", re.compile(r"Tiny-CustomVoice \(custom_voice\): ready"))
        page.fill("#description", "A warm, low voice, calm and friendly.")
        page.select_option("#language", "English")
        for _ in range(2):
            page.click("#take-btn")
            expect(page.locator("#take-btn")).to_be_enabled(timeout=60000)
        takes = page.locator("#takes article")
        expect(takes).to_have_count(2)
        expect(takes.nth(0)).to_contain_text("Take 2")
        expect(takes.nth(0)).to_contain_text("seed")
        shot(page, "design-takes")
        takes.nth(1).locator("[data-role=name]").fill("Designed warm")
        takes.nth(1).locator("[data-role=keep]").click()
        expect(takes.nth(1).locator("[data-role=kept]")).to_contain_text(
            "Kept as “Designed warm”", timeout=60000
        )
        found = page.request.get("/api/voices", params={"search": "Designed warm"}).json()["voices"]
        assert len(found) == 1 and found[0]["reference_transcript"].startswith("Today is a lovely day")
        body = {"voice_id": found[0]["id"], "text": "Now I speak anything.", "max_frames": 6}
        assert page.request.post("/api/generate", data=body).status == 202
    finally:
        ctx.close()
    assert not errors, errors


def test_design_page_without_the_model_says_how(page: Page) -> None:
    page.goto("/design")
    expect(page.locator("#design-off")).to_contain_text(
        "UTTER_EXTRA_MODELS=Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"
    )
    expect(page.locator("#take-btn")).to_be_disabled()


def test_generate_as_a_preset_speaker_with_an_instruction(
    browser: Browser, design_studio: Studio, shot
) -> None:
    ctx, page, errors = open_page(browser, design_studio.url)
    try:
        page.goto("/generate")
        voice = page.locator("#voice-select")
        expect(voice.locator("optgroup[label='Preset speakers'] option")).to_have_count(9, timeout=30000)
        expect(page.locator("#instruct-field")).to_be_hidden()
        voice.select_option("preset:Uncle_Fu")
        expect(page.locator("#instruct-field")).to_be_visible()
        page.fill("#instruct", "Speak slowly, like a storyteller.")
        page.fill("#text", "Once upon a time there was a tiny random model.")
        page.locator("#advanced summary").click()
        page.fill("#seed", "7")
        page.click("#generate-btn")
        expect(page.locator("#result")).to_be_visible(timeout=120000)
        shot(page, "generate-preset")
        gens = page.request.get("/api/generations", params={"search": "tiny random model"}).json()[
            "generations"
        ]
        assert gens[0]["voice_name"] == "Uncle_Fu" and gens[0]["status"] == "completed"
        assert gens[0]["options"]["instruct"] == "Speak slowly, like a storyteller."
    finally:
        ctx.close()
    assert not errors, errors
