"""Hosting the coordination MCP server for each session.

In process (the default): the supervisor builds a server per session from the task's Identity
and the SDK serves it over an in-memory transport; every such server on one database shares a
queue and its connection pool. Over stdio: the CLI starts `python -m mcp_server`, which reads
the identity back from AGENT_MANAGER_* variables (about a second more per session, measured).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from api.database import Database
from api.identity import Identity
from api.queue import FeatureQueue
from mcp_server.server import build_server, server_tools
from supervisor.runner import AgentTask

if TYPE_CHECKING:
    from claude_agent_sdk.types import McpServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
MCP_SERVER_NAME = "agent-manager"
AGENT_MCP_TOOLS = ("feature_get", "feature_release", "claim_file", "release_file", "list_file_locks", "ask_question")


def mcp_tool_names() -> list[str]:
    """The agent's coordination tools as the CLI names them."""
    return [f"mcp__{MCP_SERVER_NAME}__{name}" for name in AGENT_MCP_TOOLS]


class McpHost:
    """Gives each session its coordination MCP server; close() releases the shared queues."""

    def __init__(self) -> None:
        self._queues: dict[tuple[str, Path, float], FeatureQueue] = {}
        server_tools()  # built once per process (~30 ms), here rather than in the first session's start

    def server(self, task: AgentTask) -> McpServerConfig:
        """The session's MCP server entry for ClaudeAgentOptions.mcp_servers."""
        if task.mcp_transport == "stdio":
            env = {**task.identity.to_env(), "PYTHONPATH": str(REPO_ROOT)}
            return {"type": "stdio", "command": sys.executable, "args": ["-m", "mcp_server"], "env": env}
        server = build_server(self._queue, identity=task.identity)
        # The SDK serves any low-level mcp Server over an in-memory transport, lifespan included;
        # MCPServer keeps its own as _lowlevel_server (no public accessor in mcp 2.x).
        return {"type": "sdk", "name": MCP_SERVER_NAME, "instance": server._lowlevel_server}

    def _queue(self, identity: Identity) -> FeatureQueue:
        """One queue per database for every in-process server: sessions share its connection pool."""
        key = (identity.database_url, identity.project_dir, identity.lease_seconds)
        if key not in self._queues:
            db = Database(identity.database_url, pool_size=10)
            self._queues[key] = FeatureQueue(db, project_dir=identity.project_dir, lease_seconds=identity.lease_seconds)
        return self._queues[key]

    def close(self) -> None:
        """Close the in-process servers' database connections."""
        for queue in self._queues.values():
            queue.db.dispose()
        self._queues.clear()
