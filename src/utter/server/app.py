"""The app factory: one FastAPI application for every place the service runs.

``utter serve --api-only`` runs it alone, the studio mounts it under ``/tts`` in its own app,
and ``deploy/modal_app.py`` hands it to Modal. It is mount-safe: no absolute redirects
(``redirect_slashes=False``), no module-level state (everything hangs off ``app.state``), and
nothing that needs the lifespan except starting the holder, which a mounting app does itself
(``manage_holder=False``), because Starlette runs no lifespan events for mounted apps.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from .. import __version__
from . import routes
from .deps import Service, require_api_key
from .http.docs import install_offline_docs
from .http.errors import install_error_handlers
from .http.middleware import RequestContextMiddleware
from .models import ModelSet
from .runtime import EngineHolder
from .settings import ServerSettings
from .speech.jobs import JobManager
from .voices.asr import AsrHolder
from .voices.references import ReferenceService
from .voices.store import VoiceLibrary, VoiceStore

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Voice cloning with Qwen3-TTS.

* **Seed API** (`/clone`, `/clone-batch`, `/submit-job` ...): the reference audio travels with
  every request (its prompt is cached by content).
* **OpenAI API** (`/v1/audio/speech`): speak in a stored voice (`POST /v1/voices`);
  `/v1/audio/transcriptions` transcribes a recording (Whisper, loaded on first use).

A reference sent without a transcript is transcribed (when a transcription model is set) so
it clones in the better ICL mode; otherwise it clones from the speaker embedding (x-vector).

When the server has an API key, send `Authorization: Bearer KEY` or `X-API-Key: KEY`
(`/health` and these docs stay open).
"""


def create_app(
    settings: ServerSettings,
    holder: EngineHolder,
    voices: VoiceLibrary | None = None,
    asr: AsrHolder | None = None,
    extras: list[EngineHolder] | None = None,
) -> FastAPI:
    """Build the service around ``holder`` (which may still be loading its model); its stored
    voices live in ``voices`` (default: a file store under the data dir) and its transcription
    model in ``asr`` (default: ``settings.asr_model``, loaded on first use)."""
    if extras is None:
        extras = [EngineHolder.from_settings(settings, model) for model in settings.extra_model_list()]
    models = ModelSet(holder, extras)
    if asr is None:
        asr = AsrHolder(settings.asr_model, settings.asr_device or settings.device, settings.cache_dir)
    service = Service(
        settings=settings,
        holder=holder,
        references=ReferenceService(settings, asr),
        voices=voices if voices is not None else VoiceStore(settings.voices_dir),
        jobs=JobManager(settings.jobs_dir, settings.job_ttl_s, settings.max_jobs),
        asr=asr,
        models=models,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.manage_holder:
            holder.start()
            models.start_extras()
        try:
            yield
        finally:
            service.jobs.cancel_all()
            if settings.manage_holder:
                holder.stop()
                models.stop_extras()

    app = FastAPI(
        title="Utter TTS",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,  # served offline below
        redoc_url=None,
    )
    install_offline_docs(app)
    app.state.service = service
    install_error_handlers(app, settings.retry_after_s)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_bytes,
        body_timeout_s=settings.body_timeout_s,
        api_key=settings.api_key_value(),
    )

    app.include_router(routes.health.router)
    protected = [Depends(require_api_key)]
    for module in (
        routes.seed,
        routes.jobs,
        routes.openai,
        routes.voices,
        routes.transcribe,
        routes.elevenlabs,
        routes.family,
    ):
        app.include_router(module.router, dependencies=protected)
    # WebSockets check the key themselves (also from the query string or the first message).
    app.include_router(routes.realtime.router)
    app.include_router(routes.elevenlabs.ws_router)
    if settings.api_key_value() is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key (set UTTER_API_KEY)", settings.host)
    return app
