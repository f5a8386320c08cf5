"""What a session spent and how it ended, read from the `claude` CLI's messages and errors.

A session's progress (turns, tokens, the CLI's running cost) is kept as its messages stream in;
when it ends, its result, an SDK error or a timeout becomes an AgentOutcome whose Ending the
supervisor acts on: an auth error stops the run, an unavailable API pauses it, an agent error
counts against the feature.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from supervisor.runner import ActivityEvent, AgentOutcome, Ending, Spend

if TYPE_CHECKING:  # the SDK is imported by the runner; here only its types are named
    from claude_agent_sdk import CLIConnectionError, ProcessError, ResultError, ResultMessage

SYNTHETIC_MODEL = "<synthetic>"  # what the CLI names the model of its own error messages

# List prices per million tokens (input, output), only to estimate the cost of a turn in flight;
# the CLI states the exact figure when the turn ends, and the estimate is scaled to agree with it.
_LIST_PRICES = {"haiku": (1.0, 5.0), "sonnet": (3.0, 15.0), "opus": (5.0, 25.0)}


@dataclasses.dataclass
class Progress:
    """One attempt's session as it goes. The CLI's results carry the session's running cost and
    per-model tokens (over every attempt of a resumed session) but per-query turns."""

    resumed: Spend = dataclasses.field(default_factory=Spend)
    session_id: str | None = None
    turns: int = 0  # finished queries' turns, summed
    live_turns: int = 0  # model responses of the query in flight
    last_message_id: str | None = None
    session_cost: float | None = None  # the session's running total, from its last result
    session_input: int = 0
    session_output: int = 0
    model: str | None = None
    reminders: int = 0
    messages: int = 0  # received from the CLI: once there are some, it started
    result: ResultMessage | None = None
    retry_after_s: float | None = None  # the CLI's last retry delay (it honours retry-after)
    in_flight: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # usage of responses since the result
    scale: float | None = None  # the CLI's exact cost / list-price cost, once a result is in
    stderr: list[str] = dataclasses.field(default_factory=list)
    waiting: int = 0  # permission requests the session is waiting on: neither stalled nor timing out
    waited_s: float = 0.0  # time spent waiting for people, added to the session's time limit

    @property
    def spend(self) -> Spend:
        """This attempt's own spend (the resumed session's earlier spend taken off)."""
        if self.session_cost is None:
            return Spend()
        return Spend(
            cost_usd=max(0.0, self.session_cost - self.resumed.cost_usd),
            input_tokens=max(0, self.session_input - self.resumed.input_tokens),
            output_tokens=max(0, self.session_output - self.resumed.output_tokens),
        )

    def estimate(self) -> float | None:
        """This attempt's cost including the responses since the last result, or None if exact."""
        if not self.in_flight:
            return None
        prices = _prices(self.model)
        if prices is None:
            return None
        extra = sum(_list_cost(usage, prices) for usage in self.in_flight) * (self.scale or 1.0)
        return self.spend.cost_usd + extra

    def event(self, feature_id: int, kind: str, detail: str = "", **extra: Any) -> ActivityEvent:
        spend, estimate = self.spend, self.estimate()
        return ActivityEvent(
            feature_id,
            kind,
            detail,
            num_turns=self.turns + self.live_turns,
            cost_usd=spend.cost_usd if estimate is None else estimate,
            cost_is_estimate=estimate is not None,
            input_tokens=spend.input_tokens,
            output_tokens=spend.output_tokens,
            session_id=self.session_id,
            model=self.model,
            **extra,
        )

    def absorb(self, result: ResultMessage) -> None:
        """Take in a finished query's result: its turns, and the session's running cost and tokens."""
        self.result = result
        self.session_id = result.session_id or self.session_id
        self.turns += result.num_turns or 0  # per query, not per session
        self.live_turns = 0
        self.in_flight = []
        served: dict[str, Mapping[str, Any]] = {
            m: u for m, u in (result.model_usage or {}).items() if m != SYNTHETIC_MODEL
        }
        if served:
            # Cost and per-model tokens are the session's running totals, resumed attempts included:
            # a retry resumed on a stronger model lists both. This attempt's model is the one its
            # responses came from.
            if self.model not in served:
                self.model = next(iter(served))
            self.session_input = sum(
                int(u.get(k) or 0)
                for u in served.values()
                for k in ("inputTokens", "cacheReadInputTokens", "cacheCreationInputTokens")
            )
            self.session_output = sum(int(u.get("outputTokens") or 0) for u in served.values())
        if result.total_cost_usd is not None:
            self.session_cost = result.total_cost_usd
            listed = sum(_list_cost(u, p) for m, u in served.items() if (p := _prices(m)) is not None)
            if listed > 0 and result.total_cost_usd > 0:
                self.scale = result.total_cost_usd / listed

    def record(self) -> dict[str, Any]:
        """The session's figures for the transcript's closing entry."""
        return dataclasses.asdict(self) | {"result": None, "in_flight": None, "spend": self.spend}


def _prices(model: str | None) -> tuple[float, float] | None:
    return next((p for family, p in _LIST_PRICES.items() if model and family in model), None)


def _list_cost(usage: Mapping[str, Any], prices: tuple[float, float]) -> float:
    """Cost of token counts at list prices; cache writes cost 1.25x input, cache reads 0.1x."""
    price_in, price_out = prices
    tokens_in = (
        int(usage.get("input_tokens") or usage.get("inputTokens") or 0)
        + 1.25 * int(usage.get("cache_creation_input_tokens") or usage.get("cacheCreationInputTokens") or 0)
        + 0.1 * int(usage.get("cache_read_input_tokens") or usage.get("cacheReadInputTokens") or 0)
    )
    tokens_out = int(usage.get("output_tokens") or usage.get("outputTokens") or 0)
    return (tokens_in * price_in + tokens_out * price_out) / 1e6


def outcome(progress: Progress, ending: Ending, message: str = "", status: int | None = None) -> AgentOutcome:
    """The outcome ``ending``, with what the session spent so far."""
    spend = progress.spend
    return AgentOutcome(
        ending=ending,
        message=message,
        session_id=progress.session_id,
        num_turns=progress.turns + progress.live_turns,
        input_tokens=spend.input_tokens,
        output_tokens=spend.output_tokens,
        cost_usd=spend.cost_usd,
        model=progress.model,
        reminders_sent=progress.reminders,
        api_error_status=status,
        retry_after_s=progress.retry_after_s,
    )


def from_result(progress: Progress, result: ResultMessage) -> AgentOutcome:
    """The outcome of a session whose last result is an error."""
    return _classify(
        progress, result.subtype, result.api_error_status, result.terminal_reason, result.result, result.errors
    )


def from_result_error(progress: Progress, exc: ResultError) -> AgentOutcome:
    """The outcome of a CLI that exited after an error result."""
    if exc.session_id:
        progress.session_id = exc.session_id
    return _classify(progress, exc.subtype, exc.api_error_status, exc.terminal_reason, exc.result, exc.errors)


def from_process_error(progress: Progress, exc: ProcessError, cli: str) -> AgentOutcome:
    """The outcome of a CLI process that failed: before the session started, or under it."""
    if not progress.messages:
        code = exc.exit_code
        what = _process_failure(exc) if code is not None and code < 0 else f"it exited with code {code}"
        return outcome(progress, Ending.SETUP_ERROR, _failed_start(cli, what, progress))
    return outcome(progress, Ending.AGENT_ERROR, _process_failure(exc))


def from_connection_error(progress: Progress, exc: CLIConnectionError, cli: str) -> AgentOutcome:
    """The outcome of a lost or never-made connection to the CLI."""
    if progress.result is not None and progress.result.is_error:
        return from_result(progress, progress.result)
    if progress.messages:
        # It was running: the process went away under the session (killed, crashed).
        return outcome(progress, Ending.AGENT_ERROR, f"the claude process died: {_first_line(exc)}")
    return outcome(progress, Ending.SETUP_ERROR, _failed_start(cli, _first_line(exc), progress))


def _classify(
    progress: Progress,
    subtype: str | None,
    status: int | None,
    reason: str | None,
    text: str | None,
    errors: list[str] | None,
) -> AgentOutcome:
    detail = _first_line(text or "; ".join(errors or []) or subtype or "error")
    if status in (401, 403):
        return outcome(progress, Ending.AUTH_ERROR, f"the API rejected the credentials ({status}): {detail}", status)
    if (status is not None and (status == 429 or status >= 500)) or reason == "api_error":
        message = f"API unavailable ({status or 'connection'}): {detail}"
        return outcome(progress, Ending.API_UNAVAILABLE, message, status)
    if subtype == "error_max_turns":
        return outcome(progress, Ending.AGENT_ERROR, f"reached the turn limit ({progress.turns} turns)")
    if subtype == "error_max_budget_usd":
        spent = f"stopped at its budget after spending ${progress.spend.cost_usd:.4f}"
        return dataclasses.replace(outcome(progress, Ending.AGENT_ERROR, spent), over_budget=True)
    return outcome(progress, Ending.AGENT_ERROR, f"session error: {detail}", status)


def _failed_start(cli: str, what: str, progress: Progress) -> str:
    said = next((line for line in reversed(progress.stderr) if line.strip()), "")
    return f"the claude CLI at {cli} could not start a session: {what}" + (
        f" ({said[:300]})" if said and said not in what else ""
    )


def _process_failure(exc: ProcessError) -> str:
    code = exc.exit_code
    if code is not None and code < 0:  # killed by a signal: the OOM killer, a user, a crash
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the claude process died (killed by {name})"
    return f"the claude process failed: {_first_line(exc)}"


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:500] if text else ""
