"""The supervisor loop: keep up to N agent sessions busy on ready features until none remain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from api.errors import AgentManagerError, DatabaseError, LeaseLostError, PathOutsideProjectError
from api.queue import FeatureQueue
from api.records import ClaimedFeature, RunRecord, Status, Verdict
from api.verify import run_verify
from supervisor.cli_state import feature_config_dir
from supervisor.config import Settings
from supervisor.prompts import retry_prompt, task_prompt
from supervisor.runner import (
    INFRASTRUCTURE,
    ActivityEvent,
    AgentOutcome,
    AgentRunner,
    AgentTask,
    Ending,
    Spend,
    WriteDecision,
)
from supervisor.sandbox import denied_command

log = logging.getLogger("agent_manager.supervisor")
T = TypeVar("T")

SHUTDOWN_GRACE_S = 10.0
# Rate-limit events that mean "slow down" before the 429s arrive.
RATE_LIMIT_PRESSURE = frozenset({"allowed_warning", "rejected"})
RATE_LIMIT_UTILISATION = 0.8
RATE_LIMIT_CUT_INTERVAL_S = 5.0
# Until a model has answered once in this run, sessions give up after this many CLI retries
# (instead of about ten over three minutes): a wrong key or a dead endpoint shows in seconds.
FIRST_SESSION_RETRIES = "1"
OUTAGE_CHECK_S = 1.0


@dataclass
class AgentState:
    """One running session, as the live view shows it; the figures are this attempt's so far."""

    claim: ClaimedFeature
    model: str
    attempt: int
    started: float = field(default_factory=time.monotonic)
    turns: int = 0
    cost_usd: float = 0.0  # exact: what the CLI stated at the last end of a turn
    cost_estimate: float | None = None  # with the turn in flight; None when cost_usd is current
    input_tokens: int = 0
    output_tokens: int = 0
    session_id: str | None = None
    served_model: str | None = None
    doing: str = "starting"
    last_activity: float = field(default_factory=time.monotonic)
    budget_source: str | None = None  # which cap the session's max_budget_usd came from

    def absorb(self, event: ActivityEvent) -> None:
        self.last_activity = time.monotonic()
        self.turns = max(self.turns, event.num_turns)
        if event.cost_is_estimate:
            self.cost_estimate = event.cost_usd
        else:
            self.cost_usd, self.cost_estimate = event.cost_usd, None
        self.input_tokens = max(self.input_tokens, event.input_tokens)
        self.output_tokens = max(self.output_tokens, event.output_tokens)
        self.session_id = event.session_id or self.session_id
        self.served_model = event.model or self.served_model

    def stopped(self, why: str) -> AgentOutcome:
        """The outcome of a session the supervisor stopped, with what it had spent by then."""
        return AgentOutcome(
            Ending.INTERRUPTED,
            why,
            session_id=self.session_id,
            num_turns=self.turns,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd,
            model=self.served_model,
        )


@dataclass
class RunSummary:
    counts: dict[str, int]
    wall_seconds: float
    agent_seconds: float
    cost_by_model: dict[str, float]
    tokens_by_model: dict[str, tuple[int, int]]
    sessions: int
    stop_reason: str | None
    exit_code: int
    budget_usd: float | None = None


class Supervisor:
    """Claims ready features and runs one agent session per claim, up to ``max_agents`` at once."""

    def __init__(self, queue: FeatureQueue, runner: AgentRunner, settings: Settings, view) -> None:  # noqa: ANN001
        self.queue = queue
        self.runner = runner
        self.settings = settings
        self.view = view
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.agents: dict[int, AgentState] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: tuple[str, int] | None = None
        self._lost: set[int] = set()
        self._given_back: Counter[int] = Counter()
        self._paused_until = 0.0
        self._outage_since: float | None = None
        self._outage_cause = ""
        self._outage_failures = 0
        self._api_answered = False  # a model has answered a session of this run
        self._cli_started = False  # a claude CLI has started a session in this run
        self._signals = 0
        self._cost: dict[str, float] = defaultdict(float)
        self._tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._agent_seconds = 0.0
        self._sessions = 0
        self._budget_stop: str | None = None
        # Concurrency target under rate limits: halved on pressure, back up by one per clean session.
        self.limit = settings.max_agents
        self._last_cut = 0.0
        self._clean_since_cut = 0

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> RunSummary:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        scheduler = self._scheduler()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal)
        self.view.start(self)
        try:
            await self._preflight()
            await self._dispatch()
        finally:
            await self._shutdown()
            scheduler.shutdown(wait=False)
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        summary = await self._summary(time.monotonic() - started)
        self.view.stop(summary)
        return summary

    async def _preflight(self) -> None:
        """Before the first claim: a runner that can check its CLI and API endpoint does.

        A broken CLI or rejected credentials stop the run at once (exit 2); an endpoint that is
        down or is not the Messages API is probed again with backoff until outage_limit_seconds.
        """
        check = getattr(self.runner, "preflight", None)
        if check is None:
            return
        while not self._stopping and self._fatal is None:
            problem = await check()
            if problem is None:
                self._outage_over()
                self._outage_failures = 0  # no session failed: sessions start from the first backoff
                return
            self._after_infrastructure(problem)
            await self._sleep_or_wake(max(0.0, self._paused_until - time.monotonic()))

    async def _dispatch(self) -> None:
        settled = False  # the queue showed no claim at all, and a claim made after that found nothing
        while not self._stopping and self._fatal is None:
            self._wake.clear()
            paused_for = self._paused_until - time.monotonic()
            claimed: list[ClaimedFeature] = []
            free = self._affordable(self.limit - len(self._tasks))
            if free > 0 and paused_for <= 0:
                claimed = await self._db(self.queue.claim, free, self.owner)
                for claim in claimed:
                    self._start(claim)
            if not self._tasks and self._budget_stop:
                return
            if not self._tasks and not claimed and paused_for <= 0:
                # Nothing ready and nothing of ours running: finished, unless another
                # supervisor still holds features whose success would unblock more.
                report = await self._db(self.queue.status_report)
                if not report.counts.get("claimed"):
                    if settled:
                        return
                    # Claim once more first: a release or a reap may have landed after the last claim read.
                    settled = True
                    continue
                settled = False
                await self._sleep_or_wake(self.settings.idle_poll_seconds)
                continue
            settled = False
            if claimed and len(self._tasks) < self.limit:
                continue  # more may be ready right away
            await self._sleep_or_wake(paused_for if paused_for > 0 else None)

    async def _sleep_or_wake(self, seconds: float | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _start(self, claim: ClaimedFeature) -> None:
        task = asyncio.create_task(self._agent(claim), name=f"feature-{claim.id}")
        self._tasks[claim.id] = task

        def done(_: asyncio.Task) -> None:
            self._tasks.pop(claim.id, None)
            self.agents.pop(claim.id, None)
            self._wake.set()

        task.add_done_callback(done)

    # -- the run budget ----------------------------------------------------------------

    @property
    def spent(self) -> float:
        """Cost of this run so far: finished sessions plus what running ones have reported."""
        return sum(self._cost.values()) + sum(state.cost_usd for state in self.agents.values())

    def _affordable(self, free: int) -> int:
        """How many new sessions fit in the run budget, estimating each at the mean so far."""
        cap = self.settings.max_cost_usd
        if cap is None or free <= 0:
            return max(free, 0)
        if self._budget_stop:
            return 0
        mean = sum(self._cost.values()) / self._sessions if self._sessions else 0.0
        # A running session will likely cost about the mean in all, whatever it has reported yet.
        committed = sum(self._cost.values()) + sum(max(s.cost_usd, mean) for s in self.agents.values())
        fits = free if mean == 0 else min(free, int((cap - committed) // mean))
        if committed >= cap or fits <= 0:
            self._stop_for_budget(f"the run budget of ${cap:.2f} is spent or committed (${committed:.4f})")
            return 0
        return fits

    def _stop_for_budget(self, why: str) -> None:
        if self._budget_stop is None:
            self._budget_stop = why
            self.view.note(f"no new features: {why}")

    def _session_budget(self, claim: ClaimedFeature) -> tuple[float | None, str | None]:
        """The tightest of the per-attempt, per-feature and remaining run caps, and which it is."""
        caps: list[tuple[float, str]] = []
        if self.settings.policy.max_budget_usd is not None:
            caps.append((self.settings.policy.max_budget_usd, "attempt"))
        if claim.max_cost_usd is not None:
            caps.append((claim.max_cost_usd - claim.cost_usd, "feature"))
        if self.settings.max_cost_usd is not None:
            others = self.spent - (self.agents[claim.id].cost_usd if claim.id in self.agents else 0.0)
            caps.append((self.settings.max_cost_usd - others, "run"))
        if not caps:
            return None, None
        value, source = min(caps)
        return max(value, 0.0), source

    # -- one agent --------------------------------------------------------------------

    async def _agent(self, claim: ClaimedFeature) -> None:
        policy = self.settings.policy
        budget, budget_source = self._session_budget(claim)
        if budget is not None and budget <= 0:
            await self._out_of_budget(claim, budget_source)
            return
        try:
            model = policy.model_for(claim.category, claim.model)
            feature, previous, run = await self._db(
                self.queue.begin_attempt, claim, model, lambda n: str(self._transcript(claim.id, n))
            )
            attempt = run.attempt
            transcript = self._transcript(claim.id, attempt)
        except LeaseLostError:
            return
        except AgentManagerError as exc:
            self.view.note(f"feature #{claim.id}: cannot start: {exc.message}")
            await self._release(claim, "pending", exc.message, count_attempt=False)
            return
        state = AgentState(claim, model, attempt, budget_source=budget_source)
        self.agents[claim.id] = state
        self.view.started(state)
        task = self._task(claim, feature, model, transcript, run, previous, budget=budget)
        outcome = await self._run_session(claim, state, task)
        if task.resume_session_id and "No conversation found" in outcome.message:
            # The old session is gone (another host, cleaned state): start afresh with the feedback.
            task = self._task(claim, feature, model, transcript, run, previous, resume=False, budget=budget)
            outcome = await self._run_session(claim, state, task)
        self._sessions += 1
        self._account(state, outcome)
        await self._conclude(claim, state, run, outcome, feature)

    def _transcript(self, feature_id: int, attempt: int) -> Path:
        return self.settings.logs_dir / f"feature-{feature_id}-attempt-{attempt}.jsonl"

    async def _out_of_budget(self, claim: ClaimedFeature, source: str | None) -> None:
        if source == "feature":
            why = f"its budget of ${claim.max_cost_usd:.2f} is spent (${claim.cost_usd:.4f})"
            await self._release(claim, "failed", why, give_up=True)
            self.view.note(f"feature #{claim.id} {claim.name}: failed: {why}")
        else:
            await self._release(claim, "pending", "", count_attempt=False)
            self._stop_for_budget(f"the run budget of ${self.settings.max_cost_usd:.2f} is spent")

    def _task(  # noqa: ANN001
        self, claim, feature, model, transcript, run, previous, resume: bool = True, budget: float | None = None
    ) -> AgentTask:
        policy = self.settings.policy
        last = previous[-1] if previous else None
        feedback = claim.notes if last is not None and claim.attempts > 0 else None
        resume_id = last.session_id if resume and feedback and last is not None else None
        prompt = retry_prompt(feature, feedback) if resume_id else task_prompt(feature, feedback)
        same_session = [r for r in previous if resume_id and r.session_id == resume_id]
        resumed = Spend(
            cost_usd=sum(r.cost_usd or 0.0 for r in same_session),
            input_tokens=sum(r.input_tokens or 0 for r in same_session),
            output_tokens=sum(r.output_tokens or 0 for r in same_session),
        )
        env = {"CLAUDE_CONFIG_DIR": str(feature_config_dir(self.settings.state_dir, claim.id))}
        if not self._api_answered and "CLAUDE_CODE_MAX_RETRIES" not in os.environ:
            env["CLAUDE_CODE_MAX_RETRIES"] = FIRST_SESSION_RETRIES

        async def is_released() -> bool:
            record = await self._db(self.queue.run, run.id)
            return record.reported_status is not None

        async def guard_write(path: str) -> WriteDecision:
            try:
                lock = await asyncio.to_thread(self.queue.claim_file, path, claim.agent_id, claim.id)
            except PathOutsideProjectError as exc:
                return WriteDecision(False, f"{exc.message}: agents may only write inside the project")
            except AgentManagerError as exc:
                return WriteDecision(False, exc.message)
            return WriteDecision(lock.success, lock.message)

        def guard_bash(command: str) -> WriteDecision:
            entry = denied_command(command, policy.bash_deny)
            if entry is None:
                return WriteDecision(True)
            return WriteDecision(
                False, f"`{entry}` is not allowed for agents in this project (bash_deny in .agent-manager/config.toml)"
            )

        async def on_session(session_id: str) -> None:
            await self._db(self.queue.set_run_session, run.id, session_id)

        return AgentTask(
            feature_id=claim.id,
            feature_name=claim.name,
            agent_id=claim.agent_id,
            model=model,
            prompt=prompt,
            cwd=self.settings.project_dir,
            transcript_path=transcript,
            identity=self.settings.identity(claim.agent_id, claim.id),
            max_turns=policy.max_turns,
            timeout_s=policy.timeout_for(model),
            stall_s=policy.stall_seconds,
            max_budget_usd=budget,
            fallback_model=policy.fallback_model,
            resume_session_id=resume_id,
            resumed_spend=resumed,
            reminders=policy.reminders,
            is_released=is_released,
            guard_write=guard_write,
            guard_bash=guard_bash,
            on_session=on_session,
            env=env,
            mcp_transport=policy.mcp_server,
        )

    async def _run_session(self, claim: ClaimedFeature, state: AgentState, task: AgentTask) -> AgentOutcome:
        def on_activity(event: ActivityEvent) -> None:
            state.absorb(event)
            self._cli_started = True
            if event.kind in ("message", "tool"):
                self._api_answers()
            elif event.kind == "api_retry":
                self._api_retrying(event)
            elif event.kind == "rate_limit" and (
                event.detail in RATE_LIMIT_PRESSURE or (event.utilization or 0.0) >= RATE_LIMIT_UTILISATION
            ):
                self._slow_down(f"rate limit {event.detail or 'warning'} at {(event.utilization or 0):.0%} use")
            state.doing = {
                "tool": f"running {event.detail}",
                "message": "thinking",
                "waiting_lock": "waiting for a file lock",
                "turn": "turn finished",
                "rate_limit": f"rate limit {event.detail}",
                "api_retry": f"API: retrying ({event.detail})",
            }.get(event.kind, event.kind)
            self.view.activity(state, event)

        try:
            return await self.runner.run(task, on_activity)
        except asyncio.CancelledError:
            if self._stopping or claim.id in self._lost:
                return state.stopped("stopped by the supervisor")
            raise
        except Exception as exc:  # noqa: BLE001 - a runner bug must not take the queue down with it
            log.exception("runner failed on feature %s", claim.id)
            return AgentOutcome(Ending.AGENT_ERROR, f"runner error: {exc}")

    def _api_answers(self) -> None:
        """A model answered: the API works, and the outage clock, if running, stops.

        The backoff between failed sessions keeps growing until one ends without an API error.
        """
        self._api_answered = True
        self._outage_over()

    def _outage_over(self) -> None:
        if self._outage_since is not None:
            self.view.note("the API answers again")
        self._outage_since = None

    def _api_retrying(self, event: ActivityEvent) -> None:
        """The CLI is retrying a request: the outage clock starts now, not after its retries."""
        status = event.api_error_status
        if status is None or status == 429 or status >= 500:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            retried = f"while the claude CLI retried ({event.detail})"
            self._outage_cause = f"API unavailable ({status or 'connection'}) {retried}"

    async def _check_outage(self) -> None:
        """An outage that outlasts outage_limit_seconds stops the run, even mid-retry in the CLI."""
        if self._outage_since is None:
            return
        down = time.monotonic() - self._outage_since
        if down >= self.settings.policy.outage_limit_seconds:
            self._fail(f"gave up after the API was unavailable for {down:.0f} s: {self._outage_cause}", 1)

    async def _conclude(self, claim, state, run: RunRecord, outcome: AgentOutcome, feature) -> None:  # noqa: ANN001
        record = await self._db(self.queue.run, run.id)
        status, notes, count = self._judge(outcome, record)
        give_up = False
        if outcome.over_budget and record.reported_status is None and state.budget_source == "run":
            # Stopped by the run's budget, not by its own failing: back to the queue, no attempt used.
            status, count = "pending", False
            self._stop_for_budget(f"the run budget of ${self.settings.max_cost_usd:.2f} is spent")
        elif outcome.over_budget and record.reported_status is None and state.budget_source == "feature":
            give_up = True  # its whole budget is gone: another attempt could not start
        if status == "passing" and claim.verify:
            state.doing = "verifying"
            self.view.activity(state, ActivityEvent(claim.id, "verify"))
            result = await run_verify(
                claim.verify, self.settings.project_dir, self.settings.policy.verify_timeout_seconds
            )
            if not result.passed:
                status, notes = "failed", result.failure_notes(claim.verify, notes)
                outcome = dataclasses.replace(outcome, message=result.summary(claim.verify))
        reported = record.reported_status is not None
        if status == "pending" and count is False and outcome.ending is Ending.COMPLETED:
            self._given_back[claim.id] += 1
            if self._given_back[claim.id] >= self.settings.policy.max_attempts:
                status, count = "failed", True
                notes = f"{notes}\n(given back {self._given_back[claim.id]} times in this run)".strip()
        model = outcome.model or state.model
        run_fields = {
            "outcome": status if outcome.ending is Ending.COMPLETED or reported else outcome.ending.value,
            "session_id": outcome.session_id,
            "num_turns": outcome.num_turns,
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "cost_usd": outcome.cost_usd,
            "model": model,
            "error": outcome.message or None,
        }
        lost = claim.id in self._lost
        # One transaction: the run's record, the verdict and the agent's locks land together.
        result = await self._db(
            self.queue.finish_attempt,
            run.id,
            run_fields,
            claim,
            Verdict(Status(status), notes, outcome.cost_usd, model, count_attempt=count, give_up=give_up),
            release=not lost,
        )
        if result is None:
            why = "lease lost; another supervisor owns it now"
            self.view.finished(state, "lost", why if lost else f"result discarded: {why}")
            return
        final = result.status
        self._after_infrastructure(outcome, state.started)
        shown = final or status
        if status == "failed" and final == "pending":
            shown = "failed attempt, will retry"
        elif status == "pending" and not count:
            shown = "given back"
        self.view.finished(state, shown, notes)

    def _judge(self, outcome: AgentOutcome, record: RunRecord) -> tuple[str, str, bool]:
        """(status to release with, notes, whether it uses an attempt).

        The agent's own report, once made, is the verdict whatever ended the session after it
        (a Ctrl-C, an API error, a crash): the work it reported on is done and is not redone.
        """
        notes = record.reported_notes or ""
        if record.reported_status == "passing":
            return "passing", notes, True
        if record.reported_status == "failed":
            return "failed", notes or "the agent reported failed", True
        if record.reported_status == "pending":
            return "pending", notes, False
        if outcome.ending in INFRASTRUCTURE:
            return "pending", outcome.message, False
        if outcome.ending is not Ending.COMPLETED:
            return "failed", outcome.message, True
        return "failed", f"the session ended without feature_release after {outcome.reminders_sent} reminder(s)", True

    async def _release(  # noqa: ANN001
        self, claim, status, notes, *, count_attempt=True, cost=0.0, model=None, give_up=False
    ) -> str | None:
        try:
            result = await self._db(
                self.queue.release,
                claim.id,
                claim.owner,
                claim.lease_token,
                status,
                notes,
                cost_usd=cost,
                model=model,
                count_attempt=count_attempt,
                give_up=give_up,
            )
            return result.status
        except LeaseLostError as exc:
            self.view.note(f"feature #{claim.id}: result discarded: {exc.message}")
            return None

    def _after_infrastructure(self, outcome: AgentOutcome, started: float = 0.0) -> None:
        policy = self.settings.policy
        if outcome.ending is Ending.AUTH_ERROR:
            self._fail(f"{outcome.message} (check ANTHROPIC_API_KEY)", 2)
        elif outcome.ending is Ending.SETUP_ERROR and not self._cli_started:
            self._fail(f"{outcome.message} (check the claude CLI install, or cli_path in the config)", 2)
        elif outcome.ending in (Ending.API_UNAVAILABLE, Ending.SETUP_ERROR):
            # A CLI that worked earlier in this run and now fails to start is treated like an
            # outage (memory pressure, a half-finished upgrade): retried, no attempt used.
            if outcome.api_error_status == 429:
                self._slow_down("the API answered 429 (rate limited)")
            now = time.monotonic()
            self._outage_since = self._outage_since or now
            self._outage_cause = outcome.message
            down = now - self._outage_since
            if down >= policy.outage_limit_seconds:
                self._fail(f"gave up after the API was unavailable for {down:.0f} s: {outcome.message}", 1)
                return
            delay = min(policy.backoff_max_seconds, policy.backoff_initial_seconds * 2**self._outage_failures)
            delay = max(delay, outcome.retry_after_s or 0.0)  # what the API asked for, via the CLI
            self._outage_failures += 1
            self._paused_until = max(self._paused_until, now + delay)
            self.view.paused(delay, outcome.message)
        elif outcome.ending is not Ending.INTERRUPTED:
            # The API answered: the outage, if any, is over.
            self._outage_since, self._outage_failures = None, 0
            # Additive increase: one more agent per window of clean sessions started after the cut.
            if self.limit < self.settings.max_agents and started > self._last_cut:
                self._clean_since_cut += 1
                if self._clean_since_cut >= self.limit:
                    self.limit += 1
                    self._clean_since_cut = 0
                    self.view.note(f"concurrency back up to {self.limit} of {self.settings.max_agents}")

    def _slow_down(self, why: str) -> None:
        """Halve the concurrency target, once per burst: sessions hit by the same limit count once."""
        now = time.monotonic()
        if now - self._last_cut < RATE_LIMIT_CUT_INTERVAL_S or self.limit <= 1:
            return
        self._last_cut = now
        self._clean_since_cut = 0
        self.limit = max(1, self.limit // 2)
        self.view.note(f"concurrency lowered to {self.limit} of {self.settings.max_agents}: {why}")

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a queue call off the loop, riding out a database outage (a restart, a busy lock).

        Retries connection failures with backoff for up to ``database_outage_seconds``; after
        that the run stops (exit 1): the leases of what it holds expire and the work is reclaimed.
        """
        limit = self.settings.policy.database_outage_seconds
        started = time.monotonic()
        delay = 0.25
        while True:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except DatabaseError as exc:
                waited = time.monotonic() - started
                if waited >= limit or self._fatal is not None:
                    self._fail(f"the database is unavailable ({exc.message})", 1)
                    raise
                if delay == 0.25:
                    self.view.note(f"database unavailable, retrying for up to {limit:.0f} s: {exc.message}")
                await asyncio.sleep(min(delay, limit - waited))
                delay = min(delay * 2, 5.0)

    def _fail(self, message: str, code: int) -> None:
        if self._fatal is None:
            self._fatal = (message, code)
            self.view.note(f"stopping: {message}")
        self._wake.set()

    def _account(self, state: AgentState, outcome: AgentOutcome) -> None:
        model = outcome.model or state.model
        self._agent_seconds += time.monotonic() - state.started
        self._cost[model] += outcome.cost_usd
        self._tokens[model][0] += outcome.input_tokens
        self._tokens[model][1] += outcome.output_tokens

    # -- leases, signals, shutdown ----------------------------------------------------------

    def _scheduler(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        every = self.settings.lease_seconds / 3
        common = {
            "trigger": "interval",
            "seconds": every,
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": None,
        }
        scheduler.add_job(self._heartbeat, id="heartbeat", **common)
        scheduler.add_job(self._reap, id="reaper", **common)
        scheduler.add_job(self._check_outage, id="outage", **(common | {"seconds": OUTAGE_CHECK_S}))
        scheduler.start()
        return scheduler

    async def _heartbeat(self) -> None:
        held = {fid: state.claim.lease_token for fid, state in self.agents.items()}
        try:
            result = await asyncio.to_thread(self.queue.heartbeat, self.owner, held)
        except AgentManagerError as exc:
            self.view.note(f"heartbeat failed: {exc.message}")
            return
        for fid in result.lost:
            self._lost.add(fid)
            task = self._tasks.get(fid)
            if task is not None:
                self.view.note(f"feature #{fid}: lease lost; stopping its session")
                task.cancel()

    async def _reap(self) -> None:
        try:
            reaped = await asyncio.to_thread(self.queue.reap_expired)
        except AgentManagerError as exc:
            self.view.note(f"reaper failed: {exc.message}")
            return
        if reaped:
            self.view.note(f"returned expired claims to pending: {', '.join(f'#{i}' for i in reaped)}")
            self._wake.set()

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(130)  # a second Ctrl-C: leave now; leases expire and the work is reclaimed
        self.view.note("stopping: giving claimed features back (Ctrl-C again to quit at once)")
        self._stopping = True
        self._fatal = self._fatal or ("interrupted", 130)
        self._wake.set()

    async def _shutdown(self) -> None:
        tasks = list(self._tasks.values())
        if tasks and (self._stopping or self._fatal):
            self._stopping = True
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S if self._stopping else None)
        # Whatever is still ours (a session that would not stop) goes back to the queue.
        with contextlib.suppress(AgentManagerError):
            given = await asyncio.to_thread(self.queue.give_back_all, self.owner)
            if given:
                self.view.note(f"gave back {len(given)} feature(s) to pending")

    async def _summary(self, wall: float) -> RunSummary:
        try:
            counts = (await asyncio.to_thread(self.queue.status_report)).counts
        except AgentManagerError as exc:
            self.view.note(f"cannot read the final status: {exc.message}")
            counts = {}
        if self._fatal is not None:
            code = self._fatal[1]
        elif counts and set(counts) == {"passing"}:
            code = 0
        else:
            code = 1
        return RunSummary(
            counts=counts,
            wall_seconds=wall,
            agent_seconds=self._agent_seconds,
            cost_by_model=dict(self._cost),
            tokens_by_model={m: (t[0], t[1]) for m, t in self._tokens.items()},
            sessions=self._sessions,
            stop_reason=self._fatal[0] if self._fatal else self._budget_note(counts),
            exit_code=code,
            budget_usd=self.settings.max_cost_usd,
        )

    def _budget_note(self, counts: dict[str, int]) -> str | None:
        if self._budget_stop is None:
            return None
        left = counts.get("pending", 0)
        return f"{self._budget_stop}; {left} feature(s) left pending (raise --max-cost to go on)"
