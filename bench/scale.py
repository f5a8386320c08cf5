"""Benchmark 6: scale, a 10,000-feature project on SQLite and PostgreSQL.

* import: ``agent_manager.py import`` of a 10,000-feature features.json (a layered DAG, 100
  layers of 100, each feature depending on 1-3 of the layer above), end to end as a user runs
  it, and FeatureQueue.import_specs alone;
* status: ``agent_manager.py status`` (the table, piped) and ``status --json`` on those 10,000,
  and FeatureQueue.status_report alone;
* claims with a backlog: claim(1) + release(passing) latency with 100 (full run only), 1,000
  and 10,000 features pending, on a copy of the database taken right after the import
  ("fresh", no planner statistics yet) and on another copy after ANALYZE (what PostgreSQL's
  autovacuum does within a minute of a large import), with the plan the claim's query runs
  with: it must be an index range scan, not a scan of the features table per claim.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, fresh_pg_url, ms, parse_args, percentiles, postgres, print_table, write_results

from api import statements
from api.database import Database
from api.driver import Tx
from api.features_file import FeatureSpec
from api.models import utcnow
from api.queue import FeatureQueue

FEATURES = 10_000
LAYER = 100


def specs(n: int) -> list[FeatureSpec]:
    rng = random.Random(n)
    out = []
    for i in range(n):
        layer = i // LAYER
        above = range((layer - 1) * LAYER, layer * LAYER)
        deps = sorted(rng.sample(above, rng.randint(1, 3))) if layer else []
        out.append(
            FeatureSpec(
                name=f"feature-{i:05d}",
                description=f"Build part {i} of the product.",
                category=rng.choice(("backend", "frontend", "testing", "documentation")),
                priority=rng.randint(0, 5),
                depends_on=tuple(f"feature-{d:05d}" for d in deps),
                steps=("it works", "it is tested"),
            )
        )
    return out


def as_json(features: list[FeatureSpec]) -> str:
    return json.dumps(
        [
            {
                "name": s.name,
                "description": s.description,
                "category": s.category,
                "priority": s.priority,
                "depends_on": list(s.depends_on),
                "steps": list(s.steps),
            }
            for s in features
        ]
    )


@dataclass
class Backend:
    name: str
    new_url: Callable[[], str]  # an empty database
    copy: Callable[[str], str]  # a copy of a database no one is connected to


def sqlite_backend(root: Path) -> Backend:
    count = iter(range(1_000_000))

    def new_url() -> str:
        return f"sqlite:///{root / f'db-{next(count)}.db'}"

    def copy(url: str) -> str:
        target = new_url()
        shutil.copy(url.removeprefix("sqlite:///"), target.removeprefix("sqlite:///"))
        return target

    return Backend("sqlite", new_url, copy)


def postgres_backend(pg) -> Backend:
    import psycopg

    def copy(url: str) -> str:
        name = "copy_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{url.rsplit("/", 1)[1]}"')
        return pg.url(name)

    return Backend("postgresql", lambda: fresh_pg_url(pg), copy)


# -- import and status ---------------------------------------------------------------------------


def cli(project: Path, url: str, *args: str) -> float:
    """Seconds for one agent_manager.py command, end to end (interpreter start-up included)."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "agent_manager.py"),
            *args,
            "--project-dir",
            str(project),
            "--database-url",
            url,
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"agent_manager.py {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def import_and_status(backend: Backend, project: Path, features: list[FeatureSpec], api: bool) -> tuple[dict, str]:
    """Times the CLI's import and status, and (``api``) import_specs alone; returns them and an imported database."""
    (project / "features.json").write_text(as_json(features))
    url = backend.new_url()
    row = {"backend": backend.name, "features": len(features)}
    row["cli_import_s"] = cli(project, url, "import")
    row["cli_status_s"] = cli(project, url, "status")
    row["cli_status_json_s"] = cli(project, url, "status", "--json")
    db = Database(url)
    started = time.perf_counter()
    report = FeatureQueue(db).status_report()
    row["status_report_s"] = time.perf_counter() - started
    db.dispose()
    if len(report.features) != len(features):
        raise RuntimeError(f"imported {len(report.features)} of {len(features)} features")
    if not api:
        return row | {"api_import_s": None}, url
    api_url = backend.new_url()
    db = Database(api_url)
    db.migrate()
    started = time.perf_counter()
    FeatureQueue(db).import_specs(features)
    row["api_import_s"] = time.perf_counter() - started
    db.dispose()
    return row, api_url


# -- claims with a backlog ---------------------------------------------------------------------------


def claim_plan(db: Database, queue: FeatureQueue) -> str:
    """The plan the database makes for the claim statement (one ready feature), as the driver
    sends it (api.driver). Its ready query goes with its values in the SQL, so a generic plan
    of the prepared statement (psycopg prepares after five runs) reads it as this one does."""
    driver = db.driver
    if db.is_sqlite:
        statement = statements.claim_ready_statement(1, skip_locked=False)
    else:
        statement = statements.claim_ready_logged_statement(1)
    now = utcnow()
    sql, values = driver.sql_and_values(driver.prepared(statement), statements.claim_params((), "plan", now, now))
    explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "

    def plan(tx: Tx) -> str:
        tx.cursor.execute(explain + sql, values)  # a plan only: nothing is claimed
        return "\n".join(str(row[-1]) if db.is_sqlite else str(row[0]) for row in tx.cursor.fetchall())

    return db.run_on_driver(plan)


def uses_ready_index(plan: str) -> bool:
    """The plan reads the ready index and scans no copy of the features table from end to end."""
    steps = [line.strip().lstrip("->").strip() for line in plan.splitlines()]
    full_scans = [step for step in steps if step.startswith(("SCAN features", "Seq Scan on features"))]
    return "ix_features_ready" in plan and not full_scans


def claim_latency(url: str, cycles: int, analyze: bool) -> dict:
    """Plan and latencies of ``cycles`` claim(1) + release(passing) on the database at ``url``."""
    db = Database(url)
    if analyze:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not db.is_sqlite:
                # Autovacuum analyzes again once about a tenth of the rows changed (a few hundred
                # claims here); the measurement is of the plan chosen from the first statistics.
                conn.exec_driver_sql("ALTER TABLE features SET (autovacuum_enabled = off)")
            conn.exec_driver_sql("ANALYZE")
    queue = FeatureQueue(db, lease_seconds=600)
    plan = claim_plan(db, queue)
    claims, releases = [], []
    for _ in range(cycles):
        t0 = time.perf_counter()
        claim = queue.claim(1, "bench")[0]
        t1 = time.perf_counter()
        queue.release(claim.id, "bench", claim.lease_token, "passing")
        claims.append(t1 - t0)
        releases.append(time.perf_counter() - t1)
    db.dispose()
    pc = percentiles(claims)
    return {
        "plan": plan,
        "index_scan": uses_ready_index(plan),
        "claim_p50_ms": ms(pc["p50"]),
        "claim_p99_ms": ms(pc["p99"]),
        "release_p50_ms": ms(percentiles(releases)["p50"]),
    }


def backlog_rows(backend: Backend, templates: dict[int, str], cycles: int) -> list[dict]:
    rows = []
    for backlog, template in templates.items():
        # At most half the backlog, so it stays about the size it is named after.
        n = min(cycles, backlog // 2)
        row = {"backend": backend.name, "backlog": backlog, "cycles": n}
        for state, analyze in (("fresh", False), ("analyzed", True)):
            row[state] = claim_latency(backend.copy(template), n, analyze)
        row["met"] = row["fresh"]["index_scan"] and row["analyzed"]["index_scan"]
        rows.append(row)
    return rows


def measure(
    backend: Backend, project: Path, backlogs: tuple[int, ...], cycles: int, quick: bool
) -> tuple[dict, list[dict]]:
    bulk, imported = import_and_status(backend, project, specs(FEATURES), api=not quick)
    templates = {}
    for n in backlogs:
        if n == FEATURES:
            templates[n] = imported
            continue
        url = backend.new_url()
        db = Database(url)
        db.migrate()
        FeatureQueue(db).import_specs(specs(n))
        db.dispose()
        templates[n] = url
    return bulk, backlog_rows(backend, templates, cycles)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    backlogs = (1_000, FEATURES) if args.quick else (100, 1_000, FEATURES)
    cycles = 200 if args.quick else 1_000
    bulk, claims = [], []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        row, rows = measure(sqlite_backend(Path(tmp)), project, backlogs, cycles, args.quick)
        bulk.append(row)
        claims += rows
        with postgres() as pg:
            if pg is not None:
                row, rows = measure(postgres_backend(pg), project, backlogs, cycles, args.quick)
                bulk.append(row)
                claims += rows
    print_table(
        f"Scale: {FEATURES:,} features (seconds)",
        ["backend", "CLI import", "import_specs", "CLI status (table)", "CLI status --json", "status_report"],
        [
            [
                r["backend"],
                r["cli_import_s"],
                r["api_import_s"],
                r["cli_status_s"],
                r["cli_status_json_s"],
                r["status_report_s"],
            ]
            for r in bulk
        ],
        note="CLI columns are whole commands as a user runs them (interpreter start-up and migration check included); "
        "import_specs is the queue's import alone (full run only).",
    )
    print_table(
        "Claim latency with a backlog: claim(1) + release(passing) cycles (ms)",
        [
            "backend",
            "pending",
            "cycles",
            "fresh claim p50",
            "fresh claim p99",
            "fresh plan",
            "analyzed claim p50",
            "analyzed claim p99",
            "analyzed plan",
            "release p50",
        ],
        [
            [
                r["backend"],
                r["backlog"],
                r["cycles"],
                r["fresh"]["claim_p50_ms"],
                r["fresh"]["claim_p99_ms"],
                "index" if r["fresh"]["index_scan"] else "TABLE SCAN",
                r["analyzed"]["claim_p50_ms"],
                r["analyzed"]["claim_p99_ms"],
                "index" if r["analyzed"]["index_scan"] else "TABLE SCAN",
                r["analyzed"]["release_p50_ms"],
            ]
            for r in claims
        ],
        note="fresh = a copy of the database right after the import, no planner statistics; analyzed = another copy "
        "after ANALYZE, as PostgreSQL's autovacuum does within a minute of the import (and again after about a tenth "
        "of the rows changed; held off during the measurement). index: the plan the claim runs with reads "
        "ix_features_ready (status, unmet_deps, claim_order, id) and scans no copy of the features table.",
    )
    results = {"features": FEATURES, "bulk": bulk, "claims": claims, "met": all(r["met"] for r in claims)}
    write_results("scale", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
