"""The supervisor loop: keep up to N agent sessions busy on ready features until none remain.

Its rooms: ``budget`` (what the run may spend), ``throttle`` (rate limits and outages),
``verdict`` (how an attempt ends), ``view`` (what the run shows, and to whom).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from api.errors import AgentManagerError, LeaseLostError, PathOutsideProjectError
from api.queue import FeatureQueue
from api.records import ClaimedFeature, FeatureContext, RunRecord, Status, StatusReport, Verdict
from api.verify import run_verify
from supervisor import verdict as verdicts
from supervisor.budget import Budget
from supervisor.cli_state import feature_config_dir
from supervisor.config import Settings
from supervisor.prompts import retry_prompt, task_prompt
from supervisor.runner import ActivityEvent, AgentOutcome, AgentRunner, AgentTask, Ending, Spend, WriteDecision
from supervisor.sandbox import GIT_WRITES, denied_command
from supervisor.throttle import Throttle
from supervisor.view import AgentState, RunSummary, SupervisorView

__all__ = ["AgentState", "RunSummary", "Supervisor"]  # AgentState and RunSummary live in supervisor.view

log = logging.getLogger("agent_manager.supervisor")

SHUTDOWN_GRACE_S = 10.0
OUTAGE_CHECK_S = 1.0
DOING = {
    "tool": "running {detail}",
    "message": "thinking",
    "waiting_lock": "waiting for a file lock",
    "turn": "turn finished",
    "rate_limit": "rate limit {detail}",
    "api_retry": "API: retrying ({detail})",
}


class Supervisor:
    """Claims ready features and runs one agent session per claim, up to ``max_agents`` at once.

    Read through ``supervisor.view.RunState`` by its view: ``owner``, ``settings``, ``agents``,
    ``limit``, ``paused_until``, ``status_report()``.
    """

    def __init__(self, queue: FeatureQueue, runner: AgentRunner, settings: Settings, view: SupervisorView) -> None:
        self.queue = queue
        self.runner = runner
        self.settings = settings
        self.view = view
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.agents: dict[int, AgentState] = {}
        self.budget = Budget(settings, self.agents, view.note)
        self.throttle = Throttle(settings, view, self._fail, lambda: self._fatal is not None)
        self.given_back = verdicts.GiveBacks(settings.policy.max_attempts)
        self._db = self.throttle.database
        self._tasks: dict[int, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: tuple[str, int] | None = None
        self._lost: set[int] = set()
        self._signals = 0

    @property
    def limit(self) -> int:
        """How many sessions may run at once now (rate limits lower it below ``max_agents``)."""
        return self.throttle.limit

    @property
    def paused_until(self) -> float:
        return self.throttle.paused_until

    @property
    def spent(self) -> float:
        """Cost of this run so far: finished sessions plus what running ones have reported."""
        return self.budget.spent

    def status_report(self) -> StatusReport:
        return self.queue.status_report()

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
                self.throttle.preflight_passed()
                return
            self.throttle.after(problem)
            await self._sleep_or_wake(max(0.0, self.throttle.paused_for()))

    async def _dispatch(self) -> None:
        settled = False  # the queue showed no claim at all, and a claim made after that found nothing
        while not self._stopping and self._fatal is None:
            self._wake.clear()
            paused_for = self.throttle.paused_for()
            claimed: list[ClaimedFeature] = []
            free = self.budget.affordable(self.limit - len(self._tasks))
            if free > 0 and paused_for <= 0:
                claimed = await self._db(self.queue.claim, free, self.owner)
                for claim in claimed:
                    self._start(claim)
            if not self._tasks and self.budget.stop_reason:
                return
            if not self._tasks and not claimed and paused_for <= 0:
                # Nothing ready and nothing of ours running: finished, unless another
                # supervisor still holds features whose success would unblock more.
                report = await self._db(self.queue.status_report)
                if not report.counts.get(Status.CLAIMED):
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

    # -- one agent --------------------------------------------------------------------

    async def _agent(self, claim: ClaimedFeature) -> None:
        cap, cap_source = self.budget.session_cap(claim)
        if cap is not None and cap <= 0:
            await self._out_of_budget(claim, cap_source)
            return
        try:
            model = self.settings.policy.model_for(claim.category, claim.model)
            feature, previous, run = await self._db(
                self.queue.begin_attempt, claim, model, lambda n: str(self._transcript(claim.id, n))
            )
            transcript = self._transcript(claim.id, run.attempt)
        except LeaseLostError:
            return
        except AgentManagerError as exc:
            self.view.note(f"feature #{claim.id}: cannot start: {exc.message}")
            await self._release(claim, Verdict(Status.PENDING, exc.message, count_attempt=False))
            return
        state = AgentState(claim, model, run.attempt, budget_source=cap_source)
        self.agents[claim.id] = state
        self.view.started(state)
        task = self._task(claim, feature, model, transcript, run, previous, budget=cap)
        outcome = await self._run_session(claim, state, task)
        if task.resume_session_id and "No conversation found" in outcome.message:
            # The old session is gone (another host, cleaned state): start afresh with the feedback.
            task = self._task(claim, feature, model, transcript, run, previous, resume=False, budget=cap)
            outcome = await self._run_session(claim, state, task)
        self.budget.account(state, outcome)
        await self._conclude(claim, state, run, outcome)

    def _transcript(self, feature_id: int, attempt: int) -> Path:
        return self.settings.logs_dir / f"feature-{feature_id}-attempt-{attempt}.jsonl"

    async def _out_of_budget(self, claim: ClaimedFeature, source: str | None) -> None:
        verdict = self.budget.refusal(claim, source)
        await self._release(claim, verdict)
        if verdict.give_up:
            self.view.note(f"feature #{claim.id} {claim.name}: failed: {verdict.notes}")
        else:
            self.budget.stop_for_run_cap()

    def _task(
        self,
        claim: ClaimedFeature,
        feature: FeatureContext,
        model: str,
        transcript: Path,
        run: RunRecord,
        previous: list[RunRecord],
        resume: bool = True,
        budget: float | None = None,
    ) -> AgentTask:
        policy = self.settings.policy
        last = previous[-1] if previous else None
        feedback = claim.notes if last is not None and claim.attempts > 0 else None
        resume_id = last.session_id if resume and feedback and last is not None else None
        prompt = retry_prompt(feature, feedback) if resume_id and feedback else task_prompt(feature, feedback)
        same_session = [r for r in previous if resume_id and r.session_id == resume_id]
        resumed = Spend(
            cost_usd=sum(r.cost_usd or 0.0 for r in same_session),
            input_tokens=sum(r.input_tokens or 0 for r in same_session),
            output_tokens=sum(r.output_tokens or 0 for r in same_session),
        )
        env = {"CLAUDE_CONFIG_DIR": str(feature_config_dir(self.settings.state_dir, claim.id))}
        env |= self.throttle.session_env()

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
                False,
                f"`{entry}` is not allowed for agents in this project (bash_deny in .agent-manager/config.toml)"
                + (
                    ": agent-manager commits, merges and switches branches itself; leave your changes in the "
                    "working tree and call feature_release"
                    if entry in GIT_WRITES
                    else ""
                ),
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
            self.throttle.on_activity(event)
            doing = DOING.get(event.kind)
            state.doing = doing.format(detail=event.detail) if doing else event.kind
            self.view.activity(state, event)

        try:
            return await self.runner.run(task, on_activity)
        except asyncio.CancelledError:
            if self._stopping or claim.id in self._lost:
                return state.stopped("stopped by the supervisor")
            raise
        except Exception as exc:
            log.exception("runner failed on feature %s", claim.id)
            return AgentOutcome(Ending.AGENT_ERROR, f"runner error: {exc}")

    async def _conclude(self, claim: ClaimedFeature, state: AgentState, run: RunRecord, outcome: AgentOutcome) -> None:
        record = await self._db(self.queue.run, run.id)
        verdict = verdicts.judge(outcome, record, outcome.model or state.model, state.budget_source)
        if verdicts.stopped_by_run_budget(outcome, record, state.budget_source):
            self.budget.stop_for_run_cap()
        if verdict.status is Status.PASSING and claim.verify:
            state.doing = "verifying"
            self.view.activity(state, ActivityEvent(claim.id, "verify"))
            policy = self.settings.policy
            check = await run_verify(claim.verify, self.settings.project_dir, policy.verify_timeout_seconds)
            verdict, outcome = verdicts.verified(verdict, outcome, claim.verify, check)
        verdict = self.given_back.count(claim.id, verdict, outcome)
        lost = claim.id in self._lost
        # One transaction: the run's record, the verdict and the agent's locks land together.
        result = await self._db(
            self.queue.finish_attempt,
            run.id,
            verdicts.run_fields(verdict, outcome, record),
            claim,
            verdict,
            release=not lost,
        )
        if result is None:
            why = "lease lost; another supervisor owns it now"
            self.view.finished(state, "lost", why if lost else f"result discarded: {why}")
            return
        self.throttle.after(outcome, state.started)
        self.view.finished(state, verdicts.shown(verdict, result.status), verdict.notes)

    async def _release(self, claim: ClaimedFeature, verdict: Verdict) -> None:
        try:
            await self._db(self.queue.release, claim.id, claim.owner, claim.lease_token, verdict)
        except LeaseLostError as exc:
            self.view.note(f"feature #{claim.id}: result discarded: {exc.message}")

    def _fail(self, message: str, code: int) -> None:
        if self._fatal is None:
            self._fatal = (message, code)
            self.view.note(f"stopping: {message}")
        self._wake.set()

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
        scheduler.add_job(self.throttle.check_outage, id="outage", **(common | {"seconds": OUTAGE_CHECK_S}))
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
        elif counts and set(counts) == {Status.PASSING}:
            code = 0
        else:
            code = 1
        return RunSummary(
            counts=counts,
            wall_seconds=wall,
            agent_seconds=self.budget.agent_seconds,
            cost_by_model=self.budget.cost_by_model,
            tokens_by_model=self.budget.tokens_by_model,
            sessions=self.budget.sessions,
            stop_reason=self._fatal[0] if self._fatal else self.budget.summary_note(counts),
            exit_code=code,
            budget_usd=self.settings.max_cost_usd,
        )
