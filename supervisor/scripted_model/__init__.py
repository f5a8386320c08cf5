"""A scripted Anthropic Messages API on 127.0.0.1 that drives the real bundled `claude` CLI.

The tests, the benchmarks and `agent-manager demo` use it instead of the real API (no key needed).
Importing it is cheap: claude_agent_sdk is imported only by `cli_options` and `run_query`.
"""

from __future__ import annotations

from supervisor.scripted_model.cli import SUBSCRIPTION_ENV, QueryRun, cli_options, isolated_cli_env, run_query
from supervisor.scripted_model.faults import Delay, DropMidStream, HttpError, rate_limit_headers
from supervisor.scripted_model.messages import Brain, Reply, Request, ToolResult, Usage, text_block, tool_use_block
from supervisor.scripted_model.server import FakeModelServer, LoggedRequest

__all__ = [
    "SUBSCRIPTION_ENV",
    "Brain",
    "Delay",
    "DropMidStream",
    "FakeModelServer",
    "HttpError",
    "LoggedRequest",
    "QueryRun",
    "Reply",
    "Request",
    "ToolResult",
    "Usage",
    "cli_options",
    "isolated_cli_env",
    "rate_limit_headers",
    "run_query",
    "text_block",
    "tool_use_block",
]
