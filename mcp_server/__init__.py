"""The coordination MCP server (`python -m mcp_server`, stdio) that agents use to talk to the queue.

This module holds what the tool modules share: who the caller is (``Identity``, read once
from the server's environment), what a connection holds (``AppContext``, the typed lifespan
state), the lease keeper of a lead agent, and the translation of api errors into tool errors.
``mcp_server.server.build_server`` wires them into an ``MCPServer``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mcp.server.mcpserver.exceptions import ToolError
from sqlalchemy.exc import SQLAlchemyError

from api.database import normalise_url
from api.errors import AgentManagerError, DatabaseError, InputError
from api.queue import DEFAULT_LEASE_SECONDS, FeatureQueue

ENV_DATABASE_URL = "AGENT_MANAGER_DATABASE_URL"
ENV_PROJECT_DIR = "AGENT_MANAGER_PROJECT_DIR"
ENV_AGENT_ID = "AGENT_MANAGER_AGENT_ID"
ENV_FEATURE_ID = "AGENT_MANAGER_FEATURE_ID"
ENV_LEASE_SECONDS = "AGENT_MANAGER_LEASE_SECONDS"
ENV_VERIFY_TIMEOUT_SECONDS = "AGENT_MANAGER_VERIFY_TIMEOUT_SECONDS"
DEFAULT_VERIFY_TIMEOUT_SECONDS = 600.0
MAX_AGENT_ID = 200  # the width of the owner / agent_id columns


@dataclass(frozen=True)
class Identity:
    """Who the caller is. Comes only from the server's environment, never from a tool argument.

    ``feature_id`` is the feature the supervisor assigned to this agent; ``None`` for a lead
    agent that claims its own work with feature_claim_batch (whose passing verdicts this server
    verifies, within ``verify_timeout_seconds``).
    """

    database_url: str = field(repr=False)  # may carry a password
    project_dir: Path
    agent_id: str
    feature_id: int | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    verify_timeout_seconds: float = DEFAULT_VERIFY_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Identity:
        """Read the AGENT_MANAGER_* variables. Raises InputError naming the bad or missing one."""
        env = os.environ if environ is None else environ
        url = env.get(ENV_DATABASE_URL, "").strip()
        if not url:
            raise InputError(f"{ENV_DATABASE_URL} is not set: give the queue's database URL (e.g. sqlite:///PATH)")
        normalise_url(url)  # a malformed URL is a start-up error, not a failure of every tool call
        project = env.get(ENV_PROJECT_DIR, "").strip()
        if not project:
            raise InputError(
                f"{ENV_PROJECT_DIR} is not set: give the project directory (file locks are relative to it)"
            )
        project_dir = Path(project).resolve()
        if not project_dir.is_dir():
            raise InputError(f"{ENV_PROJECT_DIR}={project!r} is not a directory")
        # A server someone adds to their own Claude Code may have no agent id; the pid keeps it unique.
        agent_id = env.get(ENV_AGENT_ID, "").strip() or f"mcp-{os.getpid()}"
        if len(agent_id) > MAX_AGENT_ID:
            raise InputError(f"{ENV_AGENT_ID} must be at most {MAX_AGENT_ID} characters")
        return cls(
            database_url=url,
            project_dir=project_dir,
            agent_id=agent_id,
            feature_id=_feature_id(env.get(ENV_FEATURE_ID, "").strip()),
            lease_seconds=_seconds(env, ENV_LEASE_SECONDS, DEFAULT_LEASE_SECONDS),
            verify_timeout_seconds=_seconds(env, ENV_VERIFY_TIMEOUT_SECONDS, DEFAULT_VERIFY_TIMEOUT_SECONDS),
        )


def _feature_id(raw: str) -> int | None:
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{ENV_FEATURE_ID}={raw!r} is not a feature id (a positive integer)")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name}={raw!r} must be a positive number of seconds")
    return value


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
