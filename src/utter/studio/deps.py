"""What route handlers get injected: the studio's parts and a database session, as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from ..server.models import ModelSet
from ..server.voices.asr import AsrHolder
from .db import Database
from .jobs import JobQueue
from .provider import TTSProvider
from .settings import StudioSettings
from .storage import Storage
from .worker import JobRunner


@dataclass
class Studio:
    """Everything one studio process holds, built once by ``create_studio_app`` (no globals)."""

    settings: StudioSettings
    db: Database
    storage: Storage
    provider: TTSProvider
    queue: JobQueue
    runner: JobRunner
    asr: AsrHolder
    models: ModelSet | None = None  # the /tts service's models (a local engine only), set at mount


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


def get_session(studio: StudioDep) -> Iterator[Session]:
    with studio.db.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
