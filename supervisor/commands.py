"""Day-to-day commands (import, status, retry): wiring between settings, the queue and the display."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from api.database import Database
from api.errors import InputError
from api.features_file import load_features_file
from api.queue import FeatureQueue, ImportReport
from supervisor import display
from supervisor.config import Settings


def _sqlite_missing(db: Database) -> bool:
    return db.is_sqlite and not Path(db.url.database).exists()


def open_queue(settings: Settings, *, must_exist: bool = False) -> FeatureQueue:
    """Open (creating or upgrading) the project's database. Raises DatabaseError / InputError."""
    db = Database(settings.database_url)
    if must_exist and _sqlite_missing(db):
        raise InputError(
            f"no database at {db.url.database}: run `agent-manager import --project-dir {settings.project_dir}` first"
        )
    db.migrate()
    return FeatureQueue(db, project_dir=settings.project_dir, lease_seconds=settings.lease_seconds)


def import_features(settings: Settings) -> ImportReport:
    """Load the features file into the queue; nothing is written if any of it is invalid."""
    if _sqlite_missing(Database(settings.database_url)):
        # Validate before the first open so a bad file never leaves an empty database behind.
        load_features_file(settings.features_file)
    queue = open_queue(settings)
    # Dependencies may name features imported earlier from another file.
    specs = load_features_file(settings.features_file, known_edges=queue.dependency_map())
    return queue.import_specs(specs)


def cmd_import(settings: Settings) -> int:
    report = import_features(settings)
    display.print_import(report, settings.features_file)
    return 0


def cmd_status(settings: Settings, as_json: bool) -> int:
    report = open_queue(settings, must_exist=True).status_report()
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        display.print_status(report)
    return 0


def cmd_retry(settings: Settings, feature_id: int) -> int:
    queue = open_queue(settings, must_exist=True)
    queue.retry(feature_id)
    print(f"feature #{feature_id} is pending again with a fresh attempt budget")
    return 0


def cmd_run(settings: Settings) -> int:
    raise InputError("running agents is not in this build yet; `import` and `status` are")
