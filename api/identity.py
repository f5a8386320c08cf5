"""Who an agent is to the coordination MCP server: a typed record, and its environment form.

The supervisor hands an in-process server the record itself; a `python -m mcp_server` process
(stdio, or a server someone adds to their own Claude Code) reads it from AGENT_MANAGER_* variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from api import defaults
from api.errors import InputError

ENV_DATABASE_URL = "AGENT_MANAGER_DATABASE_URL"
ENV_PROJECT_DIR = "AGENT_MANAGER_PROJECT_DIR"
ENV_AGENT_ID = "AGENT_MANAGER_AGENT_ID"
ENV_FEATURE_ID = "AGENT_MANAGER_FEATURE_ID"
ENV_LEASE_SECONDS = "AGENT_MANAGER_LEASE_SECONDS"
ENV_VERIFY_TIMEOUT_SECONDS = "AGENT_MANAGER_VERIFY_TIMEOUT_SECONDS"
ENV_WORK_DIR = "AGENT_MANAGER_WORK_DIR"
# Given to an agent's commands, worktree_setup, verify and the gate (never read back here).
ENV_FEATURE_NAME = "AGENT_MANAGER_FEATURE_NAME"
ENV_SLOT = "AGENT_MANAGER_SLOT"


@dataclass(frozen=True)
class Identity:
    """Who the caller is. Comes only from the supervisor or the server's environment, never from a tool argument.

    ``feature_id`` is the feature the supervisor assigned to this agent; ``None`` for a lead
    agent that claims its own work with feature_claim_batch (whose passing verdicts this server
    verifies, within ``verify_timeout_seconds``).
    """

    database_url: str = field(repr=False)  # may carry a password
    project_dir: Path
    agent_id: str
    feature_id: int | None = None
    lease_seconds: float = defaults.LEASE_SECONDS
    verify_timeout_seconds: float = defaults.VERIFY_TIMEOUT_SECONDS
    # The agent's own git worktree in worktree mode: its file-lock paths are relative to it, and
    # name the same repository file for every worktree of the run. None: the project directory.
    work_dir: Path | None = None

    @property
    def files_root(self) -> Path:
        """The directory an agent's file paths are relative to."""
        return self.work_dir or self.project_dir

    def to_env(self) -> dict[str, str]:
        """The AGENT_MANAGER_* variables a `python -m mcp_server` process reads back with from_env."""
        env = {
            ENV_DATABASE_URL: self.database_url,
            ENV_PROJECT_DIR: str(self.project_dir),
            ENV_AGENT_ID: self.agent_id,
            ENV_LEASE_SECONDS: repr(self.lease_seconds),
            ENV_VERIFY_TIMEOUT_SECONDS: repr(self.verify_timeout_seconds),
        }
        if self.feature_id is not None:
            env[ENV_FEATURE_ID] = str(self.feature_id)
        if self.work_dir is not None:
            env[ENV_WORK_DIR] = str(self.work_dir)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Identity:
        """Read the AGENT_MANAGER_* variables. Raises InputError naming the bad or missing one."""
        from api.database import normalise_url  # sqlalchemy: only a server process pays for it

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
        if len(agent_id) > defaults.MAX_AGENT_ID:
            raise InputError(f"{ENV_AGENT_ID} must be at most {defaults.MAX_AGENT_ID} characters")
        work = env.get(ENV_WORK_DIR, "").strip()
        work_dir = Path(work).resolve() if work else None
        if work_dir is not None and not work_dir.is_dir():
            raise InputError(f"{ENV_WORK_DIR}={work!r} is not a directory")
        return cls(
            database_url=url,
            project_dir=project_dir,
            agent_id=agent_id,
            feature_id=_feature_id(env.get(ENV_FEATURE_ID, "").strip()),
            lease_seconds=_seconds(env, ENV_LEASE_SECONDS, defaults.LEASE_SECONDS),
            verify_timeout_seconds=_seconds(env, ENV_VERIFY_TIMEOUT_SECONDS, defaults.VERIFY_TIMEOUT_SECONDS),
            work_dir=work_dir,
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
    return defaults.seconds(raw, name) if raw else default
