"""``GET /health`` and ``GET /languages``: open (no API key), cheap, and honest while loading.

/health answers 200 ``{"status": "healthy"}`` only once the model can serve and its worker is
alive; while it downloads or loads, after it failed, or when the worker is down or stuck (no
decode step for ``worker_stall_s`` with requests waiting) it answers 503 with the state and what
to do, so load balancers, Modal and supervisors route nothing to (or restart) a server that
cannot serve. ``worker`` shows the liveness: ``last_step_age_s`` is how long ago the worker
last turned its loop (it turns at least twice a second while idle). ``storage`` is the free
space for stored voices and job results (``low`` below 200 MiB); a full disk is not unhealthy:
speech streams on, and writes answer 507.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ... import __version__
from ...engine.config import LANGUAGES
from ..deps import ServiceDep
from ..disk import disk_status
from ..runtime import ModelState

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
    worker = status["worker"]
    serving = ready and worker is not None and worker["healthy"]
    body: dict[str, Any] = {
        "status": "healthy" if serving else "unhealthy" if ready else status["state"],
        "model": status["model"],
        "device": status["device"],
        "dtype": status["dtype"],
        "activation_dtype": status["activation_dtype"],
        "supported_languages": status["languages"] or list(LANGUAGES),
        "state": status["state"],
        "progress": status["progress"],
        "error": status["error"] or (worker or {}).get("error"),
        "hint": status["hint"] or (None if serving or not ready else "Restart the server."),
        "version": __version__,
        "worker": worker,
        "asr": service.asr.status(),
        # Every model served (the main one first), with its kind, state and weight memory.
        "models": service.models.status(),
        "storage": disk_status(service.settings.data_dir),  # free space for voices and job results
    }
    if ready:
        batcher = holder.batcher
        body["queue"] = {
            "active": batcher.active,
            "waiting": batcher.queued,
            "max_batch": batcher.max_batch,
            "max_queue": batcher.max_queue,
        }
    return JSONResponse(body, status_code=200 if serving else 503)


@router.get("/languages")
async def languages(service: ServiceDep) -> dict[str, Any]:
    engine = service.holder.engine
    return {
        "languages": list(engine.languages) if engine is not None else list(LANGUAGES),
        "default": "Auto",
        "note": LANGUAGE_NOTE,
    }
