"""What route handlers need, as FastAPI dependencies with short ``Annotated`` aliases.

Everything lives on one :class:`Service` object in ``app.state`` (no module-level singletons),
so two apps in one process (tests, a restart, the studio's mount) never share state by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..engine.engine import Engine
from ..engine.sched.batcher import Batcher
from .http.errors import ApiError
from .http.middleware import API_KEY_MESSAGE, api_key_matches
from .models import ModelSet
from .runtime import EngineHolder
from .settings import ServerSettings
from .speech.jobs import JobManager
from .voices.asr import AsrHolder
from .voices.references import ReferenceService
from .voices.store import VoiceLibrary


@dataclass
class Service:
    settings: ServerSettings
    holder: EngineHolder
    references: ReferenceService
    voices: VoiceLibrary
    jobs: JobManager
    asr: AsrHolder
    models: ModelSet  # the main model (``holder``) and any extra ones


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_api_key(request: Request, service: ServiceDep) -> None:
    """With an API key configured, accept ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    # The middleware already refused a wrong key before the body was read; this stays as the
    # route-level guarantee (an app mounted without the middleware is still protected).
    if not api_key_matches(request.headers, service.settings.api_key_value()):
        raise ApiError(401, API_KEY_MESSAGE, {"WWW-Authenticate": "Bearer"})


async def ready_batcher(service: ServiceDep) -> Batcher:
    """The batcher, waiting up to ``ready_timeout_s`` for a model still loading (else 503)."""
    return await service.holder.wait_ready(service.settings.ready_timeout_s)


BatcherDep = Annotated[Batcher, Depends(ready_batcher)]


async def ready_engine(batcher: BatcherDep) -> Engine:
    return batcher.engine


EngineDep = Annotated[Engine, Depends(ready_engine)]
