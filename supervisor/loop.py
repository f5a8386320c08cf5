"""The supervisor loop: keep up to N agent sessions busy on ready features until none remain.

Its rooms: ``budget`` (what the run may spend), ``throttle`` (rate limits and outages),
``verdict`` (how an attempt ends), ``integration`` (worktrees, the merge queue, commits),
``view`` (what the run shows, and to whom).
"""

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
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from api import dag, estimates
from api.changes import ChangeWatcher
from api.errors import AgentManagerError, LeaseLostError, PathOutsideProjectError
from api.identity import ENV_FEATURE_ID, ENV_FEATURE_NAME, ENV_SLOT
from api.queue import FeatureQueue
from api.records import ClaimedFeature, Decision, FeatureContext, RunRecord, Status, StatusReport, Verdict
from api.verify import run_verify
from supervisor import verdict as verdicts
from supervisor.budget import Budget
from supervisor.cli_state import feature_config_dir
from supervisor.config import Settings
from supervisor.display import usd
from supervisor.gitrepo import commit_message
from supervisor.integration import GitPlan, Integration, Landing, SetupFailed
from supervisor.notify import Notifier
from supervisor.prompts import continue_prompt, repair_prompt, retry_prompt, system_append, task_prompt
from supervisor.runner import (
    ActivityEvent,
    AgentOutcome,
    AgentRunner,
    AgentTask,
    Ending,
    Spend,
    Steering,
    WriteDecision,
)
from supervisor.sandbox import GIT_WRITES, denied_command
from supervisor.throttle import Throttle
from supervisor.view import AgentState, RunSummary, SupervisorView

__all__ = ["AgentState", "RunSummary", "Supervisor"]  # AgentState and RunSummary live in supervisor.view

# Outcomes of attempts that ended through no fault of the agent, and how its next session is told.
CUT_SHORT = {
    "expired": "its supervisor stopped",
    "interrupted": "its supervisor was stopped",
    "api_unavailable": "the API was unavailable",
}

log = logging.getLogger("agent_manager.supervisor")

SHUTDOWN_GRACE_S = 10.0
OUTAGE_CHECK_S = 1.0
REORDER_S = 10.0  # estimates follow the finished attempts at most this often
CONTROL_CHECK_S = 1.0  # stop and nudge requests are acted on within this (plus a database round trip)
PERMISSION_POLL_S = 0.5
DOING = {
    "tool": "running {detail}",
    "message": "thinking",
    "waiting_lock": "waiting for a file lock",
    "turn": "turn finished",
    "rate_limit": "rate limit {detail}",
    "api_retry": "API: retrying ({detail})",
    "verify": "verifying",
    "merge_wait": "waiting for the merge queue",
    "merge": "merging",
    "setup": "preparing its worktree",
    "permission": "waiting for permission: {detail}",
    "nudge": "told: {detail}",
}


class Supervisor:
    """Claims ready features and runs one agent session per claim, up to ``max_agents`` at once.

    Read through ``supervisor.view.RunState`` by its view: ``owner``, ``settings``, ``agents``,
    ``limit``, ``paused_until``, ``status_report()``.
    """

    def __init__(
        self,
        queue: FeatureQueue,
        runner: AgentRunner,
        settings: Settings,
        view: SupervisorView,
        git: GitPlan | None = None,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.settings = settings
        self.view = view
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.agents: dict[int, AgentState] = {}
        self.budget = Budget(settings, self.agents, view.note)
        self.throttle = Throttle(settings, view, self._fail, lambda: self._fatal is not None, self.budget.stop)
        self.given_back = verdicts.GiveBacks(settings.policy.max_attempts)
        self.notifier = Notifier(settings.policy.notify_command, settings.project_dir, view.note)
        policy = settings.policy
        self.git = Integration(
            git or GitPlan("off"),
            queue,
            self.owner,
            lease_seconds=settings.lease_seconds,
            setup=policy.worktree_setup,
            copy=policy.worktree_copy,
            gate=policy.gate,
            timeout_s=policy.gate_timeout_seconds,
        )
        self._db = self.throttle.database
        self._tasks: dict[int, asyncio.Task] = {}
        self._slots: dict[int, int] = {}  # feature id -> its session's slot (AGENT_MANAGER_SLOT)
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: tuple[str, int] | None = None
        self._lost: set[int] = set()
        self._signals = 0
        self._steering: dict[int, Steering] = {}
        self._stops: dict[int, tuple[str, bool, int]] = {}  # feature -> (reason, requeue, request id)
        self._watcher: ChangeWatcher | None = None
        self._finished_since_reorder = 1  # re-estimate once at start: earlier runs left history

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
            await self._reorder()
            await self._check_budget_forecast()
            await self._dispatch()
        finally:
            await self._shutdown()
            scheduler.shutdown(wait=False)
            if self._watcher is not None:
                self._watcher.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        summary = await self._summary(time.monotonic() - started)
        self.notifier.send("run_end", _summary_line(summary), exit_code=summary.exit_code, counts=summary.counts)
        await self.notifier.drain()
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

    async def _check_budget_forecast(self) -> None:
        """Say at the start when the run's budget looks too small for what is left to do."""
        cap = self.settings.max_cost_usd
        if cap is None:
            return
        try:
            report = await asyncio.to_thread(self.queue.status_report)
        except AgentManagerError:
            return  # the claim that follows names the problem
        forecast = estimates.forecast_cost(report.features)
        if forecast.usd is not None and forecast.usd > cap:
            self.view.note(
                f"the run budget of {usd(cap)} will likely run out: the {forecast.unfinished} unfinished "
                f"features should cost about {usd(forecast.usd)} (an estimate from the {forecast.samples} finished)"
            )

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
                if self.settings.serve:
                    await self._idle()  # serve mode: wait for work added by anyone
                    continue
                # Nothing ready and nothing of ours running: finished, unless another
                # supervisor still holds features whose success would unblock more.
                report = await self._db(self.queue.status_report)
                if not report.counts.get(Status.CLAIMED) and not _ready_left(report):
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

    async def _idle(self) -> None:
        """Serve mode with nothing to do: wake on any change to the queue (an import, an answer,
        a lead's enqueue, another host's release), or after idle_poll_seconds (a reap is due)."""
        if self._watcher is None:
            self._watcher = ChangeWatcher(self.queue.db)
        wake = asyncio.ensure_future(self._wake.wait())
        change = asyncio.ensure_future(self._watcher.wait(self.settings.idle_poll_seconds))
        try:
            await asyncio.wait({wake, change}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if not change.done():
                change.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await change

    async def _sleep_or_wake(self, seconds: float | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _start(self, claim: ClaimedFeature) -> None:
        taken = set(self._slots.values())
        self._slots[claim.id] = next(i for i in range(len(taken) + 1) if i not in taken)
        task = asyncio.create_task(self._guarded(claim), name=f"feature-{claim.id}")
        self._tasks[claim.id] = task

        def done(_: asyncio.Task) -> None:
            self._slots.pop(claim.id, None)
            self._tasks.pop(claim.id, None)
            self.agents.pop(claim.id, None)
            self._steering.pop(claim.id, None)
            self._stops.pop(claim.id, None)
            self._wake.set()

        task.add_done_callback(done)

    def _feature_env(self, claim: ClaimedFeature) -> dict[str, str]:
        """What the agent's commands, worktree_setup, verify and the gate see of their feature:
        its id and name, and a slot number no other session of this supervisor has while it runs
        (0 to max_agents - 1), for ports, databases and the like that must not collide."""
        return {
            ENV_FEATURE_ID: str(claim.id),
            ENV_FEATURE_NAME: claim.name,
            ENV_SLOT: str(self._slots.get(claim.id, 0)),
        }

    # -- one agent --------------------------------------------------------------------

    async def _guarded(self, claim: ClaimedFeature) -> None:
        """One agent, and a failure of the supervisor's own (git refusing, a bug) that stops the run
        rather than leave the feature claimed by a supervisor that waits for it forever."""
        try:
            await self._agent(claim)
            late = self._stops.pop(claim.id, None)
            if late is not None:  # it came while the attempt was verifying or merging: too late to stop
                why = "not applied: the session had already ended"
                await self._db(self.queue.handled_control, late[2], why, self.owner)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("feature %s failed in the supervisor", claim.id)
            message = exc.message if isinstance(exc, AgentManagerError) else f"{type(exc).__name__}: {exc}"
            self._fail(f"feature #{claim.id}: {message.splitlines()[0] if message else 'internal error'}", 2)
            await self._release(claim, Verdict(Status.PENDING, message, count_attempt=False))

    async def _agent(self, claim: ClaimedFeature) -> None:
        if self.throttle.paused_for() > 0:
            # Claimed just before a rate limit (or an outage) paused the run: back to the queue, unused.
            await self._release(claim, Verdict(Status.PENDING, "", count_attempt=False))
            return
        cap, cap_source = self.budget.session_cap(claim)
        if cap is not None and cap <= 0:
            await self._out_of_budget(claim, cap_source)
            return
        try:
            model = self.settings.policy.model_for(claim.category, claim.model, failed=claim.attempts)
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
        workdir = await self._workspace(claim, state, run, previous)
        if workdir is None:
            return
        task = self._task(claim, feature, model, transcript, run, previous, budget=cap, cwd=workdir)
        outcome = await self._run_session(claim, state, task)
        if task.resume_session_id and "No conversation found" in outcome.message:
            # The old session is gone (another host, cleaned state): start afresh with the feedback.
            task = self._task(claim, feature, model, transcript, run, previous, resume=False, budget=cap, cwd=workdir)
            outcome = await self._run_session(claim, state, task)
        self.budget.account(state, outcome)
        await self._conclude(claim, state, run, outcome, task, feature)

    async def _workspace(
        self, claim: ClaimedFeature, state: AgentState, run: RunRecord, previous: list[RunRecord]
    ) -> Path | None:
        """Where the attempt works: the project, or in worktree mode the feature's own worktree.
        None when the attempt is already over (merged by an earlier supervisor, or its setup failed)."""
        if not self.git.isolated:
            return self.settings.project_dir
        merged = await self.git.merged_earlier(previous)
        if merged is not None:
            # A supervisor merged it and died before recording it: finish the job, run nothing.
            notes = f"merged as {merged[:12]} on {self.git.branch} (recorded after its supervisor stopped)"
            done = Verdict(Status.PASSING, notes, model=state.model)
            await self._finish(claim, state, run, done, AgentOutcome(Ending.COMPLETED), commit=merged, learn=False)
            await self.git.discard(claim.id)
            return None
        self._show(state, "setup")
        try:
            return await self.git.workspace(claim.id, self._feature_env(claim))
        except SetupFailed as exc:
            # The project's set-up, not the agent, failed: no attempt is spent, but a feature whose
            # set-up keeps failing stops being handed out (GiveBacks).
            self.view.note(f"feature #{claim.id}: {exc.message.splitlines()[0]}")
            back = self.given_back.count(
                claim.id, Verdict(Status.PENDING, exc.message, count_attempt=False), AgentOutcome(Ending.COMPLETED)
            )
            if back.status is Status.FAILED:
                back = dataclasses.replace(back, give_up=True)  # set-up, not the agent: failed, not retried
            ended = AgentOutcome(Ending.WORKSPACE_ERROR, exc.message)
            await self._finish(claim, state, run, back, ended, learn=False)
            return None

    def _show(self, state: AgentState, kind: str) -> None:
        state.doing = DOING[kind]
        self.view.activity(state, ActivityEvent(state.claim.id, kind))

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
        cwd: Path | None = None,
    ) -> AgentTask:
        policy = self.settings.policy
        last = previous[-1] if previous else None
        feedback = claim.notes if last is not None and claim.attempts > 0 else None
        resume_id = last.session_id if resume and feedback and last is not None else None
        prompt = retry_prompt(feature, feedback) if resume_id and feedback else task_prompt(feature, feedback)
        if resume and not feedback and last is not None and last.session_id and last.outcome in CUT_SHORT:
            # Its session was cut short by no fault of its own (a supervisor that died or was
            # stopped, an API outage): it carries on with its context instead of starting over.
            resume_id, prompt = last.session_id, continue_prompt(feature, CUT_SHORT[last.outcome])
        if claim.resume_prompt:
            # A follow-up (an answered question, a lead's resume_feature): the same conversation goes on.
            resume_id = claim.resume_session_id if resume else None
            prompt = claim.resume_prompt if resume_id else f"{task_prompt(feature)}\n\n{claim.resume_prompt}"
        same_session = [r for r in previous if resume_id and r.session_id == resume_id]
        resumed = Spend(
            cost_usd=sum(r.cost_usd or 0.0 for r in same_session),
            input_tokens=sum(r.input_tokens or 0 for r in same_session),
            output_tokens=sum(r.output_tokens or 0 for r in same_session),
        )
        workdir = cwd or self.settings.project_dir
        env = {"CLAUDE_CONFIG_DIR": str(feature_config_dir(self.settings.state_dir, claim.id))}
        env |= self.throttle.session_env() | self._feature_env(claim)

        async def is_released() -> bool:
            record = await self._db(self.queue.run, run.id)
            return record.reported_status is not None

        async def guard_write(path: str) -> WriteDecision:
            try:
                lock = await asyncio.to_thread(self.queue.claim_file, path, claim.agent_id, claim.id, root=workdir)
            except PathOutsideProjectError as exc:
                return WriteDecision(False, f"{exc.message}: agents may only write inside the project")
            except AgentManagerError as exc:
                return WriteDecision(False, exc.message)
            return WriteDecision(lock.success, lock.message)

        def guard_bash(command: str) -> WriteDecision:
            entry = denied_command(command, policy.bash_deny)
            if entry is None:
                if denied_command(command, policy.ask_bash) is not None:
                    return WriteDecision(False, "a person must approve this command (ask_bash)", ask=True)
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

        async def ask_permission(tool_name: str, tool_input: dict) -> WriteDecision:
            return await self._ask_permission(claim, run, tool_name, tool_input)

        role = policy.role_for(claim.category)

        return AgentTask(
            feature_id=claim.id,
            feature_name=claim.name,
            agent_id=claim.agent_id,
            model=model,
            prompt=prompt,
            cwd=workdir,
            transcript_path=transcript,
            identity=self.settings.identity(claim.agent_id, claim.id, work_dir=cwd),
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
            ask_permission=ask_permission,
            ask_tools=policy.ask_tools,
            steering=self._steering.setdefault(claim.id, Steering()),
            system_append=system_append(role[1] if role else None, role[0] if role else None),
        )

    async def _ask_permission(
        self, claim: ClaimedFeature, run: RunRecord, tool_name: str, tool_input: dict
    ) -> WriteDecision:
        """A tool call outside the allow-list: stored, shown, and decided by a person (the CLI's
        `approve`/`deny`, a lead's approve_permission) within permission_timeout_seconds."""
        request = await self._db(self.queue.request_permission, claim.id, run.id, claim.agent_id, tool_name, tool_input)
        if request.decision is Decision.OPEN:
            said = (
                f"feature #{claim.id} asks to run {request.summary[:120]}: "
                f"`agent-manager approve {request.id}` or `agent-manager deny {request.id}`"
            )
            self.view.note(said)
            self.notifier.send("permission", said, (claim.id, claim.name), request_id=request.id)
        timeout = self.settings.policy.permission_timeout_seconds
        deadline = time.monotonic() + timeout
        while request.decision is Decision.OPEN:
            if time.monotonic() >= deadline:
                why = f"nobody answered within {timeout:g} s"
                request = await self._db(self.queue.expire_permission, request.id, why)
                break
            await asyncio.sleep(PERMISSION_POLL_S)
            request = await self._db(self.queue.permission, request.id)
        await self._db(self.queue.use_permission, request.id)
        if request.decision is Decision.ALLOW:
            self.view.note(f"feature #{claim.id}: permission request #{request.id} approved")
            return WriteDecision(True)
        if request.decision is Decision.DENY:
            reason = f": {request.reason}" if request.reason else ""
            self.view.note(f"feature #{claim.id}: permission request #{request.id} denied{reason}")
            return WriteDecision(False, f"A person denied this {tool_name} call{reason}. Do without it and carry on.")
        self.view.note(f"feature #{claim.id}: permission request #{request.id} timed out")
        return WriteDecision(
            False,
            f"Nobody answered the request to use {tool_name} within {timeout:g} s, so it is denied. Do without it, "
            "or call ask_question if you cannot go on without a person's decision.",
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

    async def _conclude(
        self,
        claim: ClaimedFeature,
        state: AgentState,
        run: RunRecord,
        outcome: AgentOutcome,
        task: AgentTask,
        feature: FeatureContext,
    ) -> None:
        record = await self._db(self.queue.run, run.id)
        verdict = verdicts.judge(outcome, record, outcome.model or state.model, state.budget_source)
        if verdicts.stopped_by_run_budget(outcome, record, state.budget_source):
            self.budget.stop_for_run_cap()
        stop = self._stops.pop(claim.id, None)
        if stop is not None:
            reason, requeue, request_id = stop
            verdict = verdicts.stopped(verdict, reason, requeue)
            if outcome.ending is not Ending.STOPPED:
                outcome = dataclasses.replace(outcome, ending=Ending.STOPPED, message=f"stopped: {reason}")
            await self._finish(claim, state, run, verdict, outcome, learn=False)
            await self._db(self.queue.handled_control, request_id, verdict.status.value, self.owner)
            return
        verdict, outcome = await self._verify(claim, state, task.cwd, verdict, outcome)
        commit = None
        if verdict.status is Status.PASSING and self.git.isolated:
            verdict, outcome, commit = await self._land(claim, state, run, task, feature, verdict, outcome)
        elif verdict.status is Status.PASSING and self.git.plan.mode == "shared":
            verdict, commit = await self._commit_shared(claim, state, run, verdict, outcome)
        verdict = self.given_back.count(claim.id, verdict, outcome)
        await self._finish(claim, state, run, verdict, outcome, commit=commit)
        if commit is not None and self.git.isolated:
            await self.git.discard(claim.id)

    async def _verify(
        self, claim: ClaimedFeature, state: AgentState, cwd: Path, verdict: Verdict, outcome: AgentOutcome
    ) -> tuple[Verdict, AgentOutcome]:
        """A passing verdict stands only if the feature's verify command exits 0 where the agent worked."""
        if verdict.status is not Status.PASSING or not claim.verify:
            return verdict, outcome
        self._show(state, "verify")
        timeout = self.settings.policy.verify_timeout_seconds
        check = await run_verify(claim.verify, cwd, timeout, self._feature_env(claim))
        return verdicts.verified(verdict, outcome, claim.verify, check)

    async def _finish(
        self,
        claim: ClaimedFeature,
        state: AgentState,
        run: RunRecord,
        verdict: Verdict,
        outcome: AgentOutcome,
        commit: str | None = None,
        learn: bool = True,
    ) -> None:
        """Record the attempt and release the feature; ``learn``: the throttle hears how a session ended."""
        record = await self._db(self.queue.run, run.id)
        if commit is not None and record.commit_sha != commit:
            await self._db(self.queue.set_run_commit, run.id, commit)
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
        self._finished_since_reorder += 1
        if learn:
            self.throttle.after(outcome, state.started)
        self.view.finished(state, verdicts.shown(verdict, result.status), verdict.notes)
        if result.status == Status.NEEDS_INPUT:
            await self._notify_question(claim)

    async def _notify_question(self, claim: ClaimedFeature) -> None:
        try:
            asked = await self._db(self.queue.questions, feature_id=claim.id)
        except AgentManagerError:
            return  # the database is gone: the run is stopping, and says so
        if asked:
            said = f"feature #{claim.id} ({claim.name}) asks: {asked[-1].question}"
            self.notifier.send("question", said, (claim.id, claim.name), question_id=asked[-1].id)

    # -- landing on git ---------------------------------------------------------------------

    def _commit_message(self, claim: ClaimedFeature, run: RunRecord, verdict: Verdict, outcome: AgentOutcome) -> str:
        return commit_message(claim.name, claim.id, run.attempt, verdict.model or "unknown", outcome.cost_usd)

    async def _land(
        self,
        claim: ClaimedFeature,
        state: AgentState,
        run: RunRecord,
        task: AgentTask,
        feature: FeatureContext,
        verdict: Verdict,
        outcome: AgentOutcome,
    ) -> tuple[Verdict, AgentOutcome, str | None]:
        """Worktree mode: merge the verified feature through the merge queue. A conflict or a failed
        check on the merged tree resumes the agent's session to repair it, up to merge_repairs times."""
        repairs = 0
        while True:
            self._show(state, "merge")
            message = self._commit_message(claim, run, verdict, outcome)
            landing = await self.git.commit_work(task.cwd, message)
            if landing is None:
                async with self.git.merge_turn(lambda: self._show(state, "merge_wait")):
                    self._show(state, "merge")
                    env = self._feature_env(claim)
                    landing = await self.git.land(claim.id, task.cwd, message, claim.verify, run.id, env)
            if landing.commit is not None:
                if repairs:
                    self.git.repaired += 1
                notes = f"{verdict.notes}\n\nmerged as {landing.commit[:12]} on {self.git.branch}".strip()
                return dataclasses.replace(verdict, notes=notes), outcome, landing.commit
            if landing.blocked is not None:
                self._fail(f"feature #{claim.id} cannot land on {self.git.branch}: {landing.blocked}", 2)
                return Verdict(Status.PENDING, landing.blocked, verdict.cost_usd, verdict.model, False), outcome, None
            problem = _landing_problem(landing, self.git.branch)
            if repairs >= self.settings.policy.merge_repairs:
                tried = f" after {repairs} repair session(s)" if repairs else ""
                notes = f"{problem}{tried}\n\nThe agent's notes: {verdict.notes}".strip()
                failed = dataclasses.replace(verdict, status=Status.FAILED, notes=notes)
                return failed, dataclasses.replace(outcome, message=problem), None
            repairs += 1
            self.git.repairs += 1
            conflicts = landing.unresolved or await self.git.reopen(task.cwd)
            self.view.note(f"feature #{claim.id}: {problem.splitlines()[0]}; resuming its session to repair it")
            prompt = repair_prompt(feature, self.git.branch, conflicts, landing.check_failed, bool(landing.unresolved))
            await self._db(self.queue.reopen_run, run.id)
            outcome = await self._repair(claim, state, task, outcome, prompt)
            record = await self._db(self.queue.run, run.id)
            verdict = verdicts.judge(outcome, record, outcome.model or state.model, state.budget_source)
            verdict, outcome = await self._verify(claim, state, task.cwd, verdict, outcome)
            if verdict.status is not Status.PASSING:
                return verdict, outcome, None

    async def _repair(
        self, claim: ClaimedFeature, state: AgentState, task: AgentTask, before: AgentOutcome, prompt: str
    ) -> AgentOutcome:
        """Resume the attempt's session with ``prompt``; the outcome is the whole attempt's."""
        session = before.session_id
        spent = task.resumed_spend if session == task.resume_session_id else Spend()
        resumed = Spend(
            spent.cost_usd + before.cost_usd,
            spent.input_tokens + before.input_tokens,
            spent.output_tokens + before.output_tokens,
        )
        cap = task.max_budget_usd
        repair = dataclasses.replace(
            task,
            prompt=prompt if session else f"{task.prompt}\n\n{prompt}",
            resume_session_id=session,
            resumed_spend=resumed if session else Spend(),
            max_budget_usd=None if cap is None else max(cap - before.cost_usd, 0.01),
        )
        since = time.monotonic()
        state.turns, state.cost_usd, state.cost_estimate = 0, 0.0, None  # the live view shows this session's
        state.input_tokens = state.output_tokens = 0
        after = await self._run_session(claim, state, repair)
        self.budget.account(state, after, since=since)
        return _combined(before, after)

    async def _commit_shared(
        self, claim: ClaimedFeature, state: AgentState, run: RunRecord, verdict: Verdict, outcome: AgentOutcome
    ) -> tuple[Verdict, str | None]:
        """Shared mode in git: commit the files this feature's agent wrote, one commit per feature."""
        paths = await self._db(self.queue.written_paths, run.id)
        message = self._commit_message(claim, run, verdict, outcome)
        async with self.git.merge_turn(lambda: self._show(state, "merge_wait")):
            try:
                commit = await self.git.commit_shared(paths, message, self.settings.project_dir)
            except AgentManagerError as exc:
                self.view.note(f"feature #{claim.id}: passing but not committed: {exc.message}")
                return verdict, None
        notes = f"{verdict.notes}\n\ncommitted as {commit[:12]} ({len(paths)} file(s))".strip()
        return dataclasses.replace(verdict, notes=notes), commit

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
        scheduler.add_job(self._controls, id="controls", **(common | {"seconds": CONTROL_CHECK_S}))
        scheduler.add_job(self._reorder_job, id="reorder", **(common | {"seconds": REORDER_S}))
        scheduler.start()
        return scheduler

    async def _heartbeat(self) -> None:
        held = {fid: state.claim.lease_token for fid, state in self.agents.items()}
        with contextlib.suppress(AgentManagerError):
            await asyncio.to_thread(self.git.renew)
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

    async def _reorder(self) -> None:
        """Re-estimate the queue's features from the attempts finished since the last time."""
        if not self._finished_since_reorder:
            return
        self._finished_since_reorder = 0
        policy = self.settings.policy
        try:
            await asyncio.to_thread(self.queue.reorder, lambda category, model: policy.model_for(category, model))
        except AgentManagerError as exc:
            self.view.note(f"re-estimating the queue failed: {exc.message}")

    async def _reorder_job(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the run stopped mid-reorder: nothing to report
            await self._reorder()

    async def _controls(self) -> None:
        """Act on people's stop and nudge requests for the features this supervisor runs."""
        if not self.agents:
            return
        try:
            requests = await asyncio.to_thread(self.queue.open_controls, self.owner)
        except AgentManagerError:
            return  # the database is away: the throttle reports it; the requests wait
        for request in requests:
            fid = request.feature_id
            steering = self._steering.get(fid)
            if request.kind == "stop":
                reason = request.text or "stopped by a person"
                # Marked handled when the attempt has ended, with the feature's new status (_conclude).
                if fid in self._stops or fid not in self.agents:
                    continue
                self._stops[fid] = (reason, request.requeue, request.id)
                if steering is not None:
                    steering.stop(reason)
                self.view.note(f"feature #{fid}: stop requested: {reason}")
                continue
            if steering is None or fid not in self.agents:
                result = "not delivered: its session had ended"
            else:
                steering.nudge(request.text)
                result = "queued for its next turn"
                self.view.note(f"feature #{fid}: nudged: {request.text[:80]}")
            with contextlib.suppress(AgentManagerError):
                await asyncio.to_thread(self.queue.handled_control, request.id, result, self.owner)

    async def _reap(self) -> None:
        try:
            reaped = await asyncio.to_thread(self.queue.reap_expired)
        except AgentManagerError as exc:
            self.view.note(f"reaper failed: {exc.message}")
            return
        if reaped:
            self.view.note(f"returned expired claims to pending: {', '.join(f'#{i}' for i in reaped)}")
            self._wake.set()

    def poke(self) -> None:
        """Look for claimable work now (something was just enqueued or answered in this process)."""
        self._wake.set()

    def stop(self, reason: str = "stopped", exit_code: int = 0, note: str | None = None) -> None:
        """Stop as on Ctrl-C: the claimed features go back to the queue, then run() returns."""
        if not self._stopping:
            self.view.note(note or f"stopping ({reason}): giving claimed features back")
        self._stopping = True
        self._fatal = self._fatal or (reason, exit_code)
        self._wake.set()

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(130)  # a second Ctrl-C: leave now; leases expire and the work is reclaimed
        self.stop("interrupted", 130, "stopping: giving claimed features back (Ctrl-C again to quit at once)")

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
        forecast = None
        try:
            report = await asyncio.to_thread(self.queue.status_report)
            counts, forecast = report.counts, estimates.forecast_cost(report.features)
            waited = await asyncio.to_thread(self.queue.lock_wait_seconds, self.owner)
        except AgentManagerError as exc:
            self.view.note(f"cannot read the final status: {exc.message}")
            counts, waited = {}, 0.0
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
            git=self.git.summary(),
            lock_wait_seconds=waited,
            forecast=forecast,
        )


def _summary_line(summary: RunSummary) -> str:
    counts = ", ".join(f"{status}: {n}" for status, n in sorted(summary.counts.items()))
    cost = sum(summary.cost_by_model.values())
    stopped = f"; stopped: {summary.stop_reason}" if summary.stop_reason else ""
    return f"agent-manager run ended ({counts or 'no features'}), cost ${cost:.4f}{stopped}"


def _ready_left(report: StatusReport) -> bool:
    """Pending features whose dependencies all passed: another supervisor's claim transaction may
    hold them for a moment (SKIP LOCKED), so a claim that found none does not mean the run is over."""
    graph = dag.build_graph({f.name: f.depends_on for f in report.features})
    return bool(dag.ready_set(graph, {f.name: f.status for f in report.features}))


def _landing_problem(landing: Landing, branch: str) -> str:
    if landing.unresolved:
        return f"conflict markers left in {', '.join(landing.unresolved)}"
    if landing.conflicts:
        return f"merge conflict with {branch} in {', '.join(landing.conflicts)}"
    return landing.check_failed or "the merge failed"


def _combined(first: AgentOutcome, then: AgentOutcome) -> AgentOutcome:
    """Two sessions of one attempt as one outcome: how the last ended, what both spent."""
    return dataclasses.replace(
        then,
        session_id=then.session_id or first.session_id,
        num_turns=first.num_turns + then.num_turns,
        input_tokens=first.input_tokens + then.input_tokens,
        output_tokens=first.output_tokens + then.output_tokens,
        cost_usd=first.cost_usd + then.cost_usd,
        model=then.model or first.model,
        reminders_sent=first.reminders_sent + then.reminders_sent,
    )
