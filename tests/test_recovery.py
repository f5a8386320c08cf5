"""Recovery, end to end: supervisors and agents die, the model endpoint misbehaves, no work is lost.

Real processes throughout: `python agent_manager.py` as subprocesses, the bundled `claude` CLI
with its stdio MCP server, a SQLite file or the test PostgreSQL server, and the scripted model
(supervisor/scripted_model), whose agents can be held mid-task with events so that a process dies at a
known point. Leases are 3 s (the minimum) so that recovery from a dead owner takes seconds.
The races at the end of a run are pinned down in process, with scripted sessions.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from api.database import Database
from api.features_file import FeatureSpec
from api.models import AgentRun, Feature, utcnow
from api.queue import FeatureQueue
from api.records import ClaimedFeature
from supervisor.live import PlainView
from supervisor.loop import AgentState
from supervisor.runner import AgentOutcome, AgentTask
from supervisor.scripted_model import Delay, DropMidStream, HttpError, Reply, Request
from supervisor.scripted_model.agents import Agents, Convo
from tests.support.harness import RUN_TIMEOUT_S, Run, assert_all_exit, descendants
from tests.support.runners import ScriptedRunner, passes
from tests.support.supervise import supervise

pytestmark = pytest.mark.slow

LEASE = ("--lease-seconds", "3")
HOLD_S = 120  # an upper bound on how long a held agent waits; tests release it long before


@pytest.fixture
def database_url(backend_name: str, request: pytest.FixtureRequest) -> str | None:
    """None: the project's own SQLite file (the CLI's default); else a fresh PostgreSQL database."""
    return None if backend_name == "sqlite" else request.getfixturevalue("pg_url")


class Holds:
    """Per-feature gates: an agent that has written its file (and so holds its lock) waits there."""

    def __init__(self, names: Iterable[str]) -> None:
        self.working = {name: threading.Event() for name in names}
        self.go = {name: threading.Event() for name in self.working}

    def hook(self, req: Request, convo: Convo, feature: dict) -> Reply | None:
        name = feature["name"]
        if convo.succeeded("Write"):
            self.working[name].set()
            self.go[name].wait(HOLD_S)
        return None

    def hooks(self) -> dict[str, Callable[[Request, Convo, dict], Reply | None]]:
        return dict.fromkeys(self.working, self.hook)

    def wait_working(self, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in self.working.values())

    def release(self, *names: str) -> None:
        for name in names or self.go:
            self.go[name].set()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up after {timeout} s waiting for {what}"
        time.sleep(0.05)


def clis(processes: dict[int, str]) -> list[int]:
    return [pid for pid, command in processes.items() if "_bundled/claude" in command]


def mcp_servers(processes: dict[int, str]) -> list[int]:
    return [pid for pid, command in processes.items() if "-m mcp_server" in command]


def runs_table(run: Run) -> list[tuple[str, str, str | None, str | None]]:
    """(feature name, owner, outcome, error) of every attempt, oldest first."""
    queue = run.queue()
    try:
        return queue.db.run(
            lambda s: [
                tuple(r)
                for r in s.execute(
                    select(Feature.name, AgentRun.owner, AgentRun.outcome, AgentRun.error)
                    .join(Feature, Feature.id == AgentRun.feature_id)
                    .order_by(AgentRun.id)
                )
            ],
            read_only=True,
        )
    finally:
        queue.db.dispose()


def assert_passed_exactly_once(run: Run, names: list[str]) -> None:
    """Every feature passing, by one session, released as passing once, with no lock left behind."""
    queue = run.queue()
    try:
        report = queue.status_report()
        assert {f.name: f.status for f in report.features} == dict.fromkeys(names, "passing")
        ids = {f.id: f.name for f in report.features}
        released = Counter(ids[fid] for _, kind, fid, _ in queue.events() if kind == "released:passing")
        assert released == Counter(names)
        assert queue.file_locks() == []
    finally:
        queue.db.dispose()
    passing = Counter(name for name, _, outcome, _ in runs_table(run) if outcome == "passing")
    assert passing == Counter(names)


def owner_pid(owner: str) -> int:
    return int(owner.rsplit(":", 2)[1])  # owners are host:pid:random


# -- a supervisor dies -----------------------------------------------------------------------------

CRASH = [
    {"name": "alpha", "category": "backend"},
    {"name": "beta", "category": "backend"},
    {"name": "gamma", "category": "frontend"},
    {"name": "delta", "category": "backend", "depends_on": ["alpha"]},
]


@pytest.mark.parametrize("transport", ["in-process", "stdio"])
def test_a_supervisor_killed_mid_run_leaves_no_orphans_and_a_restart_finishes_every_feature_once(
    make_run: Callable[..., Run], database_url: str | None, transport: str
) -> None:
    holds = Holds(["alpha", "beta", "gamma"])
    brain = Agents(holds.hooks())
    run = make_run(brain, CRASH, database_url, mcp_server=transport)
    proc = run.start("--max-agents", "3", *LEASE)
    try:
        assert holds.wait_working(), "the agents never got to work"
        children = descendants(proc.pid)
        servers = 3 if transport == "stdio" else 0  # in-process: the tools run in the supervisor
        assert len(clis(children)) == 3 and len(mcp_servers(children)) == servers, children
        assert len(run.queue().file_locks()) == 3
        proc.kill()
        proc.wait(30)
        # The agents are still held mid-request: only dying with their supervisor ends them now,
        # not the end of their turn (an orphaned CLI would carry on calling the model and writing).
        assert_all_exit(children, timeout=10)
    finally:
        holds.release()
        proc.kill()

    restarted = run.supervise("--max-agents", "3", *LEASE)

    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "returned expired claims to pending" in restarted.stdout
    assert_passed_exactly_once(run, [f["name"] for f in CRASH])
    # A crash of the supervisor costs no attempt; its unfinished attempts are closed, not left running.
    assert {f["name"]: f["attempts"] for f in run.status()["features"]} == {f["name"]: 1 for f in CRASH}
    runs = runs_table(run)
    dead = [r for r in runs if owner_pid(r[1]) == proc.pid]
    assert sorted(r[0] for r in dead) == ["alpha", "beta", "gamma"]
    assert {r[2] for r in dead} == {"expired"}
    assert all("stopped renewing" in (r[3] or "") for r in dead)
    assert all(owner_pid(owner) != proc.pid for _, owner, outcome, _ in runs if outcome == "passing")
    # Each cut-short feature resumed the session its dead supervisor left: its context carries on.
    queue = run.queue()
    try:
        for feature in queue.status_report().features:
            if feature.name == "delta":
                continue
            first, second = queue.runs(feature.id)
            assert first.session_id is not None and first.session_id == second.session_id, feature.name
            assert brain.prompts[feature.name][-1].startswith(
                f"Your session on feature #{feature.id} ({feature.name}) was interrupted (its supervisor stopped)"
            )
    finally:
        queue.db.dispose()


# -- two supervisors on one queue ------------------------------------------------------------------

SHARED = [{"name": f"part-{i}", "category": "backend"} for i in range(4)]


def test_two_supervisors_share_one_queue_and_the_survivor_finishes_what_a_killed_one_held(
    make_run: Callable[..., Run], database_url: str | None
) -> None:
    names = [f["name"] for f in SHARED]
    holds = Holds(names)
    run = make_run(Agents(holds.hooks()), SHARED, database_url)
    # Started together: both migrate and import the same fresh queue at once.
    first = run.start("--max-agents", "2", *LEASE)
    second = run.start("--max-agents", "2", *LEASE)
    queue = run.queue()
    try:
        # Four sessions at once with at most two each: both supervisors hold two features.
        assert holds.wait_working(), "the agents never got to work"
        owners = {f.name: f.owner for f in queue.status_report().features}
        held = {
            pid: sorted(n for n, owner in owners.items() if owner_pid(owner or "") == pid)
            for pid in (first.pid, second.pid)
        }
        assert [len(v) for v in held.values()] == [2, 2], owners
        finished_first, kept = held[first.pid]
        holds.release(finished_first, *held[second.pid])
        wait_for(lambda: sum(f.status == "passing" for f in queue.status_report().features) == 3, 120, "three passing")
        children = descendants(first.pid)
        assert len(clis(children)) == 1, children  # the session of `kept`, still held
        first.kill()
        first.wait(30)
        assert_all_exit(children, timeout=10)
        holds.release()
        out, err = second.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        holds.release()
        first.kill()
        second.kill()
        queue.db.dispose()

    assert second.returncode == 0, out + err
    assert_passed_exactly_once(run, names)
    passed_by = {name: owner_pid(owner) for name, owner, outcome, _ in runs_table(run) if outcome == "passing"}
    assert passed_by == {
        finished_first: first.pid,
        kept: second.pid,  # reclaimed after its lease expired
        **dict.fromkeys(held[second.pid], second.pid),
    }


# -- a supervisor loses a lease ------------------------------------------------------------------------

SECOND = "elsewhere:4242:second"  # another supervisor's owner name (host:pid:random)


def claim_row(queue: FeatureQueue, feature_id: int) -> tuple[str, str | None, str | None, int, int]:
    """(status, owner, agent id, lease token, attempts) of a feature, as stored."""
    return queue.db.run(
        lambda s: tuple(
            s.execute(
                select(Feature.status, Feature.owner, Feature.agent_id, Feature.lease_token, Feature.attempts).where(
                    Feature.id == feature_id
                )
            ).one()
        ),
        read_only=True,
    )


def take_over(queue: FeatureQueue, feature_id: int, owner: str) -> ClaimedFeature:
    """Claim a feature held by a live supervisor the way another supervisor would once its lease ran out."""
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the lease never ran out"
        if claim_row(queue, feature_id)[0] == "pending":
            # On PostgreSQL a claim passes over a row another transaction has locked (SKIP LOCKED):
            # the holder's renewal that found the row reaped keeps its lock until it commits. A
            # supervisor claims it on its next cycle; so does this one.
            taken = queue.claim(1, owner)
            if taken:
                assert [t.id for t in taken] == [feature_id]
                return taken[0]
            continue
        # The lease runs out; the holder's next renewal may still land first: then again.
        queue.db.run(
            lambda s: s.execute(
                update(Feature)
                .where(Feature.id == feature_id, Feature.status == "claimed")
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        )
        queue.reap_expired()  # or the holder's own reaper got there first: pending either way


def model_requests(run: Run, session: str) -> int:
    """Requests of one CLI session that reached the model, counted on arrival (a held one included)."""
    return sum(
        1
        for r in run.server.raw_requests
        if {k.lower(): v for k, v in r.headers.items()}.get("x-claude-code-session-id") == session
    )


def test_a_session_whose_lease_another_supervisor_took_over_is_stopped_and_the_new_claim_is_left_alone(
    make_run: Callable[..., Run], database_url: str | None
) -> None:
    holds = Holds(["contested"])
    brain = Agents(holds.hooks())
    run = make_run(brain, [{"name": "contested", "category": "backend"}], database_url)
    first = run.start("--max-agents", "1", *LEASE)  # renews its leases every second
    second = FeatureQueue(Database(run.db_url), project_dir=run.project, lease_seconds=HOLD_S)
    try:
        assert holds.wait_working(), "the agent never got to work"  # it wrote contested.txt: it holds the lock
        (cli,) = clis(descendants(first.pid))
        (session,) = [s for s, name in brain.session_feature.items() if name == "contested"]
        asked = model_requests(run, session)
        (fid,) = [f.id for f in second.status_report().features]
        _, first_owner, first_agent, _, _ = claim_row(second, fid)
        # A second supervisor finds the lease run out (the first missed its renewals: a stalled
        # event loop, a suspended machine), returns the claim to pending and claims the feature.
        taken = take_over(second, fid, SECOND)
        assert second.claim_file("contested.txt", taken.agent_id, fid).success  # the new agent's lock
        # A lock the first supervisor's agent takes before its supervisor learns of the loss (its
        # write guard asks nothing of the lease, and it learns within a heartbeat): it must go too.
        assert second.claim_file("straggler.txt", first_agent, fid).success
        assert taken.attempts == 0
        # Stopped within a heartbeat (a second here) and the CLI's exit; bounded for a loaded machine.
        assert_all_exit({cli: "the first supervisor's claude"}, timeout=10)
        holds.release()  # the held request gets its answer, into a closed connection
        # (wait_until holds the server's lock while it asks: read .requests, not requests_for())
        answered = lambda: sum(r.session == session for r in run.server.requests) >= asked  # noqa: E731
        assert run.server.wait_until(answered, 30), "the held request was never answered"

        def closed_by_first() -> str | None:
            mine = [outcome for _, owner, outcome, _ in runs_table(run) if owner == first_owner]
            return mine[0] if mine and mine[0] not in (None, "expired") else None  # "expired": the reaper's

        wait_for(closed_by_first, 30, "the first supervisor to close its attempt")
        assert closed_by_first() == "interrupted"
        # The new owner's claim is untouched: its status, owner, token and attempts; no attempt used.
        assert claim_row(second, fid) == ("claimed", SECOND, taken.agent_id, taken.lease_token, 0)
        assert second.file_locks() == [("contested.txt", taken.agent_id, fid)]
        # The second supervisor's agent finishes; the first, with nothing left to run, then ends.
        second.release(fid, SECOND, taken.lease_token, "passing", "built by the second supervisor")
        out, err = first.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        holds.release()
        first.kill()
        second.db.dispose()

    assert first.returncode == 0, out + err
    assert f"feature #{fid}: lease lost; stopping its session" in out, out
    assert model_requests(run, session) == asked  # not one request after the hold
    assert run.server.sessions == [session]  # and the first supervisor started no other
    feature = run.status()["by_name"]["contested"]
    assert (feature["status"], feature["attempts"]) == ("passing", 1)
    assert feature["notes"] == "built by the second supervisor"
    assert [(owner, outcome) for _, owner, outcome, _ in runs_table(run)] == [(first_owner, "interrupted")]
    assert run.queue().file_locks() == []


# -- an agent's process dies -----------------------------------------------------------------------


def cli_of_feature(processes: dict[int, str], feature_id: int) -> int:
    """The CLI whose state directory is the feature's (each feature's CLI has its own)."""
    for pid in clis(processes):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # another feature's CLI that has just exited
        if any(v.startswith(b"CLAUDE_CONFIG_DIR=") and v.endswith(f"/feature-{feature_id}".encode()) for v in environ):
            return pid
    raise AssertionError(f"no claude CLI for feature #{feature_id} in {processes}")


def test_a_killed_claude_process_is_a_failed_attempt_whose_retry_passes_with_its_locks_freed(
    make_run: Callable[..., Run],
) -> None:
    working, killed = threading.Event(), threading.Event()
    locks_at_retry: list[list[tuple[str, str, int | None]]] = []

    def victim(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if "the claude process died" in convo.prompts[-1] and not locks_at_retry:
            locks_at_retry.append(run.queue().file_locks())
        if convo.succeeded("Write") and not killed.is_set():
            working.set()
            killed.wait(HOLD_S)  # mid-task, holding the lock on victim.txt
        return None

    features = [{"name": "victim", "category": "backend"}, {"name": "bystander", "category": "backend"}]
    brain = Agents({"victim": victim})
    run = make_run(brain, features, mcp_server="stdio")  # so the CLI has an MCP server child to take along
    proc = run.start("--max-agents", "2", *LEASE)
    try:
        assert working.wait(120), "the agent never got to work"
        assert [path for path, _, _ in run.queue().file_locks()].count("victim.txt") == 1
        cli = cli_of_feature(descendants(proc.pid), run.status()["by_name"]["victim"]["id"])
        its_children = descendants(cli)
        assert len(mcp_servers(its_children)) == 1, its_children
        os.kill(cli, signal.SIGKILL)
        killed.set()
        assert_all_exit(its_children, timeout=10)  # its MCP server does not outlive it
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        killed.set()
        proc.kill()

    assert proc.returncode == 0, out + err
    by_name = run.status()["by_name"]
    assert (by_name["victim"]["status"], by_name["victim"]["attempts"]) == ("passing", 2)
    assert (by_name["bystander"]["status"], by_name["bystander"]["attempts"]) == ("passing", 1)
    victim_runs = [(outcome, error) for name, _, outcome, error in runs_table(run) if name == "victim"]
    assert victim_runs == [("agent_error", "the claude process died (killed by SIGKILL)"), ("passing", None)]
    assert "failed attempt, will retry" in out
    assert "the claude process died (killed by SIGKILL)" in brain.prompts["victim"][-1]  # the retry is told
    assert locks_at_retry and [lock for lock in locks_at_retry[0] if lock[0] == "victim.txt"] == []
    assert run.queue().file_locks() == []


# -- the model endpoint misbehaves -----------------------------------------------------------------

# Injected right after a session's first model turn, so each hits a session mid-task. The CLI
# retries once (CLAUDE_CODE_MAX_RETRIES=1, honouring retry-after); a cut stream is retried
# streaming, then not streaming, so three cuts reach the supervisor.
API_FAULTS = {
    "throttled": ([HttpError(429, headers={"retry-after": "1"})] * 2, "429"),
    "erroring": ([HttpError(500)] * 2, "500"),
    "overloaded": ([HttpError(529)] * 2, "529"),
    "cut": ([DropMidStream()] * 3, "connection"),
}
SESSION_TIMEOUT_S = 5


def test_api_faults_mid_session_use_no_attempt_and_only_a_timed_out_session_uses_one(
    make_run: Callable[..., Run],
) -> None:
    injected: set[str] = set()
    faults = {name: spec for name, (spec, _) in API_FAULTS.items()}
    faults["slow"] = [Delay(SESSION_TIMEOUT_S + 7)]  # one reply far slower than the session may take

    def inject(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if feature["name"] not in injected:
            injected.add(feature["name"])
            run.server.faults.extend(faults[feature["name"]])
        return None

    features = [{"name": name, "category": "backend"} for name in API_FAULTS]
    features.append({"name": "slow", "category": "testing"})  # haiku, whose timeout is short here
    run = make_run(Agents(dict.fromkeys(faults, inject)), features, timeouts={"haiku": SESSION_TIMEOUT_S})
    # One session at a time, so each injected fault meets the session that asked for it.
    done = run.supervise("--max-agents", "1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert injected == set(faults)
    report = run.status()
    assert report["counts"] == {"passing": len(features)}
    attempts = {f["name"]: f["attempts"] for f in report["features"]}
    assert attempts == {**dict.fromkeys(API_FAULTS, 1), "slow": 2}
    runs = runs_table(run)
    for name, (_, status) in API_FAULTS.items():
        mine = [(outcome, error or "") for feature, _, outcome, error in runs if feature == name]
        assert [outcome for outcome, _ in mine] == ["api_unavailable", "passing"], (name, mine)
        assert f"API unavailable ({status})" in mine[0][1], (name, mine)
    slow = [(outcome, error) for feature, _, outcome, error in runs if feature == "slow"]
    assert slow == [("timeout", f"timed out after {SESSION_TIMEOUT_S} s"), ("passing", None)]
    timed_out, _ = run.queue().runs(next(f["id"] for f in report["features"] if f["name"] == "slow"))
    assert timed_out.num_turns >= 1 and timed_out.cost_usd > 0  # what the stopped session spent is recorded
    pauses = [line for line in done.stdout.splitlines() if "pausing new claims" in line]
    assert len(pauses) == len(API_FAULTS), done.stdout
    for _, status in API_FAULTS.values():
        assert any(f"({status})" in line for line in pauses), (status, pauses)
    kinds = Counter(r.kind for r in run.server.requests)
    assert (kinds["http_error:429"], kinds["http_error:500"], kinds["http_error:529"], kinds["drop"]) == (2, 2, 2, 3)


def test_an_api_outage_past_its_limit_stops_the_run_with_the_cause_and_keeps_every_feature(
    make_run: Callable[..., Run],
) -> None:
    features = [{"name": f"task-{i}", "category": "backend"} for i in range(3)]
    run = make_run(Agents(), features, outage_limit_seconds=3)
    run.server.fail_all(500, agent_loop_only=True)  # the start-up probe passes; sessions meet the outage
    done = run.supervise("--max-agents", "2", *LEASE)

    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert "gave up after the API was unavailable" in errors[0] and "API unavailable (500)" in errors[0]
    report = run.status()
    assert report["counts"] == {"pending": len(features)}
    assert all(f["attempts"] == 0 for f in report["features"])
    # Sessions still in flight when it gives up are stopped; none was judged an agent failure.
    outcomes = Counter(outcome for _, _, outcome, _ in runs_table(run))
    # (How many sessions met the outage before the limit ran out depends on the machine's speed.)
    assert outcomes["api_unavailable"] >= 1 and set(outcomes) <= {"api_unavailable", "interrupted"}, outcomes
    assert run.queue().file_locks() == []


# -- the end of a run ------------------------------------------------------------------------------
# In process, with scripted sessions: the races here need a database answer that arrives late,
# which a FeatureQueue subclass (the supervisor's injected queue) provides deterministically.


class LateClaims(FeatureQueue):
    """An empty claim answers only once the session of `last` has ended (a slow database)."""

    def __init__(self, db: Database, project: Path, last: str) -> None:
        super().__init__(db, project_dir=project, lease_seconds=30)
        self.last, self.ended, self.empty_claim_waiting = last, threading.Event(), threading.Event()

    def claim(self, n: int, owner: str) -> list[ClaimedFeature]:
        claimed = super().claim(n, owner)
        if not claimed and not self.ended.is_set():
            self.empty_claim_waiting.set()
            assert self.ended.wait(30)
        return claimed


class EndsView(PlainView):
    """Tells the queue when the session of its `last` feature has ended: the view hears of it last."""

    def __init__(self, queue: LateClaims) -> None:
        super().__init__(io.StringIO())
        self.queue = queue

    def finished(self, state: AgentState, status: str, notes: str) -> None:
        super().finished(state, status, notes)
        if state.claim.name == self.queue.last:
            self.queue.ended.set()  # the session's last step: its release is committed


def test_a_feature_unblocked_while_the_supervisor_claims_is_still_run_before_it_exits(
    db_url: str, project: Path
) -> None:
    # `second`, the last session running, ends (unblocking `child`) while an empty claim is in
    # flight: the supervisor must look again rather than conclude from that stale answer that it is done.
    db = Database(db_url)
    db.migrate()
    queue = LateClaims(db, project, last="second")
    queue.import_specs(
        [FeatureSpec("first"), FeatureSpec("second"), FeatureSpec("child", depends_on=("first", "second"))]
    )

    # `second` outlives `first`, whose end makes the supervisor claim (and find nothing yet).
    async def outlives_first(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        assert await asyncio.to_thread(queue.empty_claim_waiting.wait, 30)
        return await passes(task, runner)

    runner = ScriptedRunner(queue, by_feature={"second": outlives_first})
    summary, _ = supervise(queue, runner, max_agents=2, view=EndsView(queue))
    db.dispose()

    assert queue.ended.is_set()
    assert (summary.counts, summary.exit_code) == ({"passing": 3}, 0)


class ReapedMeanwhile(FeatureQueue):
    """Another supervisor's reaper lands just after this supervisor's first (empty) claim read."""

    reaped: list[int] | None = None

    def claim(self, n: int, owner: str) -> list[ClaimedFeature]:
        claimed = super().claim(n, owner)
        if not claimed and self.reaped is None:
            self.reaped = self.reap_expired()
        return claimed


def test_a_restarted_supervisor_runs_claims_reaped_right_after_it_found_nothing_to_claim(
    db_url: str, project: Path
) -> None:
    db = Database(db_url)
    db.migrate()
    queue = ReapedMeanwhile(db, project_dir=project, lease_seconds=30)
    queue.import_specs([FeatureSpec("left"), FeatureSpec("behind")])
    dead = FeatureQueue(db, project_dir=project, lease_seconds=-1)  # a crashed owner, its leases past
    assert len(dead.claim(2, "crashed")) == 2
    summary, _ = supervise(queue, ScriptedRunner(queue), max_agents=2)
    db.dispose()

    assert queue.reaped and len(queue.reaped) == 2
    assert (summary.counts, summary.exit_code) == ({"passing": 2}, 0)


def test_attempts_left_open_by_a_stopped_or_dead_supervisor_are_closed_not_left_running(
    db_url: str, project: Path
) -> None:
    db = Database(db_url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project, lease_seconds=30)
    queue.import_specs([FeatureSpec("stopped"), FeatureSpec("abandoned")])
    stopped = queue.claim(1, "sup")[0]
    queue.start_run(stopped, "sonnet")
    # A session cancelled during its start (a shutdown) never ends its attempt: the give-back does.
    assert queue.give_back_all("sup") == [stopped.id]
    dead = FeatureQueue(db, project_dir=project, lease_seconds=-1)  # its leases are past at once
    claims = dead.claim(2, "dead")
    for claim in claims:
        dead.start_run(claim, "sonnet")
    assert sorted(queue.reap_expired()) == sorted(c.id for c in claims)

    features = queue.status_report().features
    runs = {f.name: queue.runs(f.id) for f in features}
    db.dispose()
    assert {name: [r.outcome for r in rs] for name, rs in runs.items()} == {
        "stopped": ["interrupted", "expired"],
        "abandoned": ["expired"],
    }
    assert all(r.ended_at is not None for rs in runs.values() for r in rs)
    assert {(f.status, f.attempts) for f in features} == {("pending", 0)}
