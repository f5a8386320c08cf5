"""What the supervisor shows of a run, and the contract with whatever shows it.

The loop calls a ``SupervisorView`` at every event; a view reads the run through ``RunState``,
a read-only face of the supervisor, and the sessions through ``AgentState``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from supervisor.runner import ActivityEvent, AgentOutcome, Ending

if TYPE_CHECKING:
    from api.estimates import CostForecast
    from api.records import ClaimedFeature, StatusReport
    from supervisor.config import Settings


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
    git: str | None = None  # what landed in git, one line (None outside git)
    lock_wait_seconds: float = 0.0  # agent-seconds this run's agents spent refused a file lock
    forecast: CostForecast | None = None  # what the unfinished features should still cost (an estimate)


class RunState(Protocol):
    """The run as a view may read it while it works: nothing here changes the run."""

    @property
    def owner(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def agents(self) -> Mapping[int, AgentState]:
        """The running sessions by feature id."""
        ...

    @property
    def limit(self) -> int:
        """How many sessions may run at once now: ``settings.max_agents`` unless rate limits cut it."""
        ...

    @property
    def paused_until(self) -> float:
        """``time.monotonic()`` before which no feature is claimed (an API outage); 0 when never paused."""
        ...

    def status_report(self) -> StatusReport:
        """The queue's statuses now. Blocks on the database: for a view's start, not its refreshes."""
        ...


class SupervisorView(Protocol):
    """What the supervisor tells a view, in order: start, then events, then stop with the summary."""

    def start(self, run: RunState) -> None: ...

    def started(self, state: AgentState) -> None: ...

    def activity(self, state: AgentState, event: ActivityEvent) -> None: ...

    def finished(self, state: AgentState, status: str, notes: str) -> None:
        """A session's end: ``status`` is the feature's status or a phrase ("given back", "lost")."""
        ...

    def paused(self, seconds: float, reason: str) -> None: ...

    def note(self, text: str) -> None: ...

    def stop(self, summary: RunSummary) -> None: ...
