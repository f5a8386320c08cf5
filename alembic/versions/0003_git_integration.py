"""git integration: the commit an attempt landed, and one merge at a time per integration branch

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("commit_sha", sa.String(length=64), nullable=True))

    op.create_table(
        "merge_locks",
        sa.Column("branch", sa.String(length=255), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("branch", name=op.f("pk_merge_locks")),
    )


def downgrade() -> None:
    op.drop_table("merge_locks")
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.drop_column("commit_sha")
