"""notify on events: PostgreSQL wakes waiting supervisors from a trigger, not a statement per verb

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# api.changes.QUEUE_CHANNEL, spelled out: a migration must not change when the code does.
_CHANNEL = "agent_manager_queue"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's watchers poll the newest event id
    # Once per statement that appends events, and only when it appended some: a statement-level
    # trigger also fires for an INSERT of no rows (a claim that found nothing), and a notification
    # then would wake every idle supervisor into another claim. PostgreSQL folds a transaction's
    # identical notifications into one, delivered on commit.
    op.execute(
        "CREATE OR REPLACE FUNCTION agent_manager_notify_queue() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF EXISTS (SELECT 1 FROM appended) THEN PERFORM pg_notify('{_CHANNEL}', ''); END IF; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER events_notify_queue AFTER INSERT ON events REFERENCING NEW TABLE AS appended "
        "FOR EACH STATEMENT EXECUTE FUNCTION agent_manager_notify_queue()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS events_notify_queue ON events")
    op.execute("DROP FUNCTION IF EXISTS agent_manager_notify_queue()")
