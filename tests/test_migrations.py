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


def test_the_revision_known_without_alembic_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from api.database import ALEMBIC_DIR, HEAD_REVISION

    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    # Every command opens the database without alembic when it is at HEAD_REVISION: a new
    # migration must move it, or databases would never be upgraded to it.
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


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


def _upgrade_to(db: Database, revision: str) -> None:
    from alembic.config import Config

    from alembic import command
    from api.database import ALEMBIC_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_upgrading_from_the_first_revision_keeps_every_feature_run_lock_and_event(db_url: str, tmp_path) -> None:
    db = Database(db_url)
    _upgrade_to(db, "0001")
    now = "2026-11-20 10:00:00"
    later = "2099-01-01 00:00:00"
    with db.engine.begin() as conn:
        rows = [
            # name, status, attempts, unmet, owner, agent, token, expires, notes, cost
            ("setup", "passing", 1, 0, None, None, 1, None, "built setup", 0.5),
            ("api", "claimed", 0, 0, "sup-1", "sup-1/2/3", 3, later, "", 0.0),
            ("ui", "pending", 1, 1, None, None, 2, None, "verify failed once", 0.25),
            ("broken", "failed", 3, 0, None, None, 3, None, "gave up", 1.0),
            ("docs", "pending", 0, 1, None, None, 0, None, "", 0.0),
            ("asked", "needs_input", 0, 0, None, None, 1, None, "which database?", 0.0),
        ]
        values = ", ".join(["?" if db.is_sqlite else "%s"] * 19)
        for i, (name, status, attempts, unmet, owner, agent, token, expires, notes, cost) in enumerate(rows, 1):
            conn.exec_driver_sql(
                "INSERT INTO features (id, name, description, category, priority, steps, status, attempts, unmet_deps,"
                " critical_path, claim_order, owner, agent_id, lease_token, lease_expires_at, notes, cost_usd,"
                f" created_at, updated_at) VALUES ({values})",
                (i, name, f"the {name}", "backend", 0, '["works"]', status, attempts, unmet, 1, i, owner, agent,
                 token, expires, notes, cost, now, now),
            )  # fmt: skip
        mark = "?" if db.is_sqlite else "%s"
        conn.exec_driver_sql(
            f"INSERT INTO feature_dependencies (feature_id, depends_on_id) VALUES ({mark}, {mark})", (3, 2)
        )
        conn.exec_driver_sql(
            f"INSERT INTO feature_dependencies (feature_id, depends_on_id) VALUES ({mark}, {mark})", (5, 4)
        )
        conn.exec_driver_sql(
            f"INSERT INTO file_locks (path, owner, feature_id, acquired_at) VALUES ({mark}, {mark}, {mark}, {mark})",
            ("src/api.py", "sup-1/2/3", 2, now),
        )
    before = _snapshot(db)

    db.migrate()

    assert _snapshot(db) == before
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    # The upgraded queue carries on where the old one stopped.
    from api.queue import FeatureQueue

    queue = FeatureQueue(db, project_dir=tmp_path)
    report = {f.name: f.status for f in queue.status_report().features}
    assert report == {
        "setup": "passing", "api": "claimed", "ui": "pending", "broken": "failed", "docs": "blocked",
        "asked": "needs_input",
    }  # fmt: skip
    assert queue.release(2, "sup-1", 3, "passing", "done").status == "passing"
    assert [c.name for c in queue.claim(5, "sup-2")] == ["ui"]
    assert queue.file_locks() == []  # freed with api's release
    db.dispose()


def _snapshot(db: Database) -> dict[str, list[tuple]]:
    tables = ("features", "feature_dependencies", "file_locks", "agent_runs", "events")
    columns = {
        "features": "id, name, description, status, attempts, unmet_deps, owner, agent_id, lease_token, notes,"
        " cost_usd",
        "feature_dependencies": "feature_id, depends_on_id",
        "file_locks": "path, owner, feature_id",
        "agent_runs": "id",
        "events": "id",
    }
    with db.engine.connect() as conn:
        return {t: [tuple(r) for r in conn.exec_driver_sql(f"SELECT {columns[t]} FROM {t} ORDER BY 1")] for t in tables}
