"""The agent runner port: what the supervisor asks of an agent session, and what comes back.

The real implementation is supervisor.claude_runner.ClaudeRunner; tests and benchmarks inject
scripted runners through the same protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class Ending(str, enum.Enum):
    """How a session ended, before the supervisor turns it into a feature outcome."""

    COMPLETED = "completed"  # the session finished its turns normally
    AGENT_ERROR = "agent_error"  # max turns, budget, CLI crash, error during execution
    TIMEOUT = "timeout"
    STALLED = "stalled"
    INTERRUPTED = "interrupted"  # we stopped it: shutdown or lost lease
    AUTH_ERROR = "auth_error"  # 401/403: the whole supervisor must stop
    API_UNAVAILABLE = "api_unavailable"  # 429, 5xx, 529, connection errors: pause and retry later
    SETUP_ERROR = "setup_error"  # the CLI is missing or cannot start


INFRASTRUCTURE = frozenset({Ending.INTERRUPTED, Ending.AUTH_ERROR, Ending.API_UNAVAILABLE, Ending.SETUP_ERROR})


@dataclass(frozen=True)
class WriteDecision:
    allowed: bool
    reason: str = ""


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
    mcp_env: dict[str, str]
    max_turns: int
    timeout_s: float
    stall_s: float
    max_budget_usd: float | None = None
    fallback_model: str | None = None
    resume_session_id: str | None = None
    reminders: int = 2
    # Asked after each finished turn: has the agent called feature_release yet?
    is_released: Callable[[], Awaitable[bool]] | None = None
    # Asked before every Write/Edit: may this agent write this file now?
    guard_write: Callable[[str], Awaitable[WriteDecision]] | None = None
    # Asked before every Bash command: may this agent run it?
    guard_bash: Callable[[str], WriteDecision] | None = None
    # Called as soon as the session id is known.
    on_session: Callable[[str], Awaitable[None]] | None = None
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
    """Progress of a running session, for the live view."""

    feature_id: int
    kind: str  # "message", "tool", "waiting_lock", "turn", "rate_limit"
    detail: str = ""
    num_turns: int = 0
    cost_usd: float = 0.0
    utilization: float | None = None


class AgentRunner(Protocol):
    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        """Run one session to its end. Cancellation must stop the session and its processes."""
        ...
