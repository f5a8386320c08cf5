"""The supervisor loop with scripted runners injected through the AgentRunner protocol.

The real CLI paths are covered end to end in test_e2e_cli.py; these pin the loop's rules.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from supervisor.live import PlainView
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending
from tests.support.runners import ScriptedRunner, passes
from tests.support.supervise import supervise

DAG = [
    FeatureSpec("schema", category="database"),
    FeatureSpec("auth", category="backend", depends_on=("schema",)),
    FeatureSpec("tasks", category="backend", depends_on=("schema",)),
    FeatureSpec("ui", category="frontend", depends_on=("schema",)),
    FeatureSpec("api-tests", category="testing", depends_on=("auth", "tasks")),
    FeatureSpec("ui-tests", category="testing", depends_on=("ui",)),
    FeatureSpec("docs", category="documentation", depends_on=("api-tests", "ui-tests")),
]


def make(db_url: str, project: Path, specs=DAG, **policy) -> FeatureQueue:
    db = Database(db_url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project, lease_seconds=30, default_max_attempts=policy.get("max_attempts", 3))
    queue.import_specs(specs)
    return queue


def statuses(queue: FeatureQueue) -> dict[str, str]:
    return {f.name: f.status for f in queue.status_report().features}


@pytest.mark.parametrize("max_agents", [3, 1])
def test_runs_the_dag_in_dependency_order_with_bounded_parallelism(db_url: str, project: Path, max_agents: int) -> None:
    # With three agents, the three features that `schema` unblocks wait for each other mid-session:
    # none finishes before all three run at once. With one agent nothing waits (it would wait forever).
    wave = {"auth", "tasks", "ui"}
    met: list[str] = []

    async def meets(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        if max_agents > 1 and task.feature_name in wave:
            try:
                await runner.running_at_once(len(wave), within=10)
                met.append(task.feature_name)
            except TimeoutError:
                pass  # they never ran all at once: `met` misses them (asserted below)
        return await passes(task, runner)

    queue = make(db_url, project)
    runner = ScriptedRunner(queue, meets)
    summary, _ = supervise(queue, runner, max_agents=max_agents)
    assert summary.exit_code == 0
    assert {f.name: (f.status, f.attempts) for f in queue.status_report().features} == {
        s.name: ("passing", 1) for s in DAG
    }
    assert sorted(met) == (sorted(wave) if max_agents > 1 else [])
    assert runner.peak == max_agents
    deps = {s.name: s.depends_on for s in DAG}
    for name, started in runner.started.items():
        assert all(runner.finished[d] <= started for d in deps[name]), name
    models = {t.feature_name: t.model for t in runner.tasks}
    assert models["api-tests"] == models["docs"] == "haiku"
    assert models["schema"] == models["ui"] == "sonnet"
    auth = next(t for t in runner.tasks if t.feature_name == "auth")
    assert "schema: built schema" in auth.prompt


def test_verify_failure_is_a_failed_attempt_and_the_retry_sees_the_output(db_url: str, project: Path) -> None:
    specs = [FeatureSpec("checked", verify="echo missing-endpoint >&2; exit 3", max_attempts=2)]
    queue = make(db_url, project, specs)
    runner = ScriptedRunner(queue, passes)
    summary, _ = supervise(queue, runner)
    assert summary.exit_code == 1
    (feature,) = queue.status_report().features
    assert (feature.status, feature.attempts) == ("failed", 2)
    assert "missing-endpoint" in feature.notes and "exited 3" in feature.notes
    assert len(runner.tasks) == 2
    retry = runner.tasks[1]
    assert retry.resume_session_id == "s-1"
    assert "missing-endpoint" in retry.prompt


def test_a_session_that_never_releases_fails_then_blocks_its_dependents(db_url: str, project: Path) -> None:
    async def silent(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        return AgentOutcome(Ending.COMPLETED, session_id="s", reminders_sent=task.reminders)

    queue = make(db_url, project, [FeatureSpec("mute"), FeatureSpec("after", depends_on=("mute",))])
    runner = ScriptedRunner(queue, silent)
    summary, _ = supervise(queue, runner)
    assert summary.exit_code == 1
    assert statuses(queue) == {"mute": "failed", "after": "blocked"}
    (mute, _) = queue.status_report().features
    assert mute.attempts == 3 and "without feature_release" in mute.notes
    assert [r.outcome for r in queue.runs(mute.id)] == ["failed"] * 3


def test_rejected_credentials_stop_the_run_without_using_attempts(db_url: str, project: Path) -> None:
    async def unauthorised(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        return AgentOutcome(Ending.AUTH_ERROR, "the API rejected the credentials (401): Invalid API key")

    queue = make(db_url, project)
    summary, _ = supervise(queue, ScriptedRunner(queue, unauthorised))
    assert summary.exit_code == 2
    assert "401" in summary.stop_reason and "ANTHROPIC_API_KEY" in summary.stop_reason
    features = queue.status_report().features
    assert {f.status for f in features} == {"pending"}
    assert all(f.attempts == 0 for f in features)
    assert queue.file_locks() == []


def test_an_outage_pauses_claims_and_the_run_resumes_by_itself(db_url: str, project: Path) -> None:
    calls = {"n": 0}

    async def flaky_api(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        calls["n"] += 1
        if calls["n"] <= 2:
            return AgentOutcome(Ending.API_UNAVAILABLE, "API unavailable (529): Overloaded", api_error_status=529)
        return await passes(task, runner)

    specs = [FeatureSpec("a"), FeatureSpec("b", depends_on=("a",))]
    queue = make(db_url, project, specs)
    runner = ScriptedRunner(queue, flaky_api)
    started = time.monotonic()
    summary, _ = supervise(queue, runner, max_agents=1, backoff_initial_seconds=0.2)
    assert summary.exit_code == 0
    # Only the sessions that did the work count: one each, the outage used none.
    assert all(f.attempts == 1 for f in queue.status_report().features)
    # Two failures back off 0.2 s then 0.4 s before the third try.
    assert time.monotonic() - started >= 0.6


def test_a_long_outage_gives_up_with_a_clear_cause(db_url: str, project: Path) -> None:
    async def down(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        return AgentOutcome(Ending.API_UNAVAILABLE, "API unavailable (500): Internal", api_error_status=500)

    queue = make(db_url, project, [FeatureSpec("a")])
    summary, _ = supervise(queue, ScriptedRunner(queue, down), backoff_initial_seconds=0.05, outage_limit_seconds=0.3)
    assert summary.exit_code == 1
    assert "unavailable" in summary.stop_reason
    assert statuses(queue) == {"a": "pending"}


def test_writes_are_guarded_by_file_locks_between_agents(db_url: str, project: Path) -> None:
    one_locked, two_denied, one_released = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: dict[str, list] = {"one": [], "two": []}

    async def contend(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        bounded = lambda event: asyncio.wait_for(event.wait(), 10)  # noqa: E731
        if task.feature_name == "one":
            seen["one"].append(await task.guard_write(str(project / "shared.py")))
            one_locked.set()
            await bounded(two_denied)
            await asyncio.to_thread(runner.queue.release_file, "shared.py", task.agent_id)
            one_released.set()
        else:
            await bounded(one_locked)
            seen["two"].append(await task.guard_write("./shared.py"))
            two_denied.set()
            await bounded(one_released)
            seen["two"].append(await task.guard_write("shared.py"))
        seen[task.feature_name].append(await task.guard_write("/etc/passwd"))
        return await passes(task, runner)

    queue = make(db_url, project, [FeatureSpec("one"), FeatureSpec("two")])
    summary, _ = supervise(queue, ScriptedRunner(queue, contend))
    assert summary.exit_code == 0
    assert [d.allowed for d in seen["one"]] == [True, False]
    assert [d.allowed for d in seen["two"]] == [False, True, False]
    assert "held by feature #1 (one)" in seen["two"][0].reason
    assert "outside the project" in seen["two"][2].reason
    assert queue.file_locks() == []


def test_rate_limit_pressure_halves_concurrency_which_then_recovers_one_agent_at_a_time(
    db_url: str, project: Path
) -> None:
    specs = [FeatureSpec(f"f{i}") for i in range(16)]
    queue = make(db_url, project, specs)
    seen: list[int] = []  # sessions running when each one started
    first_wave = asyncio.Event()

    async def behaviour(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        seen.append(runner.running)
        if runner.running == 8:
            # Eight running: one of them hears the rate-limit warning before any 429 arrives.
            warning = ActivityEvent(task.feature_id, "rate_limit", "allowed_warning", 1, 0.0, 0.9)
            runner.activity[task.feature_id](warning)
            first_wave.set()
        await asyncio.wait_for(first_wave.wait(), 30)
        return await passes(task, runner)

    runner = ScriptedRunner(queue, behaviour)
    summary, supervisor = supervise(queue, runner, max_agents=8)
    assert summary.exit_code == 0
    assert seen[:8] == list(range(1, 9))
    later = seen[8:]
    assert len(later) == 8 and max(later[:4]) <= 4  # halved to 4, not refilled to 8
    assert 4 < supervisor.limit < 8  # four clean sessions at 4 earned the fifth agent back


# -- database faults ---------------------------------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_an_outside_sqlite_writer_holding_the_lock_for_seconds_only_delays_the_run(
    sqlite_url: str, project: Path
) -> None:
    queue = make(sqlite_url, project, DAG[:3])
    holder: list[subprocess.Popen[str]] = []

    async def blocked_mid_session(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        if not holder:
            path = sqlite_url.removeprefix("sqlite:///")
            argv = [sys.executable, "-c", HOLD_LOCK, path, "3"]
            proc = await asyncio.to_thread(subprocess.Popen, argv, stdout=subprocess.PIPE, text=True)
            holder.append(proc)
            assert await asyncio.to_thread(proc.stdout.readline) == "locked\n"
        return await passes(task, runner)  # its report waits on the lock, then goes through

    started = time.monotonic()
    summary, _ = supervise(queue, ScriptedRunner(queue, blocked_mid_session))
    assert holder[0].wait(10) == 0
    assert summary.exit_code == 0 and summary.stop_reason is None
    assert set(statuses(queue).values()) == {"passing"}
    assert time.monotonic() - started >= 3  # it waited for the writer rather than failing


@pytest.mark.postgres
def test_a_postgresql_restart_mid_run_is_ridden_out(pg_server, pg_url: str, project: Path) -> None:
    queue = make(pg_url, project)
    restarted: list[bool] = []

    async def restart_once(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        if task.feature_name == "auth" and not restarted:
            restarted.append(True)
            # Every pooled connection dies; sessions of other features are running meanwhile.
            await asyncio.to_thread(pg_server.restart)
        return await passes(task, runner)

    summary, _ = supervise(queue, ScriptedRunner(queue, restart_once))
    assert restarted
    assert summary.exit_code == 0, summary.stop_reason
    assert set(statuses(queue).values()) == {"passing"}


@pytest.mark.postgres
def test_a_database_that_stays_down_stops_the_run_with_its_cause(pg_server, pg_url: str, project: Path) -> None:
    queue = make(pg_url, project, DAG[:1])

    async def pull_the_plug(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        await runner.report(task, "passing", "done")
        await asyncio.to_thread(pg_server.stop, "fast")  # "immediate" would lose the unsynced commits
        return AgentOutcome(Ending.COMPLETED, session_id="s", num_turns=1, model=task.model)

    try:
        started = time.monotonic()
        summary, _ = supervise(queue, ScriptedRunner(queue, pull_the_plug), database_outage_seconds=2)
        took = time.monotonic() - started
    finally:
        pg_server.start_existing()
    assert summary.exit_code == 1
    assert "the database is unavailable" in (summary.stop_reason or "")
    assert took < 30
    # Nothing was lost: the claim is still leased, so it returns to pending when the lease expires.
    feature = queue.status_report().features[0]
    assert feature.status == "claimed"


def test_a_rate_limit_pause_lasts_at_least_as_long_as_the_api_asked(db_url: str, project: Path) -> None:
    calls = {"n": 0}

    async def limited_once(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        calls["n"] += 1
        if calls["n"] == 1:
            return AgentOutcome(
                Ending.API_UNAVAILABLE, "API unavailable (429): Rate limited", api_error_status=429, retry_after_s=1.5
            )
        return await passes(task, runner)

    queue = make(db_url, project, [FeatureSpec("a")])
    runner = ScriptedRunner(queue, limited_once)
    summary, _ = supervise(queue, runner, max_agents=1, backoff_initial_seconds=0.1)
    assert summary.exit_code == 0
    assert runner.started and calls["n"] == 2
    gap = runner.finished["a"] - runner.started["a"]  # first start to the end of the retry
    assert gap >= 1.5


def test_running_sessions_never_share_a_slot_and_a_freed_slot_is_reused(sqlite_url: str, project: Path) -> None:
    queue = make(sqlite_url, project, [FeatureSpec(name=f"f{i}") for i in range(7)])
    running: dict[str, str] = {}  # slot -> feature, while its session runs
    used: list[tuple[str, str, str]] = []

    async def behaviour(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        slot = task.env["AGENT_MANAGER_SLOT"]
        assert slot not in running, f"{task.feature_name} got slot {slot} of running {running[slot]}"
        assert (task.env["AGENT_MANAGER_FEATURE_ID"], task.env["AGENT_MANAGER_FEATURE_NAME"]) == (
            str(task.feature_id), task.feature_name,
        )  # fmt: skip
        running[slot] = task.feature_name
        used.append((task.feature_name, slot, task.env["AGENT_MANAGER_FEATURE_ID"]))
        try:
            if len(used) <= 3:
                await runner.running_at_once(3)
            return await passes(task, runner)
        finally:
            del running[slot]

    summary, _ = supervise(queue, ScriptedRunner(queue, behaviour), max_agents=3)

    assert summary.exit_code == 0
    assert len(used) == 7
    assert sorted(slot for _, slot, _ in used[:3]) == ["0", "1", "2"]
    assert {slot for _, slot, _ in used} == {"0", "1", "2"}  # later sessions took freed slots


@pytest.mark.parametrize("escalation", [("haiku", "sonnet", "opus"), ()], ids=["ladder", "off"])
def test_a_failed_attempt_s_retry_runs_one_model_up_the_escalation_ladder(
    sqlite_url: str, project: Path, escalation: tuple[str, ...]
) -> None:
    specs = [
        FeatureSpec(name="tests", category="testing"),  # haiku by category
        FeatureSpec(name="pinned", model="claude-opus-4-1"),  # not on the ladder: kept
    ]
    queue = make(sqlite_url, project, specs, max_attempts=4)

    async def fails_three_times(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        if sum(t.feature_name == task.feature_name for t in runner.tasks) <= 3:
            await runner.report(task, "failed", "not yet")
            return AgentOutcome(Ending.COMPLETED, session_id=f"s-{task.feature_id}", model=task.model)
        return await passes(task, runner)

    runner = ScriptedRunner(queue, fails_three_times)
    summary, _ = supervise(queue, runner, escalation=escalation, max_attempts=4)

    assert summary.exit_code == 0
    models = {name: [t.model for t in runner.tasks if t.feature_name == name] for name in ("tests", "pinned")}
    if escalation:
        assert models["tests"] == ["haiku", "sonnet", "opus", "opus"]  # the top stays the top
    else:
        assert models["tests"] == ["haiku"] * 4
    assert models["pinned"] == ["claude-opus-4-1"] * 4
    tests = next(f for f in queue.status_report().features if f.name == "tests")
    assert [r.model for r in queue.runs(tests.id)] == models["tests"]  # each attempt records its model


def test_a_failing_notify_command_is_named_on_screen_and_the_run_goes_on(sqlite_url: str, project: Path) -> None:
    queue = make(sqlite_url, project, [FeatureSpec(name="a")])
    out = io.StringIO()
    summary, _ = supervise(
        queue, ScriptedRunner(queue, passes), view=PlainView(out), notify_command="echo no route to host >&2; exit 3"
    )
    assert summary.exit_code == 0
    assert "notify_command `echo no route to host >&2; exit 3` exited 3: no route to host" in out.getvalue()
