"""The one settings object of a run: flags, then AGENT_MANAGER_* variables, then api.defaults.

The project's config file (``routing.load_policy``) adds the agent policy for a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from api import defaults
from api.database import default_url
from api.errors import InputError
from api.identity import Identity
from supervisor.routing import ISOLATIONS, AgentPolicy


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    database_url: str
    features_file: Path
    max_agents: int = defaults.MAX_AGENTS
    lease_seconds: float = defaults.LEASE_SECONDS
    max_cost_usd: float | None = None  # for the whole run
    policy: AgentPolicy = field(default_factory=AgentPolicy)  # from the project's config file
    # How often to look for work freed by other supervisors while nothing runs here.
    idle_poll_seconds: float = defaults.IDLE_POLL_SECONDS
    # Git: "worktree" or "shared" (None: the config file's, else worktree in a git repository
    # with a commit); the integration branch (None: the config file's, else the one checked out).
    isolation: str | None = None
    branch: str | None = None
    remote: str | None = None  # a git remote holding the integration branch (several hosts)
    # Serve mode: keep running when the queue is empty, and dispatch features added later.
    serve: bool = False

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".agent-manager"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def identity(self, agent_id: str, feature_id: int | None, work_dir: Path | None = None) -> Identity:
        """Who an agent of this run is to the coordination MCP server (``work_dir``: its worktree)."""
        return Identity(
            database_url=self.database_url,
            project_dir=self.project_dir,
            agent_id=agent_id,
            feature_id=feature_id,
            lease_seconds=self.lease_seconds,
            verify_timeout_seconds=self.policy.verify_timeout_seconds,
            work_dir=work_dir,
        )


def make_settings(
    project_dir: str | None,
    database_url: str | None = None,
    features: str | None = None,
    max_agents: int = defaults.MAX_AGENTS,
    lease_seconds: float = defaults.LEASE_SECONDS,
    max_cost: float | None = None,
    isolation: str | None = None,
    branch: str | None = None,
    remote: str | None = None,
) -> Settings:
    """Validate the common options. Raises InputError naming the bad one."""
    if not project_dir:
        raise InputError("--project-dir is required (or set AGENT_MANAGER_PROJECT_DIR)")
    root = Path(project_dir).expanduser()
    if not root.exists():
        raise InputError(f"project directory {root} does not exist")
    if not root.is_dir():
        raise InputError(f"project directory {root} is not a directory")
    root = root.resolve()
    if max_agents < 1:
        raise InputError(f"--max-agents must be at least 1, got {max_agents}")
    # A dead supervisor's work comes back after its lease: past a week that is surely a typo.
    low, high = defaults.MIN_LEASE_SECONDS, defaults.MAX_SECONDS
    if not (math.isfinite(lease_seconds) and low <= lease_seconds <= high):
        raise InputError(f"--lease-seconds must be between {low:g} and {high} (a week), got {lease_seconds:g}")
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost > 0):
        raise InputError(f"--max-cost must be a positive number of US dollars, got {max_cost:g}")
    if isolation is not None and isolation not in ISOLATIONS:
        raise InputError(f"--isolation must be worktree or shared, got {isolation!r}")
    if branch is not None and (not branch.strip() or branch.startswith("-")):
        raise InputError(f"--branch must name a git branch, got {branch!r}")
    if remote is not None and (not remote.strip() or remote.startswith("-")):
        raise InputError(f"--remote must name a git remote, got {remote!r}")
    features_file = Path(features).expanduser() if features else root / "features.json"
    if not features_file.is_absolute():
        features_file = Path.cwd() / features_file
    return Settings(
        project_dir=root,
        database_url=database_url or default_url(root),
        features_file=features_file,
        max_agents=max_agents,
        lease_seconds=lease_seconds,
        max_cost_usd=max_cost,
        isolation=isolation,
        branch=branch,
        remote=remote,
    )
