"""The rate-limit window (issue 13, point 3): the CLI's rate-limit events, across sessions, hold new
sessions until ``resets_at`` after a hard limit or when the window is nearly used up, and the run
resumes at its earlier concurrency; no attempt is spent on any of it.

The throttle's rules with a fake clock, the supervisor with a scripted runner, and the real CLI
against the scripted model's hard limit (`FakeModelServer.limit_until`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from supervisor.claude_runner import ClaudeRunner
from supervisor.config import Settings
from supervisor.live import PlainView
from supervisor.loop import AgentState
from supervisor.routing import AgentPolicy
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending
from supervisor.scripted_model import (
    SUBSCRIPTION_ENV,
    FakeModelServer,
    Reply,
    cli_options,
    isolated_cli_env,
    rate_limit_headers,
    run_query,
)
from supervisor.scripted_model.agents import Agents
from supervisor.throttle import RATE_WINDOW_MARGIN_S, Throttle
from supervisor.view import RunSummary
from tests.support.runners import ScriptedRunner, passes
from tests.support.supervise import supervise

# -- the throttle's rules, on a fake clock -------------------------------------------------------


class Clocks:
    """A monotonic clock and a wall clock that move together, by hand."""

    def __init__(self) -> None:
        self.mono = 1_000.0
        self.unix = 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.unix += seconds


class Told:
    """What a throttle tells its view, and the run's wind-downs."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, str]] = []
        self.notes: list[str] = []
        self.wound_down: list[tuple[str, str]] = []  # (why, then): new claims stopped for the run

    def paused(self, seconds: float, reason: str) -> None:
        self.pauses.append((seconds, reason))

    def note(self, text: str) -> None:
        self.notes.append(text)


def throttle(tmp_path: Path, max_agents: int = 4, **policy: float) -> tuple[Throttle, Clocks, Told, list[str]]:
    settings = Settings(
        project_dir=tmp_path,
        database_url="sqlite://",
        features_file=tmp_path / "features.json",
        max_agents=max_agents,
        policy=AgentPolicy(**{"outage_limit_seconds": 600, **policy}),  # type: ignore[arg-type]
    )
    clocks, told, failures = Clocks(), Told(), []
    fail = lambda message, code: failures.append(message)  # noqa: E731
    wind_down = lambda why, then: told.wound_down.append((why, then))  # noqa: E731
    made = Throttle(
        settings,
        told,
        fail,
        lambda: bool(failures),
        wind_down,
        clock=lambda: clocks.mono,
        wall=lambda: clocks.unix,  # type: ignore[arg-type]
    )
    return made, clocks, told, failures


def window(status: str, resets_in: float | None, clocks: Clocks, utilization: float | None = None) -> ActivityEvent:
    resets_at = None if resets_in is None else clocks.unix + resets_in
    return ActivityEvent(
        1, "rate_limit", status, utilization=utilization, resets_at=resets_at, rate_limit_type="five_hour"
    )


LIMITED = AgentOutcome(
    Ending.API_UNAVAILABLE, "API unavailable (429): You've hit your 5-hour limit", api_error_status=429
)


def test_a_hard_limit_holds_claims_until_resets_at_and_is_no_outage(tmp_path: Path) -> None:
    t, clocks, told, failures = throttle(tmp_path)
    t.on_activity(window("rejected", 1_000, clocks))
    assert t.paused_for() == pytest.approx(1_000 + RATE_WINDOW_MARGIN_S)
    ((seconds, reason),) = told.pauses
    assert seconds == pytest.approx(1_000 + RATE_WINDOW_MARGIN_S)
    clock = f"{datetime.fromtimestamp(clocks.unix + 1_000):%H:%M:%S}"
    assert reason.startswith("rate limit: sleeping until ")  # the day too, if it is not today
    assert reason.endswith(f"{clock} (resets_at; five_hour limit reached)")
    assert t.limit == 4  # waiting, not halving

    # The sessions that hit it end with a 429: no halving, no backoff, no outage clock...
    t.on_activity(ActivityEvent(2, "api_retry", "429 rate_limit", api_error_status=429))
    t.after(LIMITED, started=clocks.mono - 1)
    t.after(LIMITED, started=clocks.mono - 1)
    assert t.limit == 4 and len(told.pauses) == 1
    # ...so a wait longer than outage_limit_seconds does not stop the run.
    clocks.advance(700)
    asyncio.run(t.check_outage())
    assert failures == []
    assert t.paused_for() == pytest.approx(300 + RATE_WINDOW_MARGIN_S)
    # The same limit heard from another session changes nothing.
    t.on_activity(window("rejected", 300, clocks))
    assert len(told.pauses) == 1

    clocks.advance(300 + RATE_WINDOW_MARGIN_S)
    assert t.paused_for() <= 0
    assert t.limit == 4
    assert told.notes[-1] == "rate limit: the window has reset; up to 4 agent(s) again"


def test_after_the_reset_the_run_resumes_at_the_concurrency_it_had_before_the_window(tmp_path: Path) -> None:
    t, clocks, told, _ = throttle(tmp_path, max_agents=8)
    t.on_activity(window("allowed_warning", 600, clocks, utilization=0.85))  # pressure: halved
    assert t.limit == 4 and t.paused_for() <= 0
    clocks.advance(10)
    t.after(LIMITED, started=clocks.mono - 1)  # a plain 429 before the window is used up: halved again
    assert t.limit == 2
    clocks.advance(10)
    t.on_activity(window("allowed_warning", 580, clocks, utilization=0.96))  # nearly used up: hold
    assert t.paused_for() == pytest.approx(580 + RATE_WINDOW_MARGIN_S)
    assert "five_hour window 96% used" in told.pauses[-1][1]

    clocks.advance(580 + RATE_WINDOW_MARGIN_S)
    assert t.paused_for() <= 0
    assert t.limit == 8  # the concurrency before the window, not the halved one


def test_the_latest_event_wins(tmp_path: Path) -> None:
    t, clocks, told, _ = throttle(tmp_path)
    t.on_activity(window("rejected", 60, clocks))
    assert t.paused_for() > 0
    clocks.advance(5)
    t.on_activity(ActivityEvent(1, "rate_limit", "allowed"))  # a request went through after all
    assert t.paused_for() <= 0
    assert "claims resume" in told.notes[-1]
    # A later limit with a later reset moves the hold.
    t.on_activity(window("rejected", 30, clocks))
    t.on_activity(window("rejected", 90, clocks))
    assert t.paused_for() == pytest.approx(90 + RATE_WINDOW_MARGIN_S)
    assert len(told.pauses) == 3


@pytest.mark.parametrize("resets_in", [None, -5.0], ids=["no reset", "reset passed"])
def test_a_hard_limit_without_a_future_reset_only_halves(tmp_path: Path, resets_in: float | None) -> None:
    t, clocks, told, _ = throttle(tmp_path)
    t.on_activity(window("rejected", resets_in, clocks))
    assert t.paused_for() <= 0 and told.pauses == []
    assert t.limit == 2


def test_a_window_below_the_threshold_holds_nothing(tmp_path: Path) -> None:
    t, clocks, told, _ = throttle(tmp_path)
    t.on_activity(window("allowed", 3_600, clocks, utilization=0.5))
    assert t.paused_for() <= 0 and t.limit == 4 and told.pauses == []


def test_a_window_that_resets_later_than_the_longest_wait_winds_the_run_down_instead(tmp_path: Path) -> None:
    t, clocks, told, failures = throttle(tmp_path, rate_limit_max_wait_seconds=3_600)
    t.on_activity(window("rejected", 3_500, clocks))  # within the hour: slept through, as before
    assert told.wound_down == [] and len(told.pauses) == 1
    clocks.advance(3_500 + RATE_WINDOW_MARGIN_S)
    assert t.paused_for() <= 0

    weekly = ActivityEvent(1, "rate_limit", "rejected", resets_at=clocks.unix + 5 * 86_400, rate_limit_type="seven_day")
    t.on_activity(weekly)
    until = f"{datetime.fromtimestamp(clocks.unix + 5 * 86_400):%a %d %b %H:%M:%S}"
    assert told.wound_down == [
        (
            f"rate limit: seven_day limit reached until {until}, 5.0 days away "
            "(more than rate_limit_max_wait_seconds, 60 min)",
            f"run again after {until}",
        )
    ]
    assert len(told.pauses) == 1  # no "sleeping until" for a wait it will not make
    assert t.paused_for() > 0  # and no session starts meanwhile
    assert failures == []  # running sessions are not stopped: they finish

    # A serve-mode supervisor is a service: it sleeps until the reset, however far.
    served, clocks, told, _ = throttle(tmp_path, rate_limit_max_wait_seconds=3_600)
    served.settings = dataclasses.replace(served.settings, serve=True)
    served.on_activity(window("rejected", 5 * 86_400, clocks))
    assert told.wound_down == [] and told.pauses[0][1].startswith("rate limit: sleeping until ")


# -- the supervisor, with a scripted runner ------------------------------------------------------


def make(url: str, project: Path, names: list[str]) -> FeatureQueue:
    db = Database(url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project, lease_seconds=30)
    queue.import_specs([FeatureSpec(name) for name in names])
    return queue


def test_a_hard_limit_with_resets_at_makes_the_loop_sleep_until_then_and_start_nothing_meanwhile(
    sqlite_url: str, project: Path
) -> None:
    queue = make(sqlite_url, project, ["hit", "running", "later-1", "later-2", "later-3"])
    starts: list[tuple[float, str]] = []  # (Unix time, feature) of every session
    limit: dict[str, float] = {}

    async def behaviour(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        starts.append((time.time(), task.feature_name))
        if task.feature_name == "hit" and not limit:
            await runner.running_at_once(2)
            limit["heard"] = time.time()
            limit["resets_at"] = resets_at = time.time() + 2
            hard = ActivityEvent(
                task.feature_id, "rate_limit", "rejected", resets_at=resets_at, rate_limit_type="five_hour"
            )
            runner.activity[task.feature_id](hard)
            return LIMITED  # what the CLI's session ends with after a rejected 429
        if task.feature_name == "running":
            await asyncio.sleep(0.5)  # still running when the limit is heard: it carries on and ends
        return await passes(task, runner)

    out = io.StringIO()
    summary, supervisor = supervise(
        queue, ScriptedRunner(queue, behaviour), max_agents=2, view=PlainView(out), backoff_initial_seconds=0.2
    )

    assert summary.exit_code == 0
    assert {f.name: f.status for f in queue.status_report().features} == dict.fromkeys(
        ["hit", "running", "later-1", "later-2", "later-3"], "passing"
    )
    during = [name for at, name in starts if limit["heard"] < at < limit["resets_at"]]
    assert during == []
    after = [at for at, _ in starts if at >= limit["resets_at"]]
    assert len(after) == 4  # "hit" again and the three others
    assert min(after) - limit["resets_at"] < RATE_WINDOW_MARGIN_S + 1.5
    # No attempt spent: "hit" ran twice and counts one attempt, the one that passed.
    hit = next(f for f in queue.status_report().features if f.name == "hit")
    assert hit.attempts == 1
    assert [r.outcome for r in queue.runs(hit.id)] == ["api_unavailable", "passing"]
    assert supervisor.limit == 2
    clock = f"{datetime.fromtimestamp(limit['resets_at']):%H:%M:%S}"
    assert f"rate limit: sleeping until {clock} (resets_at; five_hour limit reached)" in out.getvalue()
    queue.db.dispose()


def test_a_weekly_limit_ends_the_run_once_its_sessions_finish_and_says_when_to_come_back(
    sqlite_url: str, project: Path
) -> None:
    queue = make(sqlite_url, project, ["hit", "running", "later-1", "later-2"])
    starts: list[str] = []
    resets_at = time.time() + 3 * 86_400

    async def behaviour(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        starts.append(task.feature_name)
        if task.feature_name == "hit":
            await runner.running_at_once(2)
            weekly = ActivityEvent(
                task.feature_id, "rate_limit", "rejected", resets_at=resets_at, rate_limit_type="seven_day"
            )
            runner.activity[task.feature_id](weekly)
            return LIMITED
        await asyncio.sleep(0.5)  # still running when the limit is heard: it finishes
        return await passes(task, runner)

    out = io.StringIO()
    started = time.monotonic()
    summary, _ = supervise(queue, ScriptedRunner(queue, behaviour), max_agents=2, view=PlainView(out))

    assert time.monotonic() - started < 30  # it did not sleep until the reset
    assert summary.exit_code == 1
    assert sorted(starts) == ["hit", "running"]  # nothing started after the limit was heard
    report = {f.name: f for f in queue.status_report().features}
    assert {name: f.status for name, f in report.items()} == {
        "hit": "pending", "running": "passing", "later-1": "pending", "later-2": "pending",
    }  # fmt: skip
    assert report["hit"].attempts == 0  # the limit used no attempt
    until = f"{datetime.fromtimestamp(resets_at):%a %d %b %H:%M:%S}"
    assert summary.stop_reason is not None
    assert summary.stop_reason.endswith(f"3 feature(s) left pending (run again after {until})")
    assert "seven_day limit reached" in out.getvalue()
    queue.db.dispose()


# -- the real CLI against the scripted model's hard limit ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("credentials", ["api key", "subscription"])
def test_the_cli_turns_the_unified_headers_into_an_event_only_on_subscription_credentials(
    tmp_path: Path, credentials: str
) -> None:
    resets_at = round(time.time()) + 3_600
    with FakeModelServer(lambda req: Reply.text("hi")) as server:
        server.response_headers = rate_limit_headers("allowed", resets_at, utilization=0.42)
        env = SUBSCRIPTION_ENV if credentials == "subscription" else {}
        run = asyncio.run(run_query("hello", cli_options(server.base_url, tmp_path, env=env)))
    events = [m for m in run.messages if type(m).__name__ == "RateLimitEvent"]
    assert run.result is not None and run.result.result == "hi"
    if credentials == "api key":
        assert events == []
        return
    (event,) = events
    info = event.rate_limit_info
    assert (info.status, info.resets_at, info.utilization) == ("allowed", resets_at, None)  # no warning: no utilization
    assert info.raw["unifiedWindows"]["five_hour"] == {"utilization": 0.42, "resetsAt": resets_at, "status": "allowed"}


class Starts(PlainView):
    """The plain view, keeping when each session started (Unix time)."""

    def __init__(self) -> None:
        self.text = io.StringIO()
        super().__init__(self.text)
        self.starts: list[tuple[float, str]] = []
        self.rate_events: list[ActivityEvent] = []

    def started(self, state: AgentState) -> None:
        self.starts.append((time.time(), state.claim.name))
        super().started(state)

    def activity(self, state: AgentState, event: ActivityEvent) -> None:
        if event.kind == "rate_limit":
            self.rate_events.append(event)
        super().activity(state, event)


def supervise_while_limited(
    queue: FeatureQueue, tmp_path: Path, resets_at: float, window: str = "five_hour"
) -> tuple[RunSummary, Starts, list[Any]]:
    """A run of 2 agents with the real CLI (subscription credentials) against a scripted model whose
    `window` is used up until ``resets_at``: its summary, what its view saw, the model's requests."""
    view = Starts()
    with FakeModelServer(Agents()) as server:
        server.limit_until(resets_at, window=window)
        runner = ClaudeRunner(extra_env=isolated_cli_env(server.base_url, tmp_path / "cli", **SUBSCRIPTION_ENV))
        try:
            summary, _ = supervise(queue, runner, max_agents=2, view=view, timeout=120, backoff_initial_seconds=0.2)
        finally:
            runner.close()
        return summary, view, list(server.requests)


@pytest.mark.slow
def test_the_real_cli_reports_a_hard_limit_and_the_run_sleeps_until_it_resets(
    sqlite_url: str, project: Path, tmp_path: Path
) -> None:
    queue = make(sqlite_url, project, ["alpha", "beta"])
    resets_at = round(time.time()) + 4  # whole seconds, as the real API sends it
    summary, view, requests = supervise_while_limited(queue, tmp_path, resets_at)

    assert summary.exit_code == 0, summary.stop_reason
    assert {f.name: (f.status, f.attempts) for f in queue.status_report().features} == {
        "alpha": ("passing", 1),
        "beta": ("passing", 1),
    }
    # The CLI turned the 429's headers into a RateLimitEvent; the runner passed its window on.
    hard = [e for e in view.rate_events if e.detail == "rejected"]
    assert hard and all(e.resets_at == resets_at and e.rate_limit_type == "five_hour" for e in hard)
    assert hard[0].utilization == 1.0
    # Two sessions hit the limit at once; none started until it reset; both then passed.
    first = [name for at, name in view.starts if at < resets_at]
    assert sorted(first) == ["alpha", "beta"]
    assert sorted(name for at, name in view.starts if at >= resets_at) == ["alpha", "beta"]
    assert all(r.kind == "http_error:429" for r in requests if r.ts < resets_at)
    assert all(not r.kind.startswith("http_error") for r in requests if r.ts >= resets_at)
    assert "rate limit: sleeping until" in view.text.getvalue()
    for feature in queue.status_report().features:
        assert [r.outcome for r in queue.runs(feature.id)] == ["api_unavailable", "passing"]
    queue.db.dispose()


@pytest.mark.slow
def test_the_real_cli_reports_a_weekly_limit_and_the_run_ends_saying_when_to_come_back(
    sqlite_url: str, project: Path, tmp_path: Path
) -> None:
    queue = make(sqlite_url, project, ["alpha", "beta"])
    resets_at = round(time.time()) + 3 * 86_400
    summary, view, _ = supervise_while_limited(queue, tmp_path, resets_at, window="seven_day")

    assert summary.exit_code == 1
    until = f"{datetime.fromtimestamp(resets_at):%a %d %b %H:%M:%S}"
    assert summary.stop_reason == (
        f"rate limit: seven_day limit reached until {until}, 3.0 days away (more than "
        f"rate_limit_max_wait_seconds, 6.0 h); 2 feature(s) left pending (run again after {until})"
    )
    # Both sessions hit the limit and none started after it; no attempt was spent.
    assert sorted(name for _, name in view.starts) == ["alpha", "beta"]
    for feature in queue.status_report().features:
        assert (feature.status, feature.attempts) == ("pending", 0)
        assert [r.outcome for r in queue.runs(feature.id)] == ["api_unavailable"]
    assert "sleeping until" not in view.text.getvalue()
    queue.db.dispose()
