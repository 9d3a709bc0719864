"""Voices page: search, pagination, preview, rename, delete, "generate with this voice"; and a
voice recorded from the (fake) microphone, cloned in transcript-free mode."""

from __future__ import annotations

import re
import uuid

# Importing support skips this module cleanly when Chromium or playwright is missing.
from tests.studio_browser.support import Page, expect


def test_voices_search_paginate_preview_rename_delete(page: Page, make_voice, shot) -> None:
    tag = uuid.uuid4().hex[:8]
    alpha = make_voice(f"Alpha {tag}")
    beta = make_voice(f"Beta {tag}", transcript=None)
    for i in range(11):  # 13 voices with the tag: two pages of 12
        make_voice(f"Filler {i:02d} {tag}")

    page.goto("/voices")
    page.fill("#search", tag)
    # The search runs 250 ms after typing; until then the unfiltered first page (these 13 voices
    # too) shows, and a click on its pager would race with the search's answer.
    expect(page).to_have_url(re.compile(f"search={tag}"))
    items = page.locator(".voice-item")
    expect(items).to_have_count(12)
    pager = page.locator("#pager")
    expect(pager.locator("[data-role=info]")).to_have_text("Page 1 of 2 · 13 total")
    pager.locator("[data-role=next]").click()
    expect(items).to_have_count(1)
    expect(pager.locator("[data-role=info]")).to_contain_text("Page 2 of 2")
    expect(page).to_have_url(re.compile(r"page=2"))
    pager.locator("[data-role=prev]").click()
    expect(items).to_have_count(12)

    page.fill("#search", f"Beta {tag}")
    expect(items).to_have_count(1)
    expect(items.first.locator("[data-role=meta]")).to_contain_text("transcript-free")
    page.fill("#search", f"Alpha {tag}")
    expect(items).to_have_count(1)
    item = page.locator(f".voice-item[data-id='{alpha['id']}']")
    expect(item.locator("[data-role=meta]")).to_contain_text("with transcript")

    # Preview: the reference recording loads into the inline player.
    item.locator("[data-role=preview]").click()
    page.wait_for_function(
        f"document.querySelector(\".voice-item[data-id='{alpha['id']}'] audio\")?.duration > 3.9"
    )
    shot(page, "voices")

    # Rename in place; the new name is stored.
    item.locator("[data-role=rename]").click()
    item.locator("[data-role=rename-input]").fill(f"Alpha renamed {tag}")
    item.locator("button[type=submit]").click()
    expect(item.locator("[data-role=name]")).to_have_text(f"Alpha renamed {tag}")
    assert page.request.get(f"/api/voices/{alpha['id']}").json()["name"] == f"Alpha renamed {tag}"
    # An empty name is refused with a message and changes nothing.
    item.locator("[data-role=rename]").click()
    item.locator("[data-role=rename-input]").fill("   ")
    item.locator("button[type=submit]").click()
    expect(page.locator(".toast-error")).to_contain_text("needs a name")
    assert page.request.get(f"/api/voices/{alpha['id']}").json()["name"] == f"Alpha renamed {tag}"
    item.locator("[data-role=rename-cancel]").click()

    # "Generate with this voice" opens Generate with it selected.
    item.locator("[data-role=generate]").click()
    expect(page).to_have_url(re.compile(rf"/generate\?voice={alpha['id']}"))
    expect(page.locator("#voice-select option:checked")).to_have_text(f"Alpha renamed {tag}")

    # Delete (after confirming); cancelling the dialog keeps it.
    page.goto(f"/voices?search=Beta+{tag}")
    expect(items).to_have_count(1)
    items.first.locator("[data-role=delete]").click()
    page.locator("#confirm-dialog [data-role=cancel]").click()
    expect(items).to_have_count(1)
    items.first.locator("[data-role=delete]").click()
    page.locator("#confirm-dialog [data-role=ok]").click()
    expect(items).to_have_count(0)
    expect(page.locator("#empty")).to_contain_text("No voice matches")
    assert page.request.get(f"/api/voices/{beta['id']}").status == 404


def test_record_from_microphone_then_clone_transcript_free(page: Page, shot) -> None:
    """Chromium's fake microphone (a beep) stands in for a person; the take becomes a WAV upload."""
    page.goto("/clone")
    record = page.locator("#record-btn")
    expect(record).to_be_enabled()
    record.click()
    expect(record).to_have_class(re.compile("recording"))
    expect(page.locator("#record-time")).to_be_visible()
    page.wait_for_timeout(4500)
    shot(page, "clone-recording")
    record.click()
    preview = page.locator("#audio-preview")
    expect(preview).to_be_visible()
    expect(preview.locator("[data-role=name]")).to_have_text(re.compile(r"^recording-.*\.wav$"))
    seconds = float(preview.locator("[data-role=meta]").inner_text().split(" s")[0])
    assert seconds >= 4.0

    page.check("#x-vector-only")
    expect(page.locator("#transcript")).to_be_disabled()
    name = f"Mic {uuid.uuid4().hex[:8]}"
    page.fill("#voice-name", name)
    page.click("#clone-btn")
    expect(page.locator("#clone-success")).to_be_visible()
    found = page.request.get("/api/voices", params={"search": name}).json()["voices"]
    assert len(found) == 1 and found[0]["reference_transcript"] is None
    assert found[0]["reference_seconds"] >= 4.0


def test_a_slow_older_page_does_not_replace_the_search_results(page: Page, make_voice) -> None:
    """The first (unfiltered) list answers after the search typed meanwhile: the page keeps the
    search's results (it once showed whichever response came last)."""
    from urllib.parse import parse_qs, urlparse

    tag = uuid.uuid4().hex[:8]
    make_voice(f"Kept {tag}")
    make_voice(f"Other {tag}")
    held = []

    def hold_unfiltered(route) -> None:
        if parse_qs(urlparse(route.request.url).query).get("search", [""])[0]:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/voices?*", hold_unfiltered)
    page.goto("/voices")
    page.fill("#search", f"Kept {tag}")
    items = page.locator(".voice-item")
    expect(items).to_have_count(1)
    assert held, "the first page's request was not held"
    for route in held:
        route.continue_()
    page.wait_for_timeout(500)  # the stale answer arrives and is ignored
    expect(items).to_have_count(1)
    expect(items.first.locator("[data-role=name]")).to_have_text(f"Kept {tag}")


def test_a_search_typed_before_the_page_script_ran_is_kept(page: Page, make_voice) -> None:
    """Typing into the search box as soon as it shows, before the page's script has run (a slow
    connection), searches for what was typed: the script took the search from the address and
    so emptied the box (a full-suite run saw the History page list everything after a search)."""
    tag = uuid.uuid4().hex[:8]
    make_voice(f"Early {tag}")
    make_voice(f"Other {tag}")
    held = []
    page.route("**/static/js/voices.js*", lambda route: held.append(route))  # held until released
    page.goto("/voices", wait_until="commit")
    page.fill("#search", f"Early {tag}")
    while not held:
        page.wait_for_timeout(20)
    held[0].continue_()
    items = page.locator(".voice-item")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text(f"Early {tag}")
    expect(page.locator("#search")).to_have_value(f"Early {tag}")
