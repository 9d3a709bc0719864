"""Database tables: voices, generations and the tasks (jobs) that produce generations.

Alembic owns the schema (``migrations/``); these classes only describe it to SQLAlchemy. Paths
are stored relative to the data directory so a data folder can be moved as a whole.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .search import fold, search_key


def new_id() -> str:
    """32 lowercase hex characters: safe in URLs and file names, and checked as such (storage.py)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every database. SQLite keeps no zone, so values are stored
    as naive UTC there and given their zone back when read; lease comparisons stay exact."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use utcnow()")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Voice(Base):
    __tablename__ = "voices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(32))
    reference_transcript: Mapped[str | None] = mapped_column(Text)
    reference_seconds: Mapped[float] = mapped_column(Float)
    audio_path: Mapped[str] = mapped_column(String(255))  # reference recording, 24 kHz mono WAV
    # Folded copies for search and for telling names apart (search.py); kept by the listener below.
    search_key: Mapped[str | None] = mapped_column(Text)
    name_key: Mapped[str | None] = mapped_column(String(400), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_voices_created_at", "created_at"),)


class Generation(Base):
    """A text spoken in a voice: the history item. Its audio appears when its task completes."""

    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    voice_id: Mapped[str | None] = mapped_column(ForeignKey("voices.id", ondelete="SET NULL"))
    voice_name: Mapped[str] = mapped_column(String(100))  # kept when the voice is deleted
    text: Mapped[str] = mapped_column(Text)
    search_key: Mapped[str | None] = mapped_column(Text)  # folded text and voice name (search.py)
    language: Mapped[str] = mapped_column(String(32))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # sampling options as asked
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    generation_seconds: Mapped[float | None] = mapped_column(Float)
    audio_path: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    task: Mapped[Task | None] = relationship(
        back_populates="generation", uselist=False, cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        Index("ix_generations_created_at", "created_at"),
        Index("ix_generations_status", "status"),
        Index("ix_generations_voice_id", "voice_id"),
    )


class Task(Base):
    """A job in the durable queue. A worker owns it while ``status`` is processing and its lease
    (renewed by heartbeats) has not run out; progress is written here as it is made."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    chunks: Mapped[list[str] | None] = mapped_column(JSON)  # the text split, fixed at first start
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    frames_done: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    busy_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # generation time over all attempts
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    generation: Mapped[Generation] = relationship(back_populates="task")

    __table_args__ = (Index("ix_tasks_status_created_at", "status", "created_at"),)


@event.listens_for(Voice, "before_insert")
@event.listens_for(Voice, "before_update")
def _voice_keys(_mapper: Any, _connection: Any, voice: Voice) -> None:
    voice.search_key = search_key(voice.name, voice.reference_transcript)
    voice.name_key = fold(voice.name)


@event.listens_for(Generation, "before_insert")
@event.listens_for(Generation, "before_update")
def _generation_keys(_mapper: Any, _connection: Any, gen: Generation) -> None:
    gen.search_key = search_key(gen.text, gen.voice_name)
