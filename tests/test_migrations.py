"""The schema comes from alembic and matches the models, on both backends."""

from __future__ import annotations

import multiprocessing

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from api.database import Database
from api.models import Base


def test_upgrade_head_on_an_empty_database_equals_the_models(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert MigrationContext.configure(conn).get_current_revision() is not None
    db.dispose()


def _migrate(url: str) -> None:
    Database(url).migrate()


@pytest.mark.slow
def test_concurrent_first_starts_do_not_race_the_migration(db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate, args=(db_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    db = Database(db_url)
    assert {"features", "feature_dependencies", "file_locks", "agent_runs", "events"} <= set(
        inspect(db.engine).get_table_names()
    )
    db.dispose()
