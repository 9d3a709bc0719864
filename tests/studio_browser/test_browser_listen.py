"""Hear it while it is made: on the Generate page, a running job's audio plays before the job
ends, from one stream that follows it."""

from __future__ import annotations

import uuid

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Page, expect

LONG = " ".join(f"Sentence number {i} keeps the job busy for a while." for i in range(12))


def test_listen_while_the_job_runs(page: Page, make_voice, shot) -> None:
    voice = make_voice(f"Listener {uuid.uuid4().hex[:6]}")
    page.goto(f"/generate?voice={voice['id']}")
    page.fill("#text", LONG)
    page.locator("#advanced summary").click()
    page.fill("#seed", "3")
    page.click("#generate-btn")
    try:
        listen = page.locator("#job [data-role=listen]")
        expect(listen).to_be_visible(timeout=60_000)  # shown once the job runs
        listen.click()
        live = page.locator("#job [data-role=live]")
        expect(live).to_be_visible()
        page.wait_for_function(
            "document.querySelector('#job [data-role=live]').currentTime > 0.2", timeout=60_000
        )
        # The waveform grows as the audio arrives.
        wave = page.locator("#job [data-role=live-wave]")
        expect(wave.locator("canvas")).to_be_visible()
        page.wait_for_function(
            "Number(document.querySelector('#job [data-role=live-wave]').dataset.seconds) > 0", timeout=60_000
        )
        first = float(wave.get_attribute("data-seconds"))
        page.wait_for_function(
            f"Number(document.querySelector('#job [data-role=live-wave]').dataset.seconds) > {first}",
            timeout=60_000,
        )
        status = page.get_attribute("#job [data-role=status]", "data-status")
        shot(page, "generate-listening")
        assert status == "running", f"audio only played after the job ended ({status})"
        expect(listen).to_be_hidden()
    finally:  # a long job: stop it, so it takes no compute from the tests after this one
        for task in page.request.get("/api/tasks").json()["tasks"]:
            if task["status"] in ("queued", "processing"):
                page.request.post(f"/api/tasks/{task['id']}/cancel")
