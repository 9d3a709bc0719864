"""The studio's pages: small server-rendered shells that the vanilla-JS front end fills from the API.

Everything the browser loads comes from this package (templates here, scripts and styles under
``static/``); there is no CDN and no build step. The pages only render; all data flows through
the JSON API, so a page works the same whether the model is ready, loading or unavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

import utter

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
router = APIRouter(include_in_schema=False)

# (page id, label, path) in the order of the navigation bar.
NAV = (
    ("clone", "Clone", "/clone"),
    ("generate", "Generate", "/generate"),
    ("design", "Design", "/design"),
    ("voices", "Voices", "/voices"),
    ("history", "History", "/history"),
    ("tasks", "Tasks", "/tasks"),
)

# Client-side checks mirror the server's; each value is read from the app's settings when the
# backend exposes it there (first matching attribute name wins), else these defaults apply.
# The server re-checks everything: these only give an early, clear message.
LIMITS: dict[str, tuple[tuple[str, ...], float]] = {
    "max_text_chars": (("max_text_chars",), 20000),
    "max_transcript_chars": (("max_transcript_chars",), 2000),
    "max_upload_mb": (("max_upload_mb",), 25),
    "min_ref_seconds": (("min_ref_seconds",), 3.0),
    "max_ref_seconds": (("max_ref_seconds",), 60.0),
    "max_name_chars": (("max_name_chars",), 100),
}


def page_limits(settings: Any) -> dict[str, float]:
    """The limits the pages check before sending anything, taken from the server's settings."""
    limits: dict[str, float] = {}
    for key, (names, default) in LIMITS.items():
        value = default
        for name in names:
            found = getattr(settings, name, None)
            if isinstance(found, (int, float)) and not isinstance(found, bool):
                value = found
                break
        if key == "max_upload_mb" and value == default:
            # A byte limit is also accepted (e.g. ``max_upload_bytes``).
            raw = getattr(settings, "max_upload_bytes", None)
            if isinstance(raw, int) and raw > 0:
                value = raw / (1024 * 1024)
        limits[key] = value
    return limits


def _render(request: Request, page: str, title: str) -> HTMLResponse:
    # The studio app keeps its settings on ``app.state.studio``; a bare app may set ``app.state.settings``.
    studio = getattr(request.app.state, "studio", None)
    settings = getattr(studio, "settings", None) or getattr(request.app.state, "settings", None)
    context = {
        "page": page,
        "title": title,
        "nav": NAV,
        "limits": page_limits(settings),
        "version": getattr(utter, "__version__", "0"),
    }
    return templates.TemplateResponse(request, f"{page}.html", context)


def not_found_page(request: Request) -> HTMLResponse:
    """The page a browser gets for an address the studio does not have (instead of JSON)."""
    response = _render(request, "not_found", "Page not found")
    response.status_code = 404
    return response


def wants_page(request: Request) -> bool:
    """A browser navigating to a page (not the JSON API, the TTS service or a static file)."""
    path = request.url.path
    return (
        request.method == "GET"
        and "text/html" in request.headers.get("accept", "")
        and not path.startswith(("/api/", "/tts/", "/static/", "/docs"))
    )


@router.get("/", response_class=HTMLResponse)
def index() -> RedirectResponse:
    return RedirectResponse("/generate", status_code=307)


# The heading of each page of NAV.
TITLES = {
    "clone": "Clone a voice",
    "generate": "Generate speech",
    "design": "Design a voice",
    "voices": "Voices",
    "history": "History",
    "tasks": "Tasks",
}


def _page_route(page: str, title: str):
    def show(request: Request) -> HTMLResponse:
        return _render(request, page, title)

    show.__name__ = f"{page}_page"
    return show


for _page, _label, _path in NAV:
    router.add_api_route(
        _path, _page_route(_page, TITLES[_page]), methods=["GET"], response_class=HTMLResponse
    )
