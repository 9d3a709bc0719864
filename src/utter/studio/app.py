"""The studio app factory: API routes, pages, static files and the TTS service under ``/tts``.

It starts serving at once: the database is migrated (quick), the model is downloaded and
loaded in the background (its state shows in ``/api/health`` and the pages), and the job
worker picks up queued jobs, including those a previous run left behind, once it is ready.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..server.http.docs import install_offline_docs
from ..server.http.errors import error_response, install_error_handlers, is_storage_full
from ..server.http.middleware import RequestContextMiddleware, log_safe
from ..server.voices.asr import AsrHolder
from . import routes
from .db import UNAVAILABLE_MESSAGE, Database, is_unavailable
from .deps import Studio
from .jobs import JobQueue
from .limits import BodySizeLimit
from .login import LoginGate
from .provider import LocalProvider, TTSProvider, make_provider
from .settings import StudioSettings
from .storage import Storage
from .voice_library import StudioVoiceLibrary
from .worker import JobRunner

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
FORM_OVERHEAD = 1024 * 1024  # multipart framing and the text fields around an upload


async def _database_error(request: Request, error: Exception) -> Response:
    """A database error in a studio route (or in /tts, whose voices live in the studio's
    database): down or restarting, 503 with Retry-After and one log line. Anything else goes on
    to the last resort (``RequestContextMiddleware``): 507 for a full disk (PostgreSQL's is an
    OperationalError too, hence asked first), else the 500 with the request id."""
    if is_unavailable(error) and not is_storage_full(error):
        where = f"{request.method} {log_safe(request.url.path)}"
        logger.error("database unavailable in %s: %s", where, log_safe(error))
        return error_response(503, UNAVAILABLE_MESSAGE, {"Retry-After": "5"})
    raise error


def _mount_tts(app: FastAPI, settings: StudioSettings, provider: LocalProvider, studio: Studio) -> None:
    """The TTS service (seed /clone API, OpenAI API) on the same model and the same voice
    library (see ``voice_library.py``), under /tts."""
    from ..server.app import create_app

    service_settings = settings.service_settings(manage_holder=False)
    if settings.password_value() and service_settings.api_key_value() is None:
        # One secret: programs use the studio's password as the TTS service's key too.
        service_settings = service_settings.model_copy(update={"api_key": settings.password})
    voices = StudioVoiceLibrary(studio, provider, legacy_dir=service_settings.voices_dir)
    # The studio starts and stops the holders (mounted apps get no lifespan).
    tts = create_app(service_settings, provider.holder, voices, studio.asr)
    tts.add_exception_handler(DBAPIError, _database_error)
    app.state.tts_models = studio.models = tts.state.service.models
    provider.models = studio.models  # preset speakers run on the CustomVoice model among them
    app.mount("/tts", tts)


def create_studio_app(settings: StudioSettings | None = None, provider: TTSProvider | None = None) -> FastAPI:
    """Build the studio. Without arguments, settings come from ``UTTER_*`` variables (uvicorn's
    factory mode, used by ``utter serve``); tests pass a provider around an engine they loaded."""
    settings = settings or StudioSettings()
    storage = Storage(settings.data_dir)
    db = Database(settings.db_url)
    db.migrate()
    provider = provider or make_provider(settings, storage)
    queue = JobQueue(db.sessions, settings.job_lease_seconds, settings.job_max_attempts)
    runner = JobRunner(settings, queue, storage, provider)
    asr = AsrHolder(settings.asr_model, settings.asr_device or settings.device, settings.cache_dir)
    studio = Studio(settings, db, storage, provider, queue, runner, asr)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        provider.start()  # returns at once; the model loads in the background
        extras = getattr(app.state, "tts_models", None)  # extra models of /tts (CustomVoice ...)
        if extras is not None:
            extras.start_extras()
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
            provider.stop()
            if extras is not None:
                extras.stop_extras()
            db.dispose()

    app = FastAPI(title="Utter studio", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    install_offline_docs(app)
    app.state.studio = studio
    install_error_handlers(app, retry_after_s=2)

    app.add_exception_handler(DBAPIError, _database_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and importlib.util.find_spec(f"{__package__}.pages") is not None:
            pages = importlib.import_module(f"{__package__}.pages")
            if pages.wants_page(request):  # a browser on a wrong address: a page, not JSON
                return pages.not_found_page(request)
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    # Request ids, an access line per request and the last resort for errors (a JSON 500 with
    # the id, 507 for a full disk) as the API's; /tts has its own. Inside the body cap below.
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=None,
        body_timeout_s=None,
        mounted=("/tts",),
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_upload_bytes + FORM_OVERHEAD,
        prefix="/api",
        timeout_s=settings.body_timeout_s,
        shown_limit_mb=settings.max_upload_mb,
    )
    password = settings.password_value()
    if password:  # added last: the outermost layer, before any body is read
        api_key = settings.service_settings().api_key_value()
        app.add_middleware(LoginGate, password=password, api_key=api_key)
    routers = (
        routes.voices,
        routes.transcribe,
        routes.generate,
        routes.generations,
        routes.languages,
        routes.health,
    )
    for module in routers:
        app.include_router(module.router)
    if importlib.util.find_spec(f"{__package__}.pages") is not None:  # the pages are optional
        app.include_router(importlib.import_module(f"{__package__}.pages").router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    if isinstance(provider, LocalProvider):
        _mount_tts(app, settings, provider, studio)
    logger.info("studio data in %s, %s TTS", storage.root, provider.kind)
    return app
