"""Tasks: a running job's progress stays visible while you move between pages, and it can be
cancelled from the Tasks page."""

from __future__ import annotations

import re

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Page, expect

# About 4,000 characters: a dozen chunks, long enough to still be running when cancelled.
LONG_TEXT = " ".join(
    f"Sentence number {i} is here to make this job run long enough to cancel." for i in range(56)
)


def test_progress_follows_you_across_pages_and_cancel(page: Page, make_voice, shot) -> None:
    voice = make_voice("Long reader")
    page.goto(f"/generate?voice={voice['id']}")
    page.fill("#text", LONG_TEXT)
    page.click("#generate-btn")
    indicator = page.locator("#task-indicator")
    expect(indicator).to_be_visible()
    task_id = page.evaluate("localStorage.getItem('utter.currentJob')")
    assert task_id

    # Move around: the header keeps showing the job and its progress.
    for nav in ("Voices", "History", "Clone"):
        page.click(f"nav >> text={nav}")
        expect(page.locator("nav a[aria-current=page]")).to_have_text(nav)
        expect(indicator).to_be_visible()
        expect(indicator).to_contain_text(re.compile(r"Queued|Generating \d+%"))
    expect(indicator).to_contain_text(re.compile(r"Generating \d+%"), timeout=60000)
    shot(page, "clone-with-running-job")

    indicator.click()
    expect(page).to_have_url(re.compile(r"/tasks$"))
    row = page.locator(f"#running-list .task-item[data-id='{task_id}']")
    expect(row).to_be_visible()
    expect(row.locator("[data-role=title]")).to_contain_text("Sentence number 0")
    expect(row.locator("[data-role=meta]")).to_contain_text("elapsed")
    expect(page.locator("#running-count")).not_to_have_text("0")
    shot(page, "tasks")

    row.locator("[data-role=cancel]").click()
    done = page.locator(f"#recent-list .task-item[data-id='{task_id}']")
    expect(done).to_have_attribute("data-status", "cancelled", timeout=30000)
    expect(done.locator("[data-role=cancel]")).to_be_hidden()
    expect(indicator).to_be_hidden()
    assert page.request.get(f"/api/tasks/{task_id}").json()["status"] == "cancelled"
    shot(page, "tasks-cancelled")

    # History shows it cancelled too.
    page.goto("/history?status=cancelled")
    expect(page.locator(".history-item[data-status=cancelled]").first).to_be_visible()


def test_job_cards_back_off_while_the_server_is_down(page: Page) -> None:
    """A running job whose server stops answering: the card says so (no growing ETA) and the
    page asks less and less often (0.7, 1.4, 2.8, 5.6 s ...), not every 0.7 s."""
    import json
    import time

    job = {"id": "f" * 32, "status": "running", "progress": 0.4, "title": "A job", "submittedAt": 1}
    # The job is in this browser's store before the page's scripts run (a page already open
    # would write its own list back over it).
    page.add_init_script(f"localStorage.setItem('utter.tasks.v1', {json.dumps(json.dumps([job]))})")
    asked: list[float] = []

    def down(route) -> None:
        asked.append(time.monotonic())
        route.abort()

    page.route("**/api/tasks**", down)
    page.goto("/tasks")
    expect(page.locator("#running-list")).to_contain_text("the server is not answering", timeout=15000)
    page.wait_for_timeout(8000)
    gaps = [b - a for a, b in zip(asked, asked[1:])]
    assert len(asked) <= 8, asked  # 0.7 s polling would have asked about twelve times
    assert gaps and max(gaps) >= 2.5, gaps  # the waits grow


def test_tasks_page_plays_a_running_job_and_a_finished_one(page: Page, make_voice) -> None:
    """Listen to a running job from the Tasks page (its live stream), and play a finished one."""
    voice = make_voice("Tasks player")
    body = {"voice_id": voice["id"], "text": LONG_TEXT, "language": "English", "seed": 1}
    running = page.request.post("/api/generate", data=body).json()
    short = page.request.post("/api/generate", data={**body, "text": "Short one.", "max_frames": 6}).json()
    try:
        page.goto("/tasks")
        row = page.locator(f"article[data-id='{running['task_id']}']")
        listen = row.locator("[data-role=listen]")
        expect(listen).to_have_text(re.compile("Listen while it is made"), timeout=60_000)
        listen.click()
        audio = row.locator("[data-role=audio]")
        expect(audio).to_be_visible()
        assert audio.get_attribute("data-kind") == "live"
        page.wait_for_function(
            f"document.querySelector(\"article[data-id='{running['task_id']}'] audio\").currentTime > 0.2",
            timeout=60_000,
        )
    finally:
        page.request.post(f"/api/tasks/{running['task_id']}/cancel")
    done = page.locator(f"article[data-id='{short['task_id']}']")
    expect(done.locator("[data-role=listen]")).to_have_text("▶ Play", timeout=120_000)
    done.locator("[data-role=listen]").click()
    assert done.locator("[data-role=audio]").get_attribute("data-kind") == "file"
