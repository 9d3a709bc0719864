"""Browser tests of the studio pages: Playwright driving Debian's Chromium, headless, against the
real studio server (``utter serve``) started on a free loopback port with a tiny random checkpoint.

No browser is downloaded: the tests use ``/usr/bin/chromium`` (``apt-get install -y chromium``)
and skip cleanly when it or the ``playwright`` package is missing. Screenshots of every page are
written to ``artifacts/screenshots/`` (gitignored) as test artifacts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import speechlike

# Nothing here imports playwright at module level: without it (or without Chromium) the test
# modules skip themselves when they import tests.studio_browser.support, and this file still loads.
if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.studio_browser.support import Studio


@pytest.fixture(scope="session")
def studio(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    """The studio with the tiny checkpoint, model loaded."""
    from tests.studio_browser.support import start_studio

    base = tmp_path_factory.mktemp("studio")
    s = start_studio(str(tiny_checkpoint), base / "data", base / "server.log")
    try:
        s.wait_model(("ready",))
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")  # not session: the sync API keeps an event loop running
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    from tests.studio_browser.support import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, studio: Studio) -> Iterator[Page]:
    """A page on the studio; the test fails if any page threw a script error."""
    from tests.studio_browser.support import open_page

    ctx, pg, errors = open_page(browser, studio.url)
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture(scope="session")
def shot() -> Callable[[Page, str], Path]:
    """``shot(page, name)`` saves a full-page screenshot to artifacts/screenshots/<name>.png."""
    from tests.studio_browser.support import SCREENSHOTS

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.evaluate("window.scrollTo(0, 0)")  # a scrolled page with a sticky header shoots badly
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture(scope="session")
def ref_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s speech-like WAV: longer than the studio's minimum reference length."""
    from utter.audio import write_wav

    path = tmp_path_factory.mktemp("browser-audio") / "narrator.wav"
    write_wav(path, speechlike(4.0, 24000, seed=3), 24000)
    return path


@pytest.fixture
def make_voice(page: Page, ref_audio: Path) -> Callable[..., dict]:
    """Clone a voice through the API (for tests about other pages): ``make_voice(name) -> {id, name}``."""

    def make(name: str, transcript: str | None = "Prosecutors have opened a massive investigation.") -> dict:
        form: dict = {
            "name": name,
            "language": "English",
            "audio": {"name": ref_audio.name, "mimeType": "audio/wav", "buffer": ref_audio.read_bytes()},
        }
        if transcript is None:
            form["x_vector_only"] = "true"
        else:
            form["transcript"] = transcript
        res = page.request.post("/api/clone", multipart=form)
        assert res.status == 201, res.text()
        return res.json()

    return make
