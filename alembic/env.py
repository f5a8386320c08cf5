"""Alembic environment: used by Database.migrate() (shared connection) and by the alembic CLI."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from api.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    from api.database import Database

    url = os.environ.get("AGENT_MANAGER_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set AGENT_MANAGER_DATABASE_URL to the database to migrate")
    db = Database(url)
    with db.engine.begin() as conn:
        _run(conn)
