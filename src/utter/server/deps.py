"""What route handlers need, as FastAPI dependencies with short ``Annotated`` aliases.

Everything lives on one :class:`Service` object in ``app.state`` (no module-level singletons),
so two apps in one process (tests, a restart, the studio's mount) never share state by accident.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..engine.batcher import Batcher
from ..engine.engine import Engine
from .errors import ApiError
from .jobs import JobManager
from .references import ReferenceService
from .runtime import EngineHolder
from .settings import ServerSettings
from .voices import VoiceStore


@dataclass
class Service:
    settings: ServerSettings
    holder: EngineHolder
    references: ReferenceService
    voices: VoiceStore
    jobs: JobManager


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_api_key(request: Request, service: ServiceDep) -> None:
    """With an API key configured, accept ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    expected = service.settings.api_key_value()
    if expected is None:
        return
    given = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not given and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        message = "Missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'."
        raise ApiError(401, message, {"WWW-Authenticate": "Bearer"})


async def ready_batcher(service: ServiceDep) -> Batcher:
    """The batcher, waiting up to ``ready_timeout_s`` for a model still loading (else 503)."""
    return await service.holder.wait_ready(service.settings.ready_timeout_s)


BatcherDep = Annotated[Batcher, Depends(ready_batcher)]


async def ready_engine(batcher: BatcherDep) -> Engine:
    return batcher.engine


EngineDep = Annotated[Engine, Depends(ready_engine)]
