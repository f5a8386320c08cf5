"""Scripted fake Anthropic Messages API for driving the real bundled `claude` CLI in tests."""

from __future__ import annotations

from tests.fake_model.cli import QueryRun, cli_options, isolated_cli_env, run_query
from tests.fake_model.server import (
    Brain,
    Delay,
    DropMidStream,
    FakeModelServer,
    HttpError,
    LoggedRequest,
    Reply,
    Request,
    ToolResult,
    Usage,
    text_block,
    tool_use_block,
)

__all__ = [
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
    "run_query",
    "text_block",
    "tool_use_block",
]
