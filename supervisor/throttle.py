"""How hard a run may press the API and the database: fewer agents under rate limits, pauses
through outages, and the point at which an outage stops the run."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from api.errors import DatabaseError
from supervisor.config import Settings
from supervisor.runner import ActivityEvent, AgentOutcome, Ending
from supervisor.view import SupervisorView

T = TypeVar("T")

# Rate-limit events that mean "slow down" before the 429s arrive.
RATE_LIMIT_PRESSURE = frozenset({"allowed_warning", "rejected"})
RATE_LIMIT_UTILISATION = 0.8
RATE_LIMIT_CUT_INTERVAL_S = 5.0
# Until a model has answered once in this run, sessions give up after this many CLI retries
# (instead of about ten over three minutes): a wrong key or a dead endpoint shows in seconds.
FIRST_SESSION_RETRIES = "1"
DATABASE_RETRY_FIRST_S = 0.25
DATABASE_RETRY_MAX_S = 5.0


class Throttle:
    """The concurrency target and the outage clock of one run.

    ``fail(message, exit_code)`` stops the run; ``failing()`` says whether it is stopping already.
    """

    def __init__(
        self,
        settings: Settings,
        view: SupervisorView,
        fail: Callable[[str, int], None],
        failing: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self._view = view
        self._fail = fail
        self._failing = failing
        # Concurrency target under rate limits: halved on pressure, back up by one per clean session.
        self.limit = settings.max_agents
        self._last_cut = 0.0
        self._clean_since_cut = 0
        self.paused_until = 0.0  # time.monotonic() before which nothing is claimed
        self._outage_since: float | None = None
        self._outage_cause = ""
        self._outage_failures = 0
        self._api_answered = False  # a model has answered a session of this run
        self._cli_started = False  # a claude CLI has started a session in this run

    def paused_for(self) -> float:
        """Seconds until claims may resume; zero or less when they may now."""
        return self.paused_until - time.monotonic()

    def session_env(self) -> dict[str, str]:
        """Environment a new session's CLI gets from the state of the run."""
        if not self._api_answered and "CLAUDE_CODE_MAX_RETRIES" not in os.environ:
            return {"CLAUDE_CODE_MAX_RETRIES": FIRST_SESSION_RETRIES}
        return {}

    # -- what sessions report ------------------------------------------------------------

    def on_activity(self, event: ActivityEvent) -> None:
        self._cli_started = True
        if event.kind in ("message", "tool"):
            self._api_answers()
        elif event.kind == "api_retry":
            self._api_retrying(event)
        elif event.kind == "rate_limit" and (
            event.detail in RATE_LIMIT_PRESSURE or (event.utilization or 0.0) >= RATE_LIMIT_UTILISATION
        ):
            self.slow_down(f"rate limit {event.detail or 'warning'} at {(event.utilization or 0):.0%} use")

    def preflight_passed(self) -> None:
        self._outage_over()
        self._outage_failures = 0  # no session failed: sessions start from the first backoff

    def after(self, outcome: AgentOutcome, started: float = 0.0) -> None:
        """Learn from how a session (started at ``started``) or a preflight check ended:
        stop the run, pause claims through an outage, or earn back an agent."""
        policy = self.settings.policy
        if outcome.ending is Ending.AUTH_ERROR:
            self._fail(f"{outcome.message} (check ANTHROPIC_API_KEY)", 2)
        elif outcome.ending is Ending.SETUP_ERROR and not self._cli_started:
            self._fail(f"{outcome.message} (check the claude CLI install, or cli_path in the config)", 2)
        elif outcome.ending in (Ending.API_UNAVAILABLE, Ending.SETUP_ERROR):
            # A CLI that worked earlier in this run and now fails to start is treated like an
            # outage (memory pressure, a half-finished upgrade): retried, no attempt used.
            if outcome.api_error_status == 429:
                self.slow_down("the API answered 429 (rate limited)")
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
            self.paused_until = max(self.paused_until, now + delay)
            self._view.paused(delay, outcome.message)
        elif outcome.ending is not Ending.INTERRUPTED:
            # The API answered: the outage, if any, is over.
            self._outage_since, self._outage_failures = None, 0
            # Additive increase: one more agent per window of clean sessions started after the cut.
            if self.limit < self.settings.max_agents and started > self._last_cut:
                self._clean_since_cut += 1
                if self._clean_since_cut >= self.limit:
                    self.limit += 1
                    self._clean_since_cut = 0
                    self._view.note(f"concurrency back up to {self.limit} of {self.settings.max_agents}")

    def slow_down(self, why: str) -> None:
        """Halve the concurrency target, once per burst: sessions hit by the same limit count once."""
        now = time.monotonic()
        if now - self._last_cut < RATE_LIMIT_CUT_INTERVAL_S or self.limit <= 1:
            return
        self._last_cut = now
        self._clean_since_cut = 0
        self.limit = max(1, self.limit // 2)
        self._view.note(f"concurrency lowered to {self.limit} of {self.settings.max_agents}: {why}")

    # -- the outage clock ----------------------------------------------------------------

    def _api_answers(self) -> None:
        """A model answered: the API works, and the outage clock, if running, stops.

        The backoff between failed sessions keeps growing until one ends without an API error.
        """
        self._api_answered = True
        self._outage_over()

    def _outage_over(self) -> None:
        if self._outage_since is not None:
            self._view.note("the API answers again")
        self._outage_since = None

    def _api_retrying(self, event: ActivityEvent) -> None:
        """The CLI is retrying a request: the outage clock starts now, not after its retries."""
        status = event.api_error_status
        if status is None or status == 429 or status >= 500:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            retried = f"while the claude CLI retried ({event.detail})"
            self._outage_cause = f"API unavailable ({status or 'connection'}) {retried}"

    async def check_outage(self) -> None:
        """An outage that outlasts outage_limit_seconds stops the run, even mid-retry in the CLI."""
        if self._outage_since is None:
            return
        down = time.monotonic() - self._outage_since
        if down >= self.settings.policy.outage_limit_seconds:
            self._fail(f"gave up after the API was unavailable for {down:.0f} s: {self._outage_cause}", 1)

    # -- the database --------------------------------------------------------------------

    async def database(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a queue call off the loop, riding out a database outage (a restart, a busy lock).

        Retries connection failures with backoff for up to ``database_outage_seconds``; after
        that the run stops (exit 1) and the DatabaseError is raised: the leases of what the run
        holds expire and the work is reclaimed.
        """
        limit = self.settings.policy.database_outage_seconds
        started = time.monotonic()
        delay = DATABASE_RETRY_FIRST_S
        while True:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except DatabaseError as exc:
                waited = time.monotonic() - started
                if waited >= limit or self._failing():
                    self._fail(f"the database is unavailable ({exc.message})", 1)
                    raise
                if delay == DATABASE_RETRY_FIRST_S:
                    self._view.note(f"database unavailable, retrying for up to {limit:.0f} s: {exc.message}")
                await asyncio.sleep(min(delay, limit - waited))
                delay = min(delay * 2, DATABASE_RETRY_MAX_S)
