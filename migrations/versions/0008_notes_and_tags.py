"""experiments.notes and experiment_tags: what a person writes of a run afterwards, and words to find it by

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
    op.create_table(
        "experiment_tags",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_tags_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "tag", name=op.f("pk_experiment_tags")),
    )
    op.create_index(op.f("ix_experiment_tags_tag"), "experiment_tags", ["tag"])


def downgrade() -> None:
    op.drop_index(op.f("ix_experiment_tags_tag"), table_name="experiment_tags")
    op.drop_table("experiment_tags")
    # Recreates the table on SQLite: keep 0007's AUTOINCREMENT.
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("notes")
