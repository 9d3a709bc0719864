"""The Design page: describe a voice, make takes with the VoiceDesign model (a tiny random one
loaded beside the Base model), keep one; it joins the voices and speaks like any clone. Without
a VoiceDesign model the page says how to add one."""

from __future__ import annotations

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
    s = start_studio(
        str(tiny_checkpoint), base / "data", base / "server.log", {"UTTER_EXTRA_MODELS": str(designer)}
    )
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
