"""experiment events (status, epochs, progress, logs) for live streams; workers seen; samples per epoch

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_events_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sqlite_autoincrement=True,  # ids never reused: they are the SSE event ids
    )
    op.create_index('ix_events_experiment_id_id', 'events', ['experiment_id', 'id'], unique=False)
    op.create_table('workers',
    sa.Column('worker_id', sa.String(length=200), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('worker_id', name=op.f('pk_workers'))
    )
    op.add_column('metrics', sa.Column('train_samples', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metrics') as batch:
        batch.drop_column('train_samples')
    op.drop_table('workers')
    op.drop_index('ix_events_experiment_id_id', table_name='events')
    op.drop_table('events')
