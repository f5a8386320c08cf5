"""The agent runner port: what the supervisor asks of an agent session, and what comes back.

The real implementation is supervisor.claude_runner.ClaudeRunner; tests and benchmarks inject
scripted runners through the same protocol.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from api.identity import Identity


class Ending(enum.StrEnum):
    """How a session ended, before the supervisor turns it into a feature outcome."""

    COMPLETED = "completed"  # the session finished its turns normally
    AGENT_ERROR = "agent_error"  # max turns, budget, CLI crash, error during execution
    TIMEOUT = "timeout"
    STALLED = "stalled"
    INTERRUPTED = "interrupted"  # we stopped it: shutdown or lost lease
    AUTH_ERROR = "auth_error"  # 401/403: the whole supervisor must stop
    API_UNAVAILABLE = "api_unavailable"  # 429, 5xx, 529, connection errors: pause and retry later
    SETUP_ERROR = "setup_error"  # the CLI is missing or cannot start
    WORKSPACE_ERROR = "workspace_error"  # the feature's worktree could not be made ready: no session ran
    STOPPED = "stopped"  # a person stopped it (agent-manager stop, the lead's stop_feature)


INFRASTRUCTURE = frozenset({Ending.INTERRUPTED, Ending.AUTH_ERROR, Ending.API_UNAVAILABLE, Ending.SETUP_ERROR})


@dataclass(frozen=True)
class Spend:
    """What a session cost: for an attempt, its own share; for a resumed session, what came before."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class WriteDecision:
    allowed: bool
    reason: str = ""
    ask: bool = False  # neither: a person decides (the SDK's can_use_tool, then task.ask_permission)


OPERATOR = "Message from your operator: "


class Steering:
    """What people ask of a running session: stop it, or tell it something at its next turn.

    The supervisor fills it from the database's stop/nudge requests; the runner reads it. Nudges
    ride on the next tool result (a PostToolUse hook); any still undelivered when a turn ends are
    sent as a new prompt in the same session.
    """

    def __init__(self) -> None:
        self.stop_reason: str | None = None
        self.stopped = asyncio.Event()
        self._nudges: list[str] = []
        self.delivered: list[str] = []

    def stop(self, reason: str) -> None:
        self.stop_reason = reason or "stopped by a person"
        self.stopped.set()

    def nudge(self, text: str) -> None:
        self._nudges.append(text)

    def take_nudges(self) -> str | None:
        """The undelivered nudges as one message, or None; they count as delivered."""
        if not self._nudges:
            return None
        texts, self._nudges = self._nudges, []
        self.delivered += texts
        return "\n\n".join(OPERATOR + text for text in texts)


@dataclass(frozen=True)
class AgentTask:
    """Everything one session needs. Callbacks let the runner consult the queue without knowing it."""

    feature_id: int
    feature_name: str
    agent_id: str
    model: str
    prompt: str
    cwd: Path
    transcript_path: Path
    identity: Identity  # who the agent is to the coordination MCP server
    max_turns: int
    timeout_s: float
    stall_s: float
    max_budget_usd: float | None = None
    fallback_model: str | None = None
    resume_session_id: str | None = None
    # What the resumed session had spent before this attempt: the CLI reports a resumed
    # session's cost and tokens as running totals over all of its attempts.
    resumed_spend: Spend = Spend()
    reminders: int = 2
    # Asked after each finished turn: has the agent called feature_release yet?
    is_released: Callable[[], Awaitable[bool]] | None = None
    # Asked before every Write/Edit: may this agent write this file now?
    guard_write: Callable[[str], Awaitable[WriteDecision]] | None = None
    # Asked before every Bash command: may this agent run it?
    guard_bash: Callable[[str], WriteDecision] | None = None
    # Called as soon as the session id is known.
    on_session: Callable[[str], Awaitable[None]] | None = None
    # A tool call outside the allow-list (ask_tools, ask_bash): waits for a person's decision.
    ask_permission: Callable[[str, dict[str, Any]], Awaitable[WriteDecision]] | None = None
    ask_tools: tuple[str, ...] = ()  # tools offered to the agent that need a person's permission
    steering: Steering | None = None
    system_append: str | None = None  # the protocol and the role; None: the protocol alone
    env: dict[str, str] = field(default_factory=dict)
    # "in-process": the coordination MCP server runs in the supervisor; "stdio": a process per session.
    mcp_transport: str = "in-process"


@dataclass(frozen=True)
class AgentOutcome:
    ending: Ending
    message: str = ""
    session_id: str | None = None
    num_turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    model: str | None = None  # the model the API actually served
    reminders_sent: int = 0
    api_error_status: int | None = None
    retry_after_s: float | None = None
    over_budget: bool = False  # stopped by max_budget_usd


@dataclass(frozen=True)
class ActivityEvent:
    """Progress of a running session, for the live view; the figures are this attempt's so far."""

    feature_id: int
    kind: str  # "message", "tool", "waiting_lock", "turn", "rate_limit", "api_retry", "permission", "nudge"
    detail: str = ""
    num_turns: int = 0
    cost_usd: float = 0.0
    utilization: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_is_estimate: bool = False  # a turn in flight: the CLI states its exact cost when the turn ends
    session_id: str | None = None
    model: str | None = None
    api_error_status: int | None = None  # "api_retry": the status the CLI is retrying (None: no connection)
    resets_at: float | None = None  # "rate_limit": when the window resets (Unix time, seconds), if the CLI said
    rate_limit_type: str | None = None  # "rate_limit": which window ("five_hour", "seven_day", ...), if said


class AgentRunner(Protocol):
    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        """Run one session to its end.

        Cancellation must stop the session and its processes; before it re-raises, the runner
        reports what the session spent through ``on_activity`` (the supervisor records it).
        """
        ...


class Preflight(Protocol):
    """Optional for a runner: checks that can fail the whole run before any feature is claimed."""

    async def preflight(self) -> AgentOutcome | None:
        """None when sessions can start; else an outcome whose ending says what is wrong
        (SETUP_ERROR, AUTH_ERROR or API_UNAVAILABLE) and whose message names it."""
        ...
