"""``GET /health`` and ``GET /languages``: open (no API key), cheap, and honest while loading.

/health answers 200 ``{"status": "healthy"}`` only once the model can serve; while it downloads
or loads (or after it failed) it answers 503 with the state, progress and what to do, so load
balancers and Modal route nothing to a container that cannot serve yet.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .. import __version__
from ..engine.config import LANGUAGES
from .deps import ServiceDep
from .runtime import ModelState

router = APIRouter(tags=["health"])

LANGUAGE_NOTE = (
    "Auto lets the model pick the language from the text; naming it helps for short or mixed texts. "
    "The reference audio may be in any language."
)


@router.get("/health")
async def health(service: ServiceDep) -> JSONResponse:
    holder = service.holder
    status: dict[str, Any] = holder.status()
    ready = holder.state is ModelState.READY and holder.batcher is not None
    body: dict[str, Any] = {
        "status": "healthy" if ready else status["state"],
        "model": status["model"],
        "device": status["device"],
        "dtype": status["dtype"],
        "supported_languages": status["languages"] or list(LANGUAGES),
        "state": status["state"],
        "progress": status["progress"],
        "error": status["error"],
        "hint": status["hint"],
        "version": __version__,
    }
    if ready:
        batcher = holder.batcher
        body["queue"] = {
            "active": batcher.active,
            "waiting": batcher.queued,
            "max_batch": batcher.max_batch,
            "max_queue": batcher.max_queue,
        }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/languages")
async def languages(service: ServiceDep) -> dict[str, Any]:
    engine = service.holder.engine
    return {
        "languages": list(engine.languages) if engine is not None else list(LANGUAGES),
        "default": "Auto",
        "note": LANGUAGE_NOTE,
    }
