"""experiments.notes and experiments.tags: what a person writes of a run afterwards, and words to find it by

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("notes", sa.Text(), server_default="", nullable=False))
    op.add_column("experiments", sa.Column("tags", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    # Recreates the table on SQLite: keep 0007's AUTOINCREMENT.
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("tags")
        batch.drop_column("notes")
