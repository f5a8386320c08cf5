"""The coordination MCP server (`python -m mcp_server`, stdio) that agents use to talk to the queue.

This module holds what the tool modules share: who the caller is (``api.identity.Identity``,
given by the supervisor or read once from the server's environment), what a connection holds
(``AppContext``, the typed lifespan state), the lease keeper of a lead agent, and the
translation of api errors into tool errors.
``mcp_server.server.build_server`` wires them into an ``MCPServer``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from mcp.server.mcpserver.exceptions import ToolError
from sqlalchemy.exc import SQLAlchemyError

from api.errors import AgentManagerError, DatabaseError
from api.identity import Identity
from api.queue import FeatureQueue

__all__ = ["AppContext", "Identity", "LeaseKeeper", "tool_errors"]


class LeaseKeeper:
    """Renews the leases a lead agent claimed itself, every third of the lease, on a daemon thread.

    Started on the first successful feature_claim_batch, stopped when the server shuts down;
    an agent that stops (the server exits) stops renewing, so its leases expire and are reaped.
    """

    def __init__(self, queue: FeatureQueue, agent_id: str) -> None:
        self.queue = queue
        self.agent_id = agent_id
        self.interval = queue.lease_seconds / 3
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start renewing (idempotent; tool calls run on worker threads, so this is locked)."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=f"lease-keeper {self.agent_id}", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.queue.heartbeat(self.agent_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval; the lease has slack
                print(f"agent-manager MCP server: lease heartbeat failed: {exc}", file=sys.stderr)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


@dataclass(frozen=True)
class AppContext:
    """What the server holds for one connection (the lifespan state the tools read)."""

    identity: Identity
    queue: FeatureQueue
    leases: LeaseKeeper


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """Turn api errors into ToolError, so the agent reads the message (``is_error`` result).

    Any other exception is a crash, and the SDK hides its text from the agent.
    """
    try:
        yield
    except DatabaseError as exc:
        raise ToolError(f"the coordination database is unavailable ({exc.message}); try again in a moment") from exc
    except AgentManagerError as exc:
        raise ToolError(exc.message) from exc
    except SQLAlchemyError as exc:  # a driver error api.database does not translate
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise ToolError(f"the coordination database failed: {detail[0] if detail else type(exc).__name__}") from exc
