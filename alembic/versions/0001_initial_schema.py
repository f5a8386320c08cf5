"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=True),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_feature_id", ["feature_id"], unique=False)

    op.create_table(
        "features",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("category", sa.String(length=100), server_default="", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("verify", sa.Text(), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unmet_deps", sa.Integer(), server_default="0", nullable=False),
        sa.Column("critical_path", sa.Integer(), server_default="1", nullable=False),
        sa.Column("claim_order", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("agent_id", sa.String(length=200), nullable=True),
        sa.Column("lease_token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("notes", sa.Text(), server_default="", nullable=False),
        sa.Column("last_model", sa.String(length=100), nullable=True),
        sa.Column("cost_usd", sa.Float(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_features")),
        sa.UniqueConstraint("name", name=op.f("uq_features_name")),
    )
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.create_index("ix_features_lease", ["status", "lease_expires_at"], unique=False)
        batch_op.create_index(
            "ix_features_ready",
            ["status", "unmet_deps", "claim_order", "id"],
            unique=False,
        )
        batch_op.create_index("ix_features_owner", ["owner", "status"], unique=False)

    op.create_table(
        "agent_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("session_id", sa.String(length=100), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=True),
        sa.Column("num_turns", sa.Integer(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("transcript_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("reported_status", sa.String(length=20), nullable=True),
        sa.Column("reported_notes", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["feature_id"], ["features.id"], name=op.f("fk_agent_runs_feature_id_features"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_runs")),
    )
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.create_index("ix_agent_runs_agent_id", ["agent_id"], unique=False)
        batch_op.create_index("ix_agent_runs_feature_id", ["feature_id", "attempt"], unique=False)

    op.create_table(
        "feature_dependencies",
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("depends_on_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["depends_on_id"],
            ["features.id"],
            name=op.f("fk_feature_dependencies_depends_on_id_features"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["feature_id"],
            ["features.id"],
            name=op.f("fk_feature_dependencies_feature_id_features"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("feature_id", "depends_on_id", name=op.f("pk_feature_dependencies")),
    )
    with op.batch_alter_table("feature_dependencies", schema=None) as batch_op:
        batch_op.create_index("ix_feature_dependencies_depends_on_id", ["depends_on_id"], unique=False)

    op.create_table(
        "file_locks",
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=True),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["feature_id"], ["features.id"], name=op.f("fk_file_locks_feature_id_features"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_file_locks")),
    )
    with op.batch_alter_table("file_locks", schema=None) as batch_op:
        batch_op.create_index("ix_file_locks_feature_id", ["feature_id"], unique=False)
        batch_op.create_index("ix_file_locks_owner", ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("file_locks", schema=None) as batch_op:
        batch_op.drop_index("ix_file_locks_owner")
        batch_op.drop_index("ix_file_locks_feature_id")

    op.drop_table("file_locks")
    with op.batch_alter_table("feature_dependencies", schema=None) as batch_op:
        batch_op.drop_index("ix_feature_dependencies_depends_on_id")

    op.drop_table("feature_dependencies")
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_runs_feature_id")
        batch_op.drop_index("ix_agent_runs_agent_id")

    op.drop_table("agent_runs")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_index("ix_features_owner")
        batch_op.drop_index("ix_features_lease")
        batch_op.drop_index("ix_features_ready")

    op.drop_table("features")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_feature_id")

    op.drop_table("events")
