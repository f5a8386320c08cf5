"""The queue contract, run on SQLite and on PostgreSQL (fixture ``db_url``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from api.errors import FeaturesFileError, InputError, LeaseLostError, PathOutsideProjectError
from api.features_file import FeatureSpec
from api.models import Feature
from api.queue import FeatureQueue
from api.records import Status, Verdict


def spec(name: str, *deps: str, **kw) -> FeatureSpec:
    return FeatureSpec(name=name, depends_on=tuple(deps), **kw)


def names(claimed) -> list[str]:
    return [c.name for c in claimed]


def status_of(queue: FeatureQueue) -> dict[str, str]:
    return {f.name: f.status for f in queue.status_report().features}


def expire_leases(queue: FeatureQueue) -> None:
    """Move every lease into the past, as if its owner stopped heart-beating long ago."""
    queue.db.run(lambda s: s.execute(update(Feature).values(lease_expires_at=Feature.created_at)))


# -- claims and DAG order ---------------------------------------------------------


def test_claim_takes_only_features_whose_dependencies_passed(queue: FeatureQueue) -> None:
    queue.import_specs([spec("schema"), spec("api", "schema"), spec("ui", "api"), spec("docs")])
    first = queue.claim(10, "sup-a")
    assert sorted(names(first)) == ["docs", "schema"]
    assert queue.claim(10, "sup-a") == []
    schema = next(c for c in first if c.name == "schema")
    queue.release(schema.id, "sup-a", schema.lease_token, "passing")
    assert names(queue.claim(10, "sup-a")) == ["api"]


def test_claim_order_prefers_the_longest_chain_then_priority(queue: FeatureQueue) -> None:
    queue.import_specs(
        [
            spec("lonely", priority=100),
            spec("chain-1"),
            spec("chain-2", "chain-1"),
            spec("chain-3", "chain-2"),
            spec("short-1", priority=5),
            spec("short-2", "short-1"),
            spec("short-1b", priority=1),
            spec("short-2b", "short-1b"),
        ]
    )
    order = [queue.claim(1, "sup").pop().name for _ in range(4)]
    assert order == ["chain-1", "short-1", "short-1b", "lonely"]


def test_released_claim_cannot_be_released_again_by_a_stale_token(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a")])
    (first,) = queue.claim(1, "sup-old")
    expire_leases(queue)
    assert queue.reap_expired() == [first.id]
    (second,) = queue.claim(1, "sup-new")
    assert second.lease_token > first.lease_token
    with pytest.raises(LeaseLostError):
        queue.release(first.id, "sup-old", first.lease_token, "passing", "stale work")
    result = queue.release(second.id, "sup-new", second.lease_token, "passing", "real work")
    assert result.applied and result.status == "passing"
    view = next(f for f in queue.status_report().features if f.name == "a")
    assert view.notes == "real work"


def test_release_is_idempotent_for_the_holder(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a")])
    (claim,) = queue.claim(1, "sup")
    first = queue.release(claim.id, "sup", claim.lease_token, "passing", "done")
    again = queue.release(claim.id, "sup", claim.lease_token, "passing", "done")
    assert first.applied and not again.applied
    assert again.status == "passing"
    assert [k for _, k, _, _ in queue.events(claim.id)].count("released:passing") == 1


def test_same_owner_cannot_release_with_an_old_token(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a")])
    (first,) = queue.claim(1, "sup")
    queue.release(first.id, "sup", first.lease_token, "pending")
    (second,) = queue.claim(1, "sup")
    with pytest.raises(LeaseLostError):
        queue.release(first.id, "sup", first.lease_token, "failed")
    assert status_of(queue)["a"] == "claimed"
    assert second.lease_token == first.lease_token + 1


def test_finishing_an_attempt_records_releases_and_unlocks_in_one_step(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a"), spec("b", "a")])
    (claim,) = queue.claim(1, "sup")
    context, previous, run = queue.begin_attempt(claim, "sonnet", lambda n: f"logs/a-{n}.jsonl")
    assert (context.name, previous, run.attempt, run.transcript_path) == ("a", [], 1, "logs/a-1.jsonl")
    queue.claim_file("src/a.py", claim.agent_id, claim.id)

    result = queue.finish_attempt(
        run.id, {"outcome": "passing", "num_turns": 4}, claim, Verdict(Status.PASSING, "built")
    )

    assert result is not None and result.status == "passing"
    assert (queue.runs(claim.id)[0].outcome, queue.runs(claim.id)[0].num_turns) == ("passing", 4)
    assert queue.file_locks() == []
    assert [c.name for c in queue.claim(1, "sup")] == ["b"]


def test_finishing_an_attempt_whose_lease_moved_on_settles_the_run_but_not_the_feature(
    queue: FeatureQueue,
) -> None:
    queue.import_specs([spec("a")])
    (old,) = queue.claim(1, "sup-old")
    _, _, run = queue.begin_attempt(old, "sonnet", lambda n: f"a-{n}")
    queue.claim_file("src/a.py", old.agent_id, old.id)
    queue.db.run(lambda s: s.execute(update(Feature).values(lease_expires_at=Feature.claimed_at)))
    queue.reap_expired()
    (new,) = queue.claim(1, "sup-new")

    assert queue.finish_attempt(run.id, {"outcome": "passing"}, old, Verdict(Status.PASSING, "stale")) is None

    assert status_of(queue)["a"] == "claimed"
    assert queue.status_report().features[0].owner == "sup-new"
    assert queue.file_locks() == []
    assert new.lease_token == old.lease_token + 1


def test_failed_attempts_return_to_pending_until_max_attempts(queue: FeatureQueue) -> None:
    queue.import_specs([spec("flaky", max_attempts=2), spec("after", "flaky")])
    (c1,) = queue.claim(1, "sup")
    r1 = queue.release(c1.id, "sup", c1.lease_token, "failed", "tests failed")
    assert (r1.status, r1.attempts) == ("pending", 1)
    (c2,) = queue.claim(1, "sup")
    r2 = queue.release(c2.id, "sup", c2.lease_token, "failed", "tests failed again")
    assert (r2.status, r2.attempts) == ("failed", 2)
    assert status_of(queue) == {"flaky": "failed", "after": "blocked"}
    assert queue.claim(5, "sup") == []


def test_infrastructure_failure_does_not_use_an_attempt(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a", max_attempts=1)])
    (c,) = queue.claim(1, "sup")
    r = queue.release(c.id, "sup", c.lease_token, "failed", "API overloaded", count_attempt=False)
    assert (r.status, r.attempts) == ("pending", 0)


def test_default_max_attempts_applies_without_an_override(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a")])
    statuses = []
    for _ in range(3):
        (c,) = queue.claim(1, "sup")
        statuses.append(queue.release(c.id, "sup", c.lease_token, "failed").status)
    assert statuses == ["pending", "pending", "failed"]


def test_invalid_release_status_is_refused(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a")])
    (c,) = queue.claim(1, "sup")
    with pytest.raises(InputError):
        queue.release(c.id, "sup", c.lease_token, "done")
    assert status_of(queue)["a"] == "claimed"


def test_blocked_is_every_unfinished_descendant_of_a_failure(queue: FeatureQueue) -> None:
    queue.import_specs(
        [
            spec("root", max_attempts=1),
            spec("mid", "root"),
            spec("leaf", "mid"),
            spec("other"),
            spec("join", "other", "mid"),
        ]
    )
    (root, other) = sorted(queue.claim(2, "sup"), key=lambda c: c.name, reverse=True)
    queue.release(root.id, "sup", root.lease_token, "failed")
    queue.release(other.id, "sup", other.lease_token, "passing")
    report = queue.status_report()
    assert status_of(queue) == {
        "root": "failed",
        "mid": "blocked",
        "leaf": "blocked",
        "other": "passing",
        "join": "blocked",
    }
    assert report.counts == {"failed": 1, "blocked": 3, "passing": 1}


def test_retry_puts_a_failed_feature_back_with_a_fresh_budget(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a", max_attempts=1), spec("b", "a")])
    (c,) = queue.claim(1, "sup")
    queue.release(c.id, "sup", c.lease_token, "failed")
    queue.retry(c.id)
    assert status_of(queue) == {"a": "pending", "b": "pending"}
    (again,) = queue.claim(1, "sup")
    queue.release(again.id, "sup", again.lease_token, "passing")
    assert names(queue.claim(1, "sup")) == ["b"]
    with pytest.raises(InputError):
        queue.retry(again.id)


# -- leases ----------------------------------------------------------------------


def test_heartbeat_extends_leases_and_reports_lost_ones(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a"), spec("b"), spec("c")])
    claims = sorted(queue.claim(3, "sup"), key=lambda c: c.name)
    held = {c.id: c.lease_token for c in claims}
    lost_one = claims[0]
    queue.release(lost_one.id, "sup", lost_one.lease_token, "pending")
    (taken,) = queue.claim(1, "sup-other")
    assert taken.id == lost_one.id
    expire_leases(queue)
    result = queue.heartbeat("sup", held)
    assert result.lost == {lost_one.id}
    assert result.renewed == {c.id for c in claims[1:]}
    # Renewed leases are in the future again, so the reaper leaves them alone; sup-other's is not.
    assert queue.reap_expired() == [lost_one.id]
    assert status_of(queue) == {"a": "pending", "b": "claimed", "c": "claimed"}


def test_reap_expired_returns_dead_owners_work_to_pending(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a"), spec("b")])
    a, b = sorted(queue.claim(2, "sup-dead"), key=lambda c: c.name)
    queue.claim_file("src/a.py", a.agent_id, a.id)
    queue.claim_file("src/b.py", b.agent_id, b.id)
    # Only a's lease runs out: the reaper must leave b alone.
    queue.db.run(
        lambda s: s.execute(update(Feature).where(Feature.id == a.id).values(lease_expires_at=Feature.created_at))
    )
    assert queue.reap_expired() == [a.id]
    assert status_of(queue) == {"a": "pending", "b": "claimed"}
    assert [path for path, _, _ in queue.file_locks()] == ["src/b.py"]
    assert queue.reap_expired() == []
    assert queue.heartbeat("sup-dead", {a.id: a.lease_token, b.id: b.lease_token}).lost == {a.id}


def test_give_back_all_returns_claims_without_using_attempts(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a"), spec("b")])
    claims = queue.claim(2, "sup")
    queue.claim_file("x.txt", claims[0].agent_id, claims[0].id)
    assert sorted(queue.give_back_all("sup")) == sorted(c.id for c in claims)
    assert status_of(queue) == {"a": "pending", "b": "pending"}
    assert all(f.attempts == 0 for f in queue.status_report().features)
    assert queue.file_locks() == []


# -- file locks --------------------------------------------------------------------


def test_file_lock_is_exclusive_and_names_the_holder(queue: FeatureQueue) -> None:
    queue.import_specs([spec("login"), spec("signup")])
    login, signup = sorted(queue.claim(2, "sup"), key=lambda c: c.name)
    assert queue.claim_file("src/app.py", login.agent_id, login.id).success
    denied = queue.claim_file("./src//app.py", signup.agent_id, signup.id)
    assert not denied.success
    assert f"feature #{login.id} (login)" in denied.message
    again = queue.claim_file("src/app.py", login.agent_id, login.id)
    assert again.success and "already hold" in again.message
    assert not queue.release_file("src/app.py", signup.agent_id).success
    assert queue.release_file("src/app.py", login.agent_id).success
    assert queue.claim_file("src/app.py", signup.agent_id, signup.id).success


def test_absolute_path_inside_the_project_is_the_same_lock(queue: FeatureQueue, project: Path) -> None:
    assert queue.claim_file(str(project / "a" / "b.txt"), "agent-1").path == "a/b.txt"
    assert not queue.claim_file("a/b.txt", "agent-2").success


@pytest.mark.parametrize("bad", ["../outside.txt", "/etc/passwd", "src/../../x", "", ".", "a\x00b", "x" * 2000])
def test_paths_outside_the_project_or_malformed_are_refused(queue: FeatureQueue, bad: str) -> None:
    with pytest.raises(InputError):
        queue.claim_file(bad, "agent-1")
    assert queue.file_locks() == []


def test_symlink_escaping_the_project_is_refused(queue: FeatureQueue, project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, project / "link")
    with pytest.raises(PathOutsideProjectError):
        queue.claim_file("link/secret.txt", "agent-1")
    os.symlink(project / "real", project / "inner-link")
    assert queue.claim_file("inner-link/ok.txt", "agent-1").path == "real/ok.txt"


def test_release_all_drops_every_lock_of_one_agent(queue: FeatureQueue) -> None:
    for path in ("a", "b", "c"):
        queue.claim_file(path, "agent-1")
    queue.claim_file("d", "agent-2")
    assert queue.release_all("agent-1") == 3
    assert [p for p, _, _ in queue.file_locks()] == ["d"]


def test_release_of_a_feature_frees_its_file_locks(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a")])
    (c,) = queue.claim(1, "sup")
    queue.claim_file("a.py", c.agent_id, c.id)
    queue.release(c.id, "sup", c.lease_token, "passing")
    assert queue.file_locks() == []


# -- import ------------------------------------------------------------------------


def test_reimport_adds_new_updates_unclaimed_and_keeps_removed(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a", description="v1"), spec("b", "a", description="v1"), spec("gone")])
    (a,) = [c for c in queue.claim(5, "sup") if c.name == "a"]
    report = queue.import_specs(
        [spec("a", description="v2"), spec("b", "a", description="v2"), spec("c", "b", description="new")]
    )
    assert report.added == ("c",)
    assert report.updated == ("b",)
    assert report.skipped == ("a",)  # claimed: left alone
    assert report.kept == ("gone",)
    assert [f.name for f in queue.status_report().features] == ["a", "b", "gone", "c"]
    queue.release(a.id, "sup", a.lease_token, "passing")
    assert names(queue.claim(5, "sup")) == ["b"]


def test_import_is_all_or_nothing_on_a_cycle_through_existing_features(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a"), spec("b", "a")])
    before = queue.status_report()
    with pytest.raises(FeaturesFileError, match="cycle"):
        queue.import_specs([spec("new"), spec("a", "b")])
    assert queue.status_report() == before


def test_import_may_depend_on_features_already_in_the_database(queue: FeatureQueue) -> None:
    queue.import_specs([spec("base")])
    (c,) = queue.claim(1, "sup")
    queue.release(c.id, "sup", c.lease_token, "passing")
    queue.import_specs([spec("extra", "base")])
    assert names(queue.claim(1, "sup")) == ["extra"]


def test_reimport_that_rewires_dependencies_changes_what_is_ready(queue: FeatureQueue) -> None:
    queue.import_specs([spec("done"), spec("open"), spec("x", "open"), spec("y", "done")])
    (c,) = [c for c in queue.claim(5, "sup") if c.name == "done"]
    queue.release(c.id, "sup", c.lease_token, "passing")
    queue.give_back_all("sup")
    # x now waits only on a passing feature; y gains an unfinished one.
    queue.import_specs([spec("done"), spec("open"), spec("x", "done"), spec("y", "done", "open")])
    assert sorted(names(queue.claim(5, "sup"))) == ["open", "x"]


def test_reimport_with_a_new_priority_changes_the_claim_order(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a", priority=5), spec("b")])
    queue.import_specs([spec("a", priority=5), spec("b", priority=9)])
    assert names(queue.claim(1, "sup")) == ["b"]


def test_status_json_has_the_documented_shape(queue: FeatureQueue) -> None:
    queue.import_specs([spec("a", category="backend"), spec("b", "a", category="testing", model="haiku")])
    doc = queue.status_report().to_json()
    assert set(doc) == {"features", "counts"}
    assert doc["counts"] == {"pending": 2}
    assert doc["features"][1] == {
        "id": doc["features"][1]["id"],
        "name": "b",
        "category": "testing",
        "status": "pending",
        "attempts": 0,
        "model": "haiku",
        "cost_usd": 0.0,
        "depends_on": ["a"],
        "notes": "",
        # Scheduling: no estimate and no history, so the default 10 minutes; b ends its chain.
        "estimate_minutes": 10.0,
        "critical_path_minutes": 10.0,
    }
    assert doc["features"][0]["critical_path_minutes"] == 20.0


# -- the claim and release on the driver's connection (api.driver) ------------------------------


def test_every_claim_and_release_is_logged_with_its_token_and_the_stored_status(queue: FeatureQueue) -> None:
    from sqlalchemy import select

    from api.models import Event

    queue.import_specs([spec("a"), spec("b", "a")])
    (a,) = queue.claim(5, "sup")
    queue.release(a.id, "sup", a.lease_token, "passing")
    (b,) = queue.claim(5, "sup")
    queue.release(b.id, "sup", b.lease_token, "failed", "broke")
    rows = queue.db.run(
        lambda s: s.execute(select(Event.kind, Event.feature_id, Event.owner, Event.detail).order_by(Event.id)).all()
    )
    assert [tuple(r) for r in rows if r.kind != "import"] == [
        ("claimed", a.id, "sup", {"token": a.lease_token}),
        ("released:passing", a.id, "sup", {"token": a.lease_token, "now": "passing"}),
        ("claimed", b.id, "sup", {"token": b.lease_token}),
        ("released:failed", b.id, "sup", {"token": b.lease_token, "now": "pending"}),  # attempts left
    ]


def test_claims_from_more_threads_than_connections_never_claim_twice(db_url: str, project: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    from api.database import Database

    db = Database(db_url, pool_size=2)  # at most 2 connections for claims and releases
    db.migrate()
    queue = FeatureQueue(db, project_dir=project)
    try:
        queue.import_specs([spec(f"f{i}") for i in range(60)])

        def drain(worker: int) -> list[int]:
            got = []
            while claimed := queue.claim(1, f"w{worker}"):
                queue.release(claimed[0].id, f"w{worker}", claimed[0].lease_token, "passing")
                got.append(claimed[0].id)
            return got

        with ThreadPoolExecutor(6) as pool:
            ids = [fid for got in pool.map(drain, range(6)) for fid in got]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 60
        assert set(status_of(queue).values()) == {"passing"}
        if not db.is_sqlite:  # the server sees the bound: 2 for the verbs, 1 pooled for the import and status
            others = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            with db.engine.connect() as conn:
                assert conn.execute(text(others)).scalar() <= 3
    finally:
        db.dispose()


@pytest.fixture
def pg_queue(pg_url: str, project: Path) -> Iterator[FeatureQueue]:
    """A migrated queue on the test PostgreSQL server, for behaviour only PostgreSQL has."""
    from api.database import Database

    db = Database(pg_url)
    db.migrate()
    yield FeatureQueue(db, project_dir=project)
    db.dispose()


def driver_backend_pid(queue: FeatureQueue) -> int:
    """The server process behind this thread's driver connection (api.driver)."""
    return queue.db.run_on_driver(lambda tx: tx.cursor.execute("SELECT pg_backend_pid()").fetchone()[0])


@pytest.mark.postgres
def test_a_claim_after_the_server_dropped_the_connection_is_redone_on_a_new_one(pg_queue: FeatureQueue) -> None:
    from sqlalchemy import text

    pg_queue.import_specs([spec("a"), spec("b")])
    (a,) = pg_queue.claim(1, "sup")  # opens this thread's driver connection
    pid = driver_backend_pid(pg_queue)
    with pg_queue.db.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    (b,) = pg_queue.claim(1, "sup")  # the dead connection is found, replaced, and the claim redone once
    assert b.name == "b"
    assert pg_queue.release(a.id, "sup", a.lease_token, "passing").applied
    assert status_of(pg_queue) == {"a": "passing", "b": "claimed"}


@pytest.mark.postgres
def test_a_deadlock_on_the_sessions_driver_connection_is_redone_and_other_errors_are_one_line(
    pg_queue: FeatureQueue,
) -> None:
    from api.errors import DatabaseError

    db = pg_queue.db
    tries: list[int] = []
    deadlock = "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"

    def work(session):  # as finish_attempt runs a release: raw statements in the ORM's transaction
        tries.append(1)
        if len(tries) == 1:
            db.tx_in(session).cursor.execute(deadlock)
        return len(tries)

    assert db.run(work) == 2  # redone once, as a deadlock through the ORM is
    broken = "DO $$ BEGIN RAISE EXCEPTION 'no good' USING ERRCODE = '23505'; END $$"
    with pytest.raises(DatabaseError, match=r"^database rejected a write on .*: no good$"):
        db.run(lambda session: db.tx_in(session).cursor.execute(broken))


@pytest.mark.postgres
def test_a_forked_child_leaves_the_parents_connection_alone(pg_queue: FeatureQueue) -> None:
    import multiprocessing

    def child() -> None:  # claims on a connection of its own
        assert [c.name for c in pg_queue.claim(1, "child")] == ["b"]

    pg_queue.import_specs([spec("a"), spec("b"), spec("c")])
    assert names(pg_queue.claim(1, "parent")) == ["a"]
    before = driver_backend_pid(pg_queue)
    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert names(pg_queue.claim(1, "parent")) == ["c"]
    assert driver_backend_pid(pg_queue) == before  # the same session: the child did not end it
