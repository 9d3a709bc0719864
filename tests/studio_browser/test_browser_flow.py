"""The main path through the studio in a real browser: clone a voice from a file, generate speech,
watch the progress bar move, play and download it, find it in History, regenerate, delete it."""

from __future__ import annotations

import re
import time
import uuid

from tests.conftest import REF_TEXT

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Page, expect

DONE = ("completed", "failed", "cancelled")


def watch_job(page: Page, shot, timeout: float = 120.0) -> tuple[str, list[int]]:
    """Follow the Generate page's job card until it ends; return its status and the bar's values."""
    bar = page.locator("#job [data-role=progress]")
    values: list[int] = []
    status = ""
    shot_taken = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = page.get_attribute("#job [data-role=status]", "data-status") or ""
        values.append(int(bar.get_attribute("aria-valuenow") or 0))
        if not shot_taken and status == "running" and 0 < values[-1] < 100:
            shot(page, "generate-running")
            shot_taken = True
        if status in DONE:
            break
        page.wait_for_timeout(100)
    return status, values


def test_clone_generate_play_download_history_delete(page: Page, ref_audio, shot) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"Narrator {tag}"
    # Several chunks (300 characters each, four spoken at once), so the job outlasts several
    # progress beats on a fast machine with a warm studio, however early the tiny random model
    # ends each chunk: one short sentence once ended within the first beat (the bar went 0 ->
    # 100), and a two-sentence text, whose length hung on where the random model stopped,
    # within the first page poll in a full-suite run.
    sentence = (
        "This sentence is read in a cloned voice, and another one follows it, so that the job "
        "runs long enough to be watched from the page while it is made. "
    )
    text = (f"Hello from the studio, take {tag}. " + sentence * 9).strip()

    # Clone: pick a file, see it checked and previewed, send it with its transcript.
    page.goto("/clone")
    expect(page.locator("#model-chip")).to_have_attribute("data-state", "ready")
    expect(page.locator("#model-banner")).to_be_hidden()
    shot(page, "clone")
    page.set_input_files("#audio-input", str(ref_audio))
    preview = page.locator("#audio-preview")
    expect(preview).to_be_visible()
    expect(preview.locator("[data-role=meta]")).to_contain_text("4.0 s")
    page.wait_for_function("document.querySelector('#audio-preview audio').duration > 3.9")
    page.fill("#voice-name", name)
    page.fill("#transcript", REF_TEXT)
    page.select_option("#language", "English")
    shot(page, "clone-ready")
    page.click("#clone-btn")
    success = page.locator("#clone-success")
    expect(success).to_be_visible()
    expect(success.locator("[data-role=name]")).to_have_text(name)
    expect(page.locator("#clone-error")).to_be_hidden()
    shot(page, "clone-done")

    # Generate with the new voice; the progress bar moves, elapsed time runs, then the result plays.
    success.locator("[data-role=generate]").click()
    expect(page).to_have_url(re.compile(r"/generate\?voice="))
    expect(page.locator("#voice-select option:checked")).to_have_text(name)
    page.fill("#text", text)
    expect(page.locator("#char-counter")).to_have_text(f"{len(text):,} / 20,000")
    page.locator("#advanced summary").click()
    page.fill("#seed", "7")
    page.fill("#temperature", "0.8")
    page.click("#generate-btn")
    expect(page.locator("#job")).to_be_visible()
    expect(page.locator("#task-indicator")).to_be_visible()
    status, values = watch_job(page, shot)
    assert status == "completed", page.inner_text("#generate-error")
    assert any(0 < v < 100 for v in values), f"the bar never showed progress between 0 and 100: {values}"
    assert values[-1] == 100
    assert values == sorted(values), f"the bar went backwards: {values}"
    expect(page.locator("#job [data-role=elapsed]")).not_to_have_text("0:00")
    expect(page.locator("#task-indicator")).to_be_hidden()

    result = page.locator("#result")
    expect(result).to_be_visible()
    page.wait_for_function("document.querySelector('#result audio').duration > 0")
    expect(result.locator("[data-role=meta]")).to_contain_text("of audio")
    expect(result.locator(".wave-status")).to_be_hidden()  # the waveform was drawn from the decoded audio
    result.locator(".wave-play").click()
    page.wait_for_function("document.querySelector('#result audio').currentTime > 0.05")
    shot(page, "generate-done")

    with page.expect_download() as info:
        result.locator("[data-role=download]").click()
    download = info.value
    data = open(download.path(), "rb").read()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
    assert download.suggested_filename.endswith(".wav")

    # History: find it by searching, filter by status, play it there.
    page.click("nav >> text=History")
    expect(page).to_have_url(re.compile(r"/history"))
    page.fill("#search", tag)
    items = page.locator(".history-item")
    expect(items).to_have_count(1)
    item = items.first
    expect(item.locator("[data-role=status]")).to_have_text("Completed")
    expect(item.locator("[data-role=voice]")).to_have_text(name)
    expect(item.locator("[data-role=text]")).to_have_text(text)
    page.select_option("#status-filter", "failed")
    expect(items).to_have_count(0)
    expect(page.locator("#empty")).to_contain_text("Nothing matches")
    page.select_option("#status-filter", "completed")
    expect(items).to_have_count(1)
    item.locator("[data-role=play]").click()
    page.wait_for_function("document.querySelector('.history-item audio')?.duration > 0")
    expect(item.locator("[data-role=meta]")).to_contain_text("seed 7")
    shot(page, "history")
    item.locator("[data-role=format]").select_option("mp3")
    with page.expect_download() as info:
        item.locator("[data-role=download]").click()
    assert info.value.suggested_filename.endswith(".mp3")
    mp3 = open(info.value.path(), "rb").read()
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF, mp3[:8]

    # The Tasks page's Open lands on this very generation.
    page.goto("/tasks")
    opened = page.locator("[data-role=open]:visible").first
    expect(opened).to_have_attribute("href", re.compile(r"/history\?generation="))
    opened.click()
    expect(page.locator(".history-item")).to_have_count(1)
    page.goto(f"/history?search={tag}")
    expect(items).to_have_count(1)

    # Regenerate: back on Generate with the same text and voice, ready to tweak.
    item.locator("[data-role=regenerate]").click()
    expect(page).to_have_url(re.compile(r"/generate"))
    expect(page.locator("#text")).to_have_value(text)
    expect(page.locator("#voice-select option:checked")).to_have_text(name)
    expect(page.locator("#seed")).to_have_value("7")  # the settings it was made with come along
    expect(page.locator("#temperature")).to_have_value("0.8")

    # Delete it from History; it is gone from the list and from the API.
    page.goto(f"/history?search={tag}")
    expect(items).to_have_count(1)
    generation_id = items.first.get_attribute("data-id")
    items.first.locator("[data-role=delete]").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    shot(page, "history-delete-confirm")
    dialog.locator("[data-role=ok]").click()
    expect(items).to_have_count(0)
    assert page.request.get(f"/api/generations/{generation_id}").status == 404
