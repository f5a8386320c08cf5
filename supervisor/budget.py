"""The run's spending: what it has cost by model, and the caps on an attempt, a feature and the run."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from api.records import ClaimedFeature, Status, Verdict
from supervisor.config import Settings
from supervisor.display import usd
from supervisor.runner import AgentOutcome
from supervisor.view import AgentState


class Budget:
    """Spend accounting and the cost caps: ``policy.max_budget_usd`` an attempt, a feature's
    ``max_cost_usd``, and ``settings.max_cost_usd`` for the whole run.

    ``running`` is the supervisor's live map of sessions (read, never changed here): what they
    have reported so far counts against the run's cap before they end.
    """

    def __init__(self, settings: Settings, running: Mapping[int, AgentState], note: Callable[[str], None]) -> None:
        self.settings = settings
        self._running = running
        self._note = note
        self.stop_reason: str | None = None  # why no new feature is claimed; None while the run may go on
        self._then = ""  # what a person can do about it
        self.sessions = 0
        self.agent_seconds = 0.0
        self._cost: dict[str, float] = defaultdict(float)
        self._tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    @property
    def spent(self) -> float:
        """Cost of this run so far: finished sessions plus what running ones have reported."""
        return sum(self._cost.values()) + sum(state.cost_usd for state in self._running.values())

    @property
    def cost_by_model(self) -> dict[str, float]:
        return dict(self._cost)

    @property
    def tokens_by_model(self) -> dict[str, tuple[int, int]]:
        """(input, output) tokens by model."""
        return {model: (t[0], t[1]) for model, t in self._tokens.items()}

    def affordable(self, free: int) -> int:
        """How many new sessions fit in the run budget, estimating each at the mean so far."""
        cap = self.settings.max_cost_usd
        if cap is None or free <= 0:
            return max(free, 0)
        if self.stop_reason:
            return 0
        mean = sum(self._cost.values()) / self.sessions if self.sessions else 0.0
        # A running session will likely cost about the mean in all, whatever it has reported yet.
        committed = sum(self._cost.values()) + sum(max(s.cost_usd, mean) for s in self._running.values())
        fits = free if mean == 0 else min(free, int((cap - committed) // mean))
        if committed >= cap or fits <= 0:
            self.stop(f"the run budget of {usd(cap)} is spent or committed (${committed:.4f})")
            return 0
        return fits

    def stop(self, why: str, then: str = "raise --max-cost to go on") -> None:
        """Claim nothing more; the first reason given (and ``then``, what to do about it) is the
        one the summary names."""
        if self.stop_reason is None:
            self.stop_reason, self._then = why, then
            self._note(f"no new features: {why}")

    def stop_for_run_cap(self) -> None:
        self.stop(f"the run budget of {usd(self.settings.max_cost_usd or 0.0)} is spent")

    def session_cap(self, claim: ClaimedFeature) -> tuple[float | None, str | None]:
        """The tightest of the per-attempt, per-feature and remaining run caps, and which it is
        ("attempt", "feature" or "run"); (None, None) when nothing caps the session."""
        caps: list[tuple[float, str]] = []
        if self.settings.policy.max_budget_usd is not None:
            caps.append((self.settings.policy.max_budget_usd, "attempt"))
        if claim.max_cost_usd is not None:
            caps.append((claim.max_cost_usd - claim.cost_usd, "feature"))
        if self.settings.max_cost_usd is not None:
            others = self.spent - (self._running[claim.id].cost_usd if claim.id in self._running else 0.0)
            caps.append((self.settings.max_cost_usd - others, "run"))
        if not caps:
            return None, None
        value, source = min(caps)
        return max(value, 0.0), source

    @staticmethod
    def refusal(claim: ClaimedFeature, source: str | None) -> Verdict:
        """The release of a claim whose cap (from ``session_cap``) is spent before a session starts:
        a spent feature budget fails it for good; a spent run budget gives it back unused."""
        if source == "feature":
            why = f"its budget of {usd(claim.max_cost_usd or 0.0)} is spent (${claim.cost_usd:.4f})"
            return Verdict(Status.FAILED, why, give_up=True)
        return Verdict(Status.PENDING, count_attempt=False)

    def account(self, state: AgentState, outcome: AgentOutcome, since: float | None = None) -> None:
        """Add a finished session's time (from ``since``, default the attempt's start), cost and
        tokens, under the model that served it."""
        model = outcome.model or state.model
        self.sessions += 1
        self.agent_seconds += time.monotonic() - (state.started if since is None else since)
        self._cost[model] += outcome.cost_usd
        self._tokens[model][0] += outcome.input_tokens
        self._tokens[model][1] += outcome.output_tokens

    def summary_note(self, counts: Mapping[str, int]) -> str | None:
        """Why the run stopped claiming, for its summary; None when the budget did not stop it."""
        if self.stop_reason is None:
            return None
        left = counts.get(Status.PENDING, 0)
        return f"{self.stop_reason}; {left} feature(s) left pending ({self._then})"
