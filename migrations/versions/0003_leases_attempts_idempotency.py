"""leases and heartbeats, the claim history, mid-epoch resume points, idempotent submissions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('attempts',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('worker_id', sa.String(length=200), nullable=False),
    sa.Column('claimed_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_attempts_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'attempt', name=op.f('pk_attempts'))
    )
    op.create_table('resume_points',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_resume_points_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', name=op.f('pk_resume_points'))
    )
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("lost_leases", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_experiments_idempotency_key'), ['idempotency_key'])

    if op.get_bind().dialect.name == "sqlite":
        # The blob goes last, so that reading a checkpoint's hash does not walk the blob's overflow pages.
        order = ("experiment_id", "epoch", "sha256", "size_bytes", "created_at", "data")
        with op.batch_alter_table("checkpoints", recreate="always", partial_reordering=[order]):
            pass
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_sweeps_idempotency_key'), ['idempotency_key'])



def downgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_sweeps_idempotency_key'), type_='unique')
        batch_op.drop_column('request_hash')
        batch_op.drop_column('idempotency_key')

    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_experiments_idempotency_key'), type_='unique')
        batch_op.drop_column('request_hash')
        batch_op.drop_column('idempotency_key')
        batch_op.drop_column('lost_leases')
        batch_op.drop_column('lease_expires_at')

    op.drop_table('resume_points')
    op.drop_table('attempts')
