"""Builds the `agent-manager` MCP server: the typed lifespan and the tool registrations."""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool

from api.database import Database
from api.errors import AgentManagerError
from api.queue import FeatureQueue
from mcp_server import AppContext, Identity, LeaseKeeper, coordination_mcp, feature_mcp

SERVER_NAME = "agent-manager"
INSTRUCTIONS = (
    "Coordination with the other agents building this project. Call feature_get first for your "
    "assignment; claim_file before editing a file another feature might touch, release_file when "
    "done with it; finish with feature_release."
)

QueueFactory = Callable[[Identity], FeatureQueue]
"""Builds the queue for an identity; a queue it returns is the caller's to close."""

__all__ = ["SERVER_NAME", "AppContext", "Identity", "QueueFactory", "build_server", "server_tools"]


def build_server(
    queue_factory: QueueFactory | None = None, *, identity: Identity | None = None
) -> MCPServer[AppContext]:
    """The MCP server, with its tools registered; nothing is opened until a client connects.

    ``identity`` defaults to ``Identity.from_env()``, read when the server starts (raises
    InputError there when the environment is incomplete). ``queue_factory`` defaults to
    opening ``Database(identity.database_url)`` once per server run and disposing of it on exit.
    """

    @asynccontextmanager
    async def lifespan(_server: MCPServer[AppContext]) -> AsyncIterator[AppContext]:
        who = identity if identity is not None else Identity.from_env()
        if queue_factory is None:
            db = Database(who.database_url)
            queue = FeatureQueue(db, project_dir=who.project_dir, lease_seconds=who.lease_seconds)
        else:
            queue = queue_factory(who)
        leases = LeaseKeeper(queue, who.agent_id)
        try:
            yield AppContext(identity=who, queue=queue, leases=leases)
        finally:
            await anyio.to_thread.run_sync(leases.stop)
            try:
                if who.feature_id is None:
                    # A lead agent that goes away gives back what it claimed itself and its
                    # locks, so nobody waits for a lease to expire. An assigned agent's
                    # claim and locks are its supervisor's to settle when the session ends.
                    await anyio.to_thread.run_sync(_let_go, queue, who.agent_id)
            finally:
                if queue_factory is None:
                    queue.db.dispose()

    return MCPServer(
        SERVER_NAME, instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING", tools=server_tools()
    )


@functools.cache
def _tools_once() -> tuple[Tool, ...]:
    return tuple(Tool.from_function(fn) for fn in (*feature_mcp.TOOLS, *coordination_mcp.TOOLS))


def server_tools() -> list[Tool]:
    """The tools, built once per process and shared by its servers (a Tool holds no state of a
    server): building them (pydantic models of every argument list and result) takes ~30 ms,
    and the supervisor builds a server for every session, on its event loop."""
    return list(_tools_once())


def _let_go(queue: FeatureQueue, agent_id: str) -> None:
    try:
        queue.give_back_all(agent_id)
        queue.release_all(agent_id)
    except AgentManagerError as exc:  # the leases expire and the reaper frees them instead
        print(f"agent-manager MCP server: could not release on exit: {exc.message}", file=sys.stderr)
