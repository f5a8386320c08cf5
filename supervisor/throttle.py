"""How hard a run may press the API and the database: fewer agents under rate limits, no new
sessions while the account's rate-limit window is used up, pauses through outages, and the point
at which an outage stops the run."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
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
# The rate-limit window (a subscription's usage limit, from the CLI's rate-limit events): with a
# hard limit ("rejected") or this much of it used, and its reset known, no session starts until
# the reset plus a margin (the CLI rounds resets_at to whole seconds; clocks differ a little).
RATE_WINDOW_FULL = 0.95
RATE_WINDOW_MARGIN_S = 1.0
# Until a model has answered once in this run, sessions give up after this many CLI retries
# (instead of about ten over three minutes): a wrong key or a dead endpoint shows in seconds.
FIRST_SESSION_RETRIES = "1"
DATABASE_RETRY_FIRST_S = 0.25
DATABASE_RETRY_MAX_S = 5.0


@dataclass(frozen=True)
class RateWindow:
    """What the latest rate-limit event of any session said about the account's window."""

    status: str  # "allowed", "allowed_warning" or "rejected" (a hard limit)
    utilization: float | None = None  # of the most used window, 0-1
    resets_at: float | None = None  # Unix time (seconds)
    kind: str | None = None  # "five_hour", "seven_day", ...

    @classmethod
    def of(cls, event: ActivityEvent) -> RateWindow:
        return cls(event.detail or "allowed", event.utilization, event.resets_at, event.rate_limit_type)

    def full(self) -> bool:
        """New sessions must wait for the reset: a hard limit, or a window nearly used up."""
        return self.status == "rejected" or (self.utilization or 0.0) >= RATE_WINDOW_FULL

    def why(self) -> str:
        if self.status == "rejected":
            return f"{self.kind or 'rate'} limit reached"
        return f"{self.kind or 'rate-limit'} window {(self.utilization or 0.0):.0%} used"


class Throttle:
    """The concurrency target, the rate-limit window and the outage clock of one run.

    ``fail(message, exit_code)`` stops the run; ``failing()`` says whether it is stopping already;
    ``wind_down(why, then)`` stops new claims and lets running sessions finish. ``clock``
    (monotonic) and ``wall`` (Unix time) are the clocks, for tests to replace.
    """

    def __init__(
        self,
        settings: Settings,
        view: SupervisorView,
        fail: Callable[[str, int], None],
        failing: Callable[[], bool],
        wind_down: Callable[[str, str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._view = view
        self._fail = fail
        self._failing = failing
        self._wind_down = wind_down
        self._clock = clock
        self._wall = wall
        # Concurrency target under rate limits: halved on pressure, back up by one per clean session.
        self._limit = settings.max_agents
        self._last_cut = 0.0
        self._clean_since_cut = 0
        self._backoff_until = 0.0  # clock() before which nothing is claimed: an outage's backoff
        # The rate-limit window, across sessions: the latest event wins.
        self.window: RateWindow | None = None
        self._window_ends = 0.0  # clock() at which the known window resets (plus the margin); 0: none
        self._window_holds = False  # no session starts until _window_ends
        self._held_for: float | None = None  # the resets_at the hold waits for
        self._limit_before_cut: int | None = None  # the target before this window's cuts, restored at its reset
        self._outage_since: float | None = None
        self._outage_cause = ""
        self._outage_failures = 0
        self._api_answered = False  # a model has answered a session of this run
        self._cli_started = False  # a claude CLI has started a session in this run

    @property
    def limit(self) -> int:
        """How many sessions may run at once: ``max_agents`` unless rate limits cut it."""
        if self._window_passed() and self._limit_before_cut is not None:
            return max(self._limit, self._limit_before_cut)
        return self._limit

    @property
    def paused_until(self) -> float:
        """``clock()`` before which nothing is claimed: an outage's backoff or a used-up window."""
        return max(self._backoff_until, self._window_ends if self._window_holds else 0.0)

    def paused_for(self) -> float:
        """Seconds until claims may resume; zero or less when they may now."""
        self._window_reset()
        return self.paused_until - self._clock()

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
        elif event.kind == "rate_limit":
            self._rate_window(RateWindow.of(event))
            if not self._window_holds and (
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
        elif outcome.ending is Ending.API_UNAVAILABLE and outcome.api_error_status == 429 and self._holding():
            return  # the used-up window: claims wait for its reset already, and that is no outage
        elif outcome.ending in (Ending.API_UNAVAILABLE, Ending.SETUP_ERROR):
            # A CLI that worked earlier in this run and now fails to start is treated like an
            # outage (memory pressure, a half-finished upgrade): retried, no attempt used.
            if outcome.api_error_status == 429:
                self.slow_down("the API answered 429 (rate limited)")
            now = self._clock()
            self._outage_since = self._outage_since or now
            self._outage_cause = outcome.message
            down = now - self._outage_since
            if down >= policy.outage_limit_seconds:
                self._fail(f"gave up after the API was unavailable for {down:.0f} s: {outcome.message}", 1)
                return
            delay = min(policy.backoff_max_seconds, policy.backoff_initial_seconds * 2**self._outage_failures)
            delay = max(delay, outcome.retry_after_s or 0.0)  # what the API asked for, via the CLI
            self._outage_failures += 1
            self._backoff_until = max(self._backoff_until, now + delay)
            self._view.paused(delay, outcome.message)
        elif outcome.ending is not Ending.INTERRUPTED:
            # The API answered: the outage, if any, is over.
            self._outage_since, self._outage_failures = None, 0
            # Additive increase: one more agent per window of clean sessions started after the cut.
            if self._limit < self.settings.max_agents and started > self._last_cut:
                self._clean_since_cut += 1
                if self._clean_since_cut >= self._limit:
                    self._limit += 1
                    self._clean_since_cut = 0
                    if self._limit_before_cut is not None and self._limit >= self._limit_before_cut:
                        self._limit_before_cut = None
                    self._view.note(f"concurrency back up to {self._limit} of {self.settings.max_agents}")

    def slow_down(self, why: str) -> None:
        """Halve the concurrency target, once per burst: sessions hit by the same limit count once."""
        now = self._clock()
        if now - self._last_cut < RATE_LIMIT_CUT_INTERVAL_S or self._limit <= 1:
            return
        self._last_cut = now
        self._clean_since_cut = 0
        if self._limit_before_cut is None:
            self._limit_before_cut = self._limit
        self._limit = max(1, self._limit // 2)
        self._view.note(f"concurrency lowered to {self._limit} of {self.settings.max_agents}: {why}")

    # -- the rate-limit window -----------------------------------------------------------

    def _rate_window(self, window: RateWindow) -> None:
        """The latest word on the window: hold claims until its reset when it is used up (a hard
        limit, or RATE_WINDOW_FULL of it), release them when a later event says otherwise."""
        self._window_reset()
        self.window = window
        now, wall = self._clock(), self._wall()
        if window.resets_at is not None and window.resets_at > wall:
            self._window_ends = now + (window.resets_at - wall) + RATE_WINDOW_MARGIN_S
        resets = window.resets_at
        holds = window.full() and resets is not None and resets > wall
        if holds and resets is not None and (not self._window_holds or resets != self._held_for):
            # Known and waited for: not an outage (its clock would stop the run after outage_limit_seconds).
            self._outage_since, self._outage_failures = None, 0
            self._held_for = resets
            until, cap = _clock_time(resets, wall), self.settings.policy.rate_limit_max_wait_seconds
            if resets - wall > cap and not self.settings.serve:
                # Sleeping for days in a terminal helps no one: finish what runs, say when to come
                # back. A serve-mode supervisor is a service: it sleeps, and resumes by itself.
                self._wind_down(
                    f"rate limit: {window.why()} until {until}, {_span(resets - wall)} away "
                    f"(more than rate_limit_max_wait_seconds, {_span(cap)})",
                    f"run again after {until}",
                )
            else:
                self._view.paused(
                    self._window_ends - now, f"rate limit: sleeping until {until} (resets_at; {window.why()})"
                )
        elif self._window_holds and not holds:
            self._view.note(f"rate limit: the API allows sessions again ({window.status}); claims resume")
        self._window_holds = holds

    def _holding(self) -> bool:
        return self._window_holds and self._clock() < self._window_ends

    def _window_passed(self) -> bool:
        return self._window_ends > 0 and self._clock() >= self._window_ends

    def _window_reset(self) -> None:
        """Past the known window's reset: sessions start again, at the concurrency of before the window."""
        if not self._window_passed():
            return
        restored = self.limit
        held, raised = self._window_holds, restored != self._limit
        self._window_ends, self._window_holds, self._held_for = 0.0, False, None
        self._limit, self._limit_before_cut = restored, None
        if raised:
            self._clean_since_cut = 0
        if held or raised:
            self._view.note(f"rate limit: the window has reset; up to {restored} agent(s) again")

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
        """The CLI is retrying a request: the outage clock starts now, not after its retries.
        A 429 while the window is used up is that window, not an outage."""
        status = event.api_error_status
        if status == 429 and self._holding():
            return
        if status is None or status == 429 or status >= 500:
            if self._outage_since is None:
                self._outage_since = self._clock()
            retried = f"while the claude CLI retried ({event.detail})"
            self._outage_cause = f"API unavailable ({status or 'connection'}) {retried}"

    async def check_outage(self) -> None:
        """An outage that outlasts outage_limit_seconds stops the run, even mid-retry in the CLI."""
        if self._outage_since is None or self._holding():
            return
        down = self._clock() - self._outage_since
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


def _span(seconds: float) -> str:
    """A long wait as people say it: minutes, hours or days."""
    if seconds < 5_400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3_600:.1f} h" if seconds < 172_800 else f"{seconds / 86_400:.1f} days"


def _clock_time(unix: float, now: float) -> str:
    """The local clock time of ``unix``, with the day when it is not the day of ``now``."""
    at = datetime.fromtimestamp(unix)
    return f"{at:%H:%M:%S}" if at.date() == datetime.fromtimestamp(now).date() else f"{at:%a %d %b %H:%M:%S}"
