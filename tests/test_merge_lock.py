"""The merge lock (one merge at a time per integration branch) and the run columns git integration
needs, on SQLite and on PostgreSQL (fixture ``db_url``), the lock also across OS processes."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
import traceback
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from api.database import Database
from api.errors import InputError, NotFoundError
from api.features_file import FeatureSpec
from api.models import Event, MergeLock
from api.queue import FeatureQueue
from api.records import ClaimedFeature, Status

LONG = 600.0  # seconds: a lock that does not expire during a test


def expire_merge_locks(queue: FeatureQueue) -> None:
    """Move every merge lock's expiry into the past, as if its holder stopped renewing it long ago."""
    queue.db.run(lambda s: s.execute(update(MergeLock).values(expires_at=datetime(2000, 1, 1))))


def merge_locked_events(queue: FeatureQueue) -> list[str | None]:
    return [owner for _, kind, _, owner in queue.events() if kind == "merge_locked"]


def claim_one(queue: FeatureQueue, name: str, owner: str = "sup") -> ClaimedFeature:
    queue.import_specs([FeatureSpec(name=name)])
    (claim,) = queue.claim(1, owner)
    assert claim.name == name
    return claim


# -- the lock ----------------------------------------------------------------------------


def test_the_merge_lock_excludes_another_owner_and_is_reentrant_for_its_own(queue: FeatureQueue) -> None:
    assert queue.merge_lock_holder("main") is None
    assert queue.take_merge_lock("main", "sup-a", LONG)
    holder = queue.merge_lock_holder("main")
    assert holder is not None and holder[0] == "sup-a"

    assert not queue.take_merge_lock("main", "sup-b", LONG)
    assert queue.take_merge_lock("main", "sup-a", LONG)  # re-entrant: renewed, still since the first take
    assert queue.merge_lock_holder("main") == holder
    assert queue.take_merge_lock("release", "sup-b", LONG)  # one lock per branch

    queue.drop_merge_lock("main", "sup-b")  # not its lock: nothing happens
    assert queue.merge_lock_holder("main") == holder
    queue.drop_merge_lock("main", "sup-a")
    assert queue.merge_lock_holder("main") is None
    queue.drop_merge_lock("main", "sup-a")  # dropping twice is no error
    assert queue.take_merge_lock("main", "sup-b", LONG)
    # Logged when a lock changes hands, not on a renewal.
    assert merge_locked_events(queue) == ["sup-a", "sup-b", "sup-b"]


def test_an_expired_merge_lock_is_taken_over_and_its_old_owner_can_no_longer_renew_it(queue: FeatureQueue) -> None:
    assert queue.take_merge_lock("main", "sup-a", 0.001)
    assert queue.renew_merge_lock("main", "sup-a", LONG)
    assert not queue.take_merge_lock("main", "sup-b", LONG)
    expire_merge_locks(queue)
    assert queue.merge_lock_holder("main") is None  # expired: shown as free

    assert queue.take_merge_lock("main", "sup-b", LONG)
    holder = queue.merge_lock_holder("main")
    assert holder is not None and holder[0] == "sup-b"
    assert not queue.renew_merge_lock("main", "sup-a", LONG)  # lost
    assert not queue.take_merge_lock("main", "sup-a", LONG)
    queue.drop_merge_lock("main", "sup-a")
    assert queue.renew_merge_lock("main", "sup-b", LONG)
    assert queue.merge_lock_holder("main") == holder


def test_renewing_a_dropped_lock_fails(queue: FeatureQueue) -> None:
    assert not queue.renew_merge_lock("main", "sup-a", LONG)
    assert queue.take_merge_lock("main", "sup-a", LONG)
    queue.drop_merge_lock("main", "sup-a")
    assert not queue.renew_merge_lock("main", "sup-a", LONG)
    assert queue.merge_lock_holder("main") is None


# -- runs: commit, reopen, written paths ---------------------------------------------------


def test_set_run_commit_is_stored_on_the_run(queue: FeatureQueue) -> None:
    claim = claim_one(queue, "a")
    run = queue.start_run(claim, "sonnet")
    assert run.commit_sha is None
    sha = "0123456789abcdef0123456789abcdef01234567"
    queue.set_run_commit(run.id, sha)
    assert queue.run(run.id).commit_sha == sha
    assert [r.commit_sha for r in queue.runs(claim.id)] == [sha]


def test_reopen_run_clears_the_report_of_a_running_attempt_and_refuses_an_ended_one(queue: FeatureQueue) -> None:
    claim = claim_one(queue, "a")
    run = queue.start_run(claim, "sonnet")
    assert queue.report(claim.agent_id, claim.id, "passing", "built it") == "reported"
    reported = queue.run(run.id)
    assert (reported.reported_status, reported.reported_notes) == (Status.PASSING, "built it")

    queue.reopen_run(run.id)
    reopened = queue.run(run.id)
    assert (reopened.reported_status, reopened.reported_notes) == (None, None)
    assert reopened.ended_at is None
    # The same session reports again within the attempt.
    assert queue.report(claim.agent_id, claim.id, "passing", "merged it") == "reported"
    assert queue.run(run.id).reported_notes == "merged it"

    queue.finish_run(run.id, outcome="completed")
    with pytest.raises(InputError):
        queue.reopen_run(run.id)
    assert queue.run(run.id).reported_notes == "merged it"
    with pytest.raises(NotFoundError):
        queue.reopen_run(run.id + 1000)


def test_written_paths_are_the_runs_own_locks_since_it_started(queue: FeatureQueue) -> None:
    queue.import_specs([FeatureSpec(name="a"), FeatureSpec(name="b")])
    a, b = sorted(queue.claim(2, "sup"), key=lambda c: c.name)
    queue.claim_file("early.py", a.agent_id, a.id)
    queue.release_file("early.py", a.agent_id)
    # Locked well before the run started (by the clock, not by how fast this test runs).
    an_hour = timedelta(hours=1)
    queue.db.run(lambda s: s.execute(update(Event).values(ts=Event.ts - an_hour)))
    run = queue.start_run(a, "sonnet")
    assert queue.written_paths(run.id) == []

    for path in ("src/z.py", "./src/a.py", "README.md"):
        assert queue.claim_file(path, a.agent_id, a.id).success
    assert queue.release_file("src/a.py", a.agent_id).success
    assert queue.claim_file("src/a.py", a.agent_id, a.id).success  # locked twice, listed once
    assert queue.claim_file("other.py", b.agent_id, b.id).success  # another agent's
    assert queue.claim_file("loose.py", a.agent_id).success  # not for the feature

    assert queue.written_paths(run.id) == ["README.md", "src/a.py", "src/z.py"]
    with pytest.raises(NotFoundError):
        queue.written_paths(run.id + 1000)


# -- across processes --------------------------------------------------------------------

PROCESSES = 4
ROUNDS = 25
START_TIMEOUT_S = 45.0  # spawning interpreters on a loaded 2-core box


def lock_worker(url: str, index: int, counter: str, out: str, barrier: Any) -> None:
    """One OS process: ROUNDS critical sections under the merge lock, each a bare read-modify-write
    of the counter file (it loses updates unless the lock excludes every other process)."""
    record: dict[str, Any] = {"sections": [], "error": None}
    db = Database(url)
    queue = FeatureQueue(db)
    owner = f"sup-{index}-{os.getpid()}"
    scratch = Path(f"{counter}.{index}")
    try:
        queue.merge_lock_holder("main")  # connect before the start line
        barrier.wait(timeout=START_TIMEOUT_S)
        for _ in range(ROUNDS):
            while not queue.take_merge_lock("main", owner, LONG):
                time.sleep(0.001)  # back off, so the holder gets the database to drop the lock
            start = time.monotonic_ns()  # one clock for every process on the machine
            value = int(Path(counter).read_text())
            # Replaced whole, so a reader never sees it half written: without the lock the
            # failure is a lost update, not a torn read.
            scratch.write_text(str(value + 1))
            os.replace(scratch, counter)
            end = time.monotonic_ns()
            record["sections"].append((os.getpid(), start, end))
            queue.drop_merge_lock("main", owner)
    except BaseException:  # noqa: BLE001 - reported to the parent through the record
        record["error"] = traceback.format_exc()
    finally:
        Path(out).write_text(json.dumps(record))
        db.dispose()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_merge_lock_admits_one_process_at_a_time(queue: FeatureQueue, db_url: str, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    outs = [tmp_path / f"out-{i}.json" for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=lock_worker, args=(db_url, i, str(counter), str(outs[i]), barrier), name=f"merger-{i}")
        for i in range(PROCESSES)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=START_TIMEOUT_S)
        for proc in procs:
            proc.join(60)
        assert [p.exitcode for p in procs] == [0] * PROCESSES
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    records = [json.loads(out.read_text()) for out in outs]
    errors = [r["error"] for r in records if r["error"]]
    assert not errors, errors[0]
    sections = sorted((start, end, pid) for r in records for pid, start, end in r["sections"])
    assert len(sections) == PROCESSES * ROUNDS
    overlaps = [(a, b) for a, b in itertools.pairwise(sections) if b[0] < a[1]]
    assert not overlaps, f"{len(overlaps)} critical sections overlapped, e.g. {overlaps[0]}"
    assert int(counter.read_text()) == PROCESSES * ROUNDS
    assert queue.merge_lock_holder("main") is None
