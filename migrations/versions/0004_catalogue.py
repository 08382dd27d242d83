"""uploaded datasets; regression metrics (accuracy columns become nullable)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REGRESSION_COLUMNS = ('train_mae', 'val_mae', 'val_rmse', 'val_r2')


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_datasets'))
    )
    # batch mode: SQLite cannot alter a column's nullability in place (the table is copied).
    with op.batch_alter_table('metrics') as batch:
        batch.alter_column('train_accuracy', existing_type=sa.Float(), nullable=True)
        batch.alter_column('val_accuracy', existing_type=sa.Float(), nullable=True)
        for column in REGRESSION_COLUMNS:
            batch.add_column(sa.Column(column, sa.Float(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM metrics WHERE val_accuracy IS NULL")  # regression epochs have no accuracy to keep
    with op.batch_alter_table('metrics') as batch:
        for column in REGRESSION_COLUMNS:
            batch.drop_column(column)
        batch.alter_column('train_accuracy', existing_type=sa.Float(), nullable=False)
        batch.alter_column('val_accuracy', existing_type=sa.Float(), nullable=False)
    op.drop_table('datasets')
