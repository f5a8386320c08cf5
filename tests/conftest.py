"""Shared fixtures: a project directory, real SQLite files and a real PostgreSQL server started for the session.

The helpers behind them, and the ones tests import, live in tests/support.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.database import Database
from api.queue import FeatureQueue
from tests.support.browser import browser  # noqa: F401 - a fixture for the dashboard's browser tests
from tests.support.harness import make_run  # noqa: F401 - a fixture for the end-to-end tests
from tests.support.pg import PostgresServer, find_pg_bin

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if IN_CI:
            pytest.fail(message + "; under CI=true the PostgreSQL tests must run")
        pytest.skip(message)
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        server.cleanup()
        if IN_CI:
            pytest.fail(f"could not start PostgreSQL: {exc}")
        pytest.skip(f"could not start PostgreSQL: {exc}")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project directory; tests that need a features.json write one (tests.support.projects)."""
    root = tmp_path / "project"
    root.mkdir()
    return root


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The one backend parametrisation: each test depending on it runs on SQLite and on PostgreSQL."""
    return request.param


@pytest.fixture
def db_url(backend_name: str, request: pytest.FixtureRequest) -> str:
    """A fresh database on each backend: a SQLite file, or a new database on the test PostgreSQL server."""
    if backend_name == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def queue(db_url: str, project: Path) -> Iterator[FeatureQueue]:
    """A migrated queue on ``db_url`` for the ``project`` directory."""
    db = Database(db_url)
    db.migrate()
    yield FeatureQueue(db, project_dir=project, lease_seconds=30)
    db.dispose()
