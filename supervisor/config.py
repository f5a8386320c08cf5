"""Settings shared by every command, resolved from flags, then AGENT_MANAGER_* variables, then defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from api.database import default_url
from api.errors import InputError

# A dead supervisor's work comes back after its lease: past a week that is surely a typo.
MAX_LEASE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    database_url: str
    features_file: Path
    max_agents: int = 3
    lease_seconds: float = 90.0
    max_cost: float | None = None  # US dollars for the whole run

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".agent-manager"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"


def make_settings(
    project_dir: str | None,
    database_url: str | None = None,
    features: str | None = None,
    max_agents: int = 3,
    lease_seconds: float = 90.0,
    max_cost: float | None = None,
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
    if not (math.isfinite(lease_seconds) and 3 <= lease_seconds <= MAX_LEASE_SECONDS):
        raise InputError(f"--lease-seconds must be between 3 and {MAX_LEASE_SECONDS} (a week), got {lease_seconds:g}")
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost > 0):
        raise InputError(f"--max-cost must be a positive number of US dollars, got {max_cost:g}")
    features_file = Path(features).expanduser() if features else root / "features.json"
    if not features_file.is_absolute():
        features_file = Path.cwd() / features_file
    return Settings(
        project_dir=root,
        database_url=database_url or default_url(root),
        features_file=features_file,
        max_agents=max_agents,
        lease_seconds=lease_seconds,
        max_cost=max_cost,
    )
