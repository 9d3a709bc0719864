"""Several takes of one text (different seeds), heard side by side from the History page."""

from __future__ import annotations

import time
import uuid

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Page, expect


def test_takes_side_by_side(page: Page, make_voice, shot) -> None:
    voice = make_voice(f"Takes {uuid.uuid4().hex[:6]}")
    text = f"One sentence, three takes {uuid.uuid4().hex[:6]}."
    ids = []
    for seed in (1, 2, 3):
        body = {"voice_id": voice["id"], "text": text, "language": "English", "seed": seed, "max_frames": 8}
        ids.append(page.request.post("/api/generate", data=body).json()["generation_id"])
    deadline = time.monotonic() + 120
    while any(page.request.get(f"/api/generations/{g}").json()["status"] != "completed" for g in ids):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    page.goto(f"/history?search={text}")
    rows = page.locator("#history-list article")
    expect(rows).to_have_count(3)
    bar = page.locator("#compare-bar")
    expect(bar).to_be_hidden()
    for i in range(3):
        rows.nth(i).locator("[data-role=pick]").check()
    expect(bar).to_contain_text("3 takes chosen")
    bar.locator("[data-role=open]").click()
    panel = page.locator("#compare")
    expect(panel).to_be_visible()
    cells = panel.locator(".compare-cell")
    expect(cells).to_have_count(3)
    for seed in (1, 2, 3):
        expect(panel).to_contain_text(f"seed {seed}")
    expect(cells.nth(0).locator("button").first).to_be_enabled(timeout=20000)  # its player loaded
    shot(page, "history-compare")
    bar.locator("[data-role=clear]").click()
    expect(panel).to_be_hidden()
    expect(bar).to_be_hidden()
