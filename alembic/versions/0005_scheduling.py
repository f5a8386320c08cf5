"""scheduling: estimates and the time-weighted critical path, declared and touched files, lock waits

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("estimate_minutes", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("files", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("touched_files", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("estimate_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("path_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lock_wait_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.drop_column("lock_wait_seconds")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_column("path_seconds")
        batch_op.drop_column("estimate_seconds")
        batch_op.drop_column("touched_files")
        batch_op.drop_column("files")
        batch_op.drop_column("estimate_minutes")
