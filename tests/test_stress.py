"""Many OS processes draining one 300-feature DAG through the real queue, on SQLite and PostgreSQL.

The same harness runs a deliberately naive claim (read the ready set, then update without a
status guard) as a control: it must be caught double-claiming, which shows the harness can see
the failure the real queue is supposed to prevent.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FEATURES = 300
LAYER_WIDTH = 20
DAG_SEED = 20_240_611
START_TIMEOUT_S = 45.0  # spawning 8 interpreters on a loaded 2-core CI box
DRAIN_DEADLINE_S = 40.0
NAIVE_DEADLINE_S = 15.0

_READY_SQL = text(
    """
    SELECT f.id FROM features f
    WHERE f.status = 'pending'
      AND NOT EXISTS (
        SELECT 1 FROM feature_dependencies d JOIN features p ON p.id = d.depends_on_id
        WHERE d.feature_id = f.id AND p.status <> 'passing')
    ORDER BY f.claim_order, f.id
    LIMIT :k
    """
)
_REMAINING_SQL = text("SELECT count(*) FROM features WHERE status <> 'passing'")


def dag_specs(n: int = FEATURES, seed: int = DAG_SEED) -> list[FeatureSpec]:
    """Layers of LAYER_WIDTH; each feature has 0-4 dependencies, mostly on the previous layer."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        layer = i // LAYER_WIDTH
        deps: set[int] = set()
        if layer > 0:
            previous = range((layer - 1) * LAYER_WIDTH, layer * LAYER_WIDTH)
            for _ in range(rng.randint(0, 4)):
                deps.add(rng.choice(previous) if rng.random() < 0.6 else rng.randrange(i))
        specs.append(
            FeatureSpec(
                name=f"f{i:03d}",
                category=rng.choice(["backend", "frontend", "testing"]),
                priority=rng.randint(-5, 5),
                depends_on=tuple(f"f{d:03d}" for d in sorted(deps)),
            )
        )
    return specs


# -- the worker (module level so the "spawn" context can import it) ---------------------


def _naive_claim(db: Database, k: int, owner: str) -> list[tuple[int, None]]:
    # The bug under test: the read and the write are separate transactions and the write
    # does not re-check the status, so two workers that read the same row both "win".
    ids = db.run(lambda s: list(s.execute(_READY_SQL, {"k": k}).scalars()), read_only=True)
    if not ids:
        return []
    time.sleep(0.001)  # stands in for the application deciding what to do with the rows
    with db.engine.begin() as conn:
        for fid in ids:
            conn.execute(
                text("UPDATE features SET status = 'claimed', owner = :o WHERE id = :i"), {"o": owner, "i": fid}
            )
    return [(fid, None) for fid in ids]


def _naive_release(db: Database, fid: int) -> tuple[bool, str]:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE features SET status = 'passing', owner = NULL WHERE id = :i"), {"i": fid})
    return True, "passing"


def _drain(db: Database, queue: FeatureQueue, owner: str, job: dict[str, Any], barrier: Any, out: Path) -> None:
    record: dict[str, Any] = {"owner": owner, "claims": [], "releases": [], "error": None, "timed_out": False}
    rng = random.Random(owner)
    try:
        db.run(lambda s: s.execute(_REMAINING_SQL).scalar(), read_only=True)  # connect before the start line
        barrier.wait(timeout=START_TIMEOUT_S)
        deadline = time.time() + job["deadline_s"]
        idle = 0
        while True:
            if time.time() > deadline:
                record["timed_out"] = True
                break
            k = rng.randint(1, 3)
            if job["strategy"] == "naive":
                claimed = _naive_claim(db, k, owner)
            else:
                claimed = [(c.id, c.lease_token) for c in queue.claim(k, owner)]
            record["claims"].extend(claimed)
            for fid, token in claimed:
                if job["strategy"] == "naive":
                    applied, status = _naive_release(db, fid)
                else:
                    result = queue.release(fid, owner, token, "passing")
                    applied, status = result.applied, result.status
                record["releases"].append((fid, token, applied, status))
            if claimed:
                idle = 0
                continue
            if db.run(lambda s: s.execute(_REMAINING_SQL).scalar(), read_only=True) == 0:
                break
            # Others hold the rest; back off a little so idle pollers do not starve them of CPU.
            idle += 1
            time.sleep(min(0.001 * idle, 0.02))
    except BaseException:  # noqa: BLE001 - reported to the parent through the record
        record["error"] = traceback.format_exc()
    finally:
        out.joinpath(f"{owner}.json").write_text(json.dumps(record))


def stress_worker(job: dict[str, Any], barrier: Any) -> None:
    """One OS process: ``job["threads"]`` threads, each claiming on its own pooled connection."""
    out = Path(job["out_dir"])
    db = Database(job["url"], pool_size=job["threads"] + 1)
    queue = FeatureQueue(db, lease_seconds=600)
    threads = [
        threading.Thread(
            target=_drain, args=(db, queue, f"p{job['process']}t{t}", job, barrier, out), name=f"drain-{t}"
        )
        for t in range(job["threads"])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db.dispose()


# -- the harness --------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    processes: int
    threads: int


@dataclass
class Run:
    records: list[dict[str, Any]]
    seconds: float

    @property
    def claims(self) -> Counter[int]:
        return Counter(fid for r in self.records for fid, _ in r["claims"])


# (worker processes, threads in each) per backend
SHAPES = {"sqlite": (8, 1), "postgresql": (8, 4)}


@pytest.fixture
def backend(backend_name: str, db_url: str) -> Backend:
    processes, threads = SHAPES[backend_name]
    return Backend(backend_name, db_url, processes, threads)


@pytest.fixture
def loaded(backend: Backend) -> FeatureQueue:
    db = Database(backend.url)
    db.migrate()
    queue = FeatureQueue(db)
    queue.import_specs(dag_specs())
    yield queue
    db.dispose()


def run_workers(backend: Backend, strategy: str, out_dir: Path, deadline_s: float) -> Run:
    out_dir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(backend.processes * backend.threads + 1)
    procs = [
        ctx.Process(
            target=stress_worker,
            args=(
                {
                    "url": backend.url,
                    "strategy": strategy,
                    "process": p,
                    "threads": backend.threads,
                    "out_dir": str(out_dir),
                    "deadline_s": deadline_s,
                },
                barrier,
            ),
            name=f"stress-{p}",
        )
        for p in range(backend.processes)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=START_TIMEOUT_S)
        started = time.monotonic()
        for proc in procs:
            proc.join(timeout=deadline_s + 15)
        seconds = time.monotonic() - started
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    records = [json.loads(f.read_text()) for f in sorted(out_dir.glob("*.json"))]
    assert len(records) == backend.processes * backend.threads
    return Run(records, seconds)


# -- tests ----------------------------------------------------------------------------------


def test_concurrent_workers_claim_every_feature_exactly_once_and_only_after_its_dependencies(
    backend: Backend, loaded: FeatureQueue, tmp_path: Path
) -> None:
    run = run_workers(backend, "queue", tmp_path / "claims", DRAIN_DEADLINE_S)
    print(f"\n{backend.name}: {backend.processes}x{backend.threads} workers drained {FEATURES} in {run.seconds:.2f}s")

    errors = [r["error"] for r in run.records if r["error"]]
    assert not errors, errors[0]
    assert not [r["owner"] for r in run.records if r["timed_out"]]

    report = loaded.status_report()
    ids = {f.name: f.id for f in report.features}
    assert len(ids) == FEATURES
    assert report.counts == {"passing": FEATURES}

    doubles = {fid: n for fid, n in run.claims.items() if n > 1}
    assert not doubles, f"claimed more than once: {doubles}"
    assert set(run.claims) == set(ids.values()), "some features were never claimed"
    releases = [rel for r in run.records for rel in r["releases"]]
    assert len(releases) == FEATURES
    assert all(applied and status == "passing" for _, _, applied, status in releases), releases

    claimed_by = {fid: r["owner"] for r in run.records for fid, _ in r["claims"]}
    claim_events: dict[int, list[tuple[int, str]]] = defaultdict(list)
    passed_at: dict[int, list[int]] = defaultdict(list)
    for event_id, kind, fid, owner in loaded.events():
        if kind == "claimed":
            claim_events[fid].append((event_id, owner))
        elif kind == "released:passing":
            passed_at[fid].append(event_id)
    assert {fid: len(v) for fid, v in claim_events.items()} == dict.fromkeys(ids.values(), 1)
    assert {fid: len(v) for fid, v in passed_at.items()} == dict.fromkeys(ids.values(), 1)
    early = []
    for feature in report.features:
        ((claimed_event, owner),) = claim_events[feature.id]
        assert owner == claimed_by[feature.id]
        early.extend((feature.name, dep) for dep in feature.depends_on if passed_at[ids[dep]][0] > claimed_event)
    assert not early, f"claimed before a dependency passed: {early}"


def test_harness_catches_double_claims_of_a_naive_read_then_update_claim(
    backend: Backend, loaded: FeatureQueue, tmp_path: Path
) -> None:
    run = run_workers(backend, "naive", tmp_path / "claims", NAIVE_DEADLINE_S)
    errors = [r["error"] for r in run.records if r["error"]]
    assert not errors, errors[0]
    doubles = {fid: n for fid, n in run.claims.items() if n > 1}
    extra = sum(n - 1 for n in doubles.values())
    print(
        f"\n{backend.name}: naive claim double-claimed {len(doubles)} of {len(run.claims)} features "
        f"({extra} extra claims) in {run.seconds:.2f}s"
    )
    assert doubles, "the naive claim never double-claimed: the harness cannot see the failure it guards"
