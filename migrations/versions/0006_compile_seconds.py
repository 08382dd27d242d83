"""metrics.compile_s: seconds torch.compile took before an epoch (specs with `compile: true`)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('metrics', sa.Column('compile_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metrics') as batch:
        batch.drop_column('compile_s')
