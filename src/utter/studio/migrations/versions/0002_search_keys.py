"""Folded search keys (any script's case) and a folded voice-name key (duplicate names).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from utter.studio.search import fold, search_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("voices") as batch:
        batch.add_column(sa.Column("search_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("name_key", sa.String(400), nullable=True))
        batch.create_index("ix_voices_name_key", ["name_key"])
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("search_key", sa.Text(), nullable=True))
    bind = op.get_bind()
    voices = sa.table(
        "voices",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("reference_transcript", sa.Text),
        sa.column("search_key", sa.Text),
        sa.column("name_key", sa.String),
    )
    for row in bind.execute(sa.select(voices.c.id, voices.c.name, voices.c.reference_transcript)).all():
        bind.execute(
            voices.update()
            .where(voices.c.id == row.id)
            .values(search_key=search_key(row.name, row.reference_transcript), name_key=fold(row.name))
        )
    generations = sa.table(
        "generations",
        sa.column("id", sa.String),
        sa.column("text", sa.Text),
        sa.column("voice_name", sa.String),
        sa.column("search_key", sa.Text),
    )
    for row in bind.execute(sa.select(generations.c.id, generations.c.text, generations.c.voice_name)).all():
        bind.execute(
            generations.update()
            .where(generations.c.id == row.id)
            .values(search_key=search_key(row.text, row.voice_name))
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("search_key")
    with op.batch_alter_table("voices") as batch:
        batch.drop_index("ix_voices_name_key")
        batch.drop_column("name_key")
        batch.drop_column("search_key")
