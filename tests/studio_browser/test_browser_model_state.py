"""The model's state shows in every page: a studio whose model cannot be had (an unknown hub id,
offline) serves its pages at once and shows the failure with its reason and what to do; generation
requests fail clearly. The downloading and loading banners are checked with a stubbed health answer."""

from __future__ import annotations

import json
from pathlib import Path

from tests.studio_browser.support import Browser, Page, Route, expect, open_page, start_studio


def test_failed_model_shows_reason_and_hint(browser: Browser, ref_audio: Path, tmp_path: Path, shot) -> None:
    studio = start_studio(
        "Qwen/Utter-Test-No-Such-Model",
        tmp_path / "data",
        tmp_path / "server.log",
        extra_env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    ctx = None
    try:
        model = studio.wait_model(("failed",), timeout=60)["model"]
        assert model["error"] and model["hint"]
        ctx, page, errors = open_page(browser, studio.url)
        for path in ("/clone", "/generate", "/voices", "/history", "/tasks"):
            page.goto(path)
            banner = page.locator("#model-banner")
            expect(banner).to_be_visible()
            expect(banner).to_have_attribute("data-state", "failed")
            expect(banner.locator("[data-role=title]")).to_have_text("The model is unavailable.")
            expect(banner.locator("[data-role=detail]")).to_have_text(model["error"])
            expect(banner.locator("[data-role=hint]")).to_have_text(model["hint"])
            expect(page.locator("#model-chip")).to_contain_text("Model unavailable")
        shot(page, "banner-failed")

        # Cloning still works (the voice is computed on first use); generating says why it cannot.
        res = page.request.post(
            "/api/clone",
            multipart={
                "name": "Offline voice",
                "transcript": "Prosecutors have opened a massive investigation.",
                "audio": {"name": ref_audio.name, "mimeType": "audio/wav", "buffer": ref_audio.read_bytes()},
            },
        )
        assert res.status == 201, res.text()
        page.goto(f"/generate?voice={res.json()['id']}")
        page.fill("#text", "This cannot be spoken today.")
        page.click("#generate-btn")
        expect(page.locator("#generate-error")).to_contain_text("The model is not available")
        expect(page.locator("#text")).to_have_value("This cannot be spoken today.")
        shot(page, "generate-model-failed")
        assert not errors, errors
    finally:
        if ctx is not None:
            ctx.close()
        studio.stop()


def test_downloading_and_loading_banners(page: Page, shot) -> None:
    health = {
        "status": "starting",
        "model": {"state": "downloading", "provider": "local", "model": "Qwen/X", "progress": 0.42},
        "database": "ok",
        "jobs": {"queued": 0, "processing": 0},
    }

    def fulfil(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(health))

    page.route("**/api/health", fulfil)
    page.goto("/generate")
    banner = page.locator("#model-banner")
    expect(banner).to_have_attribute("data-state", "downloading")
    expect(banner.locator("[data-role=title]")).to_have_text("Downloading the model…")
    expect(banner.locator("[data-role=detail]")).to_contain_text("42%")
    expect(banner.locator("[data-role=progress]")).to_be_visible()
    width = page.evaluate("document.querySelector('#model-banner [data-role=bar]').style.width")
    assert width.startswith("42"), width
    expect(page.locator("#model-chip")).to_contain_text("Downloading model")
    shot(page, "banner-downloading")

    health["model"] = {"state": "loading", "provider": "local", "model": "Qwen/X", "progress": None}
    expect(banner).to_have_attribute("data-state", "loading", timeout=10000)
    expect(banner.locator("[data-role=title]")).to_have_text("Loading the model…")
    expect(banner.locator("[data-role=progress]")).to_have_class("progress banner-progress indeterminate")

    health["model"] = {"state": "ready", "provider": "local", "model": "Qwen/X"}
    expect(banner).to_be_hidden(timeout=10000)
    expect(page.locator("#model-chip")).to_contain_text("Model ready")


def test_a_disk_almost_full_shows_a_banner_on_every_page(page: Page, shot) -> None:
    health = {
        "status": "ok",
        "model": {"state": "ready", "provider": "local", "model": "Qwen/X"},
        "database": "ok",
        "jobs": {"queued": 0, "processing": 0},
        "storage": {"free_mib": 37.4, "low": True},
    }

    def fulfil(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(health))

    page.route("**/api/health", fulfil)
    for path in ("/clone", "/generate", "/history"):
        page.goto(path)
        banner = page.locator("#disk-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("The server's disk is almost full.")
        expect(banner.locator("[data-role=detail]")).to_contain_text("37 MiB left")
        expect(page.locator("#model-banner")).to_be_hidden()
    shot(page, "banner-disk-low")
    health["storage"] = {"free_mib": 51200.0, "low": False}
    page.reload()
    expect(page.locator("#model-chip")).to_contain_text("Model ready")
    expect(page.locator("#disk-banner")).to_be_hidden()
