"""initial schema: experiments, per-epoch metrics, per-epoch checkpoints

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("current_epoch", sa.Integer(), nullable=False),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("best_val_accuracy", sa.Float(), nullable=True),
        sa.Column("best_val_loss", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_experiments_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    op.create_index("ix_experiments_status_id", "experiments", ["status", "id"])
    for table in ("metrics", "checkpoints"):
        columns = (
            [
                sa.Column("train_loss", sa.Float(), nullable=False),
                sa.Column("train_accuracy", sa.Float(), nullable=False),
                sa.Column("val_loss", sa.Float(), nullable=False),
                sa.Column("val_accuracy", sa.Float(), nullable=False),
                sa.Column("lr", sa.Float(), nullable=False),
                sa.Column("duration_s", sa.Float(), nullable=False),
                sa.Column("samples_per_s", sa.Float(), nullable=False),
            ]
            if table == "metrics"
            else [
                sa.Column("data", sa.LargeBinary(), nullable=False),
                sa.Column("sha256", sa.String(length=64), nullable=False),
                sa.Column("size_bytes", sa.Integer(), nullable=False),
            ]
        )
        op.create_table(
            table,
            sa.Column("experiment_id", sa.Integer(), nullable=False),
            sa.Column("epoch", sa.Integer(), nullable=False),
            *columns,
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(
                ["experiment_id"],
                ["experiments.id"],
                name=op.f(f"fk_{table}_experiment_id_experiments"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("experiment_id", "epoch", name=op.f(f"pk_{table}")),
        )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("metrics")
    op.drop_index("ix_experiments_status_id", table_name="experiments")
    op.drop_table("experiments")
