"""recipes: sweeps, warnings, environment, test metrics, reruns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps'))
    )
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('warnings', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('environment', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('stop_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('test_loss', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('test_accuracy', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('rerun_of', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sweep_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sweep_params', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_experiments_sweep_id'), ['sweep_id'], unique=False)
        batch_op.create_foreign_key(
            batch_op.f('fk_experiments_sweep_id_sweeps'), 'sweeps', ['sweep_id'], ['id'], ondelete='CASCADE'
        )
        batch_op.create_foreign_key(
            batch_op.f('fk_experiments_rerun_of_experiments'), 'experiments', ['rerun_of'], ['id'], ondelete='SET NULL'
        )


def downgrade() -> None:
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_experiments_rerun_of_experiments'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_experiments_sweep_id_sweeps'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_experiments_sweep_id'))
        batch_op.drop_column('sweep_params')
        batch_op.drop_column('sweep_id')
        batch_op.drop_column('rerun_of')
        batch_op.drop_column('test_accuracy')
        batch_op.drop_column('test_loss')
        batch_op.drop_column('stop_reason')
        batch_op.drop_column('environment')
        batch_op.drop_column('warnings')

    op.drop_table('sweeps')
