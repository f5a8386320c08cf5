"""Where each agent's `claude` CLI keeps its own state.

The CLI rewrites its config file (``.claude.json``) and session files as it runs; several CLIs
started at once on one config directory are reported to corrupt it. Every feature therefore
gets its own ``CLAUDE_CONFIG_DIR`` under ``DIR/.agent-manager/claude/``: sessions running at
the same time never share state, and a retry of the same feature finds the session it resumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CREDENTIALS = ".credentials.json"  # where `claude login` keeps its tokens


def user_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")


def feature_config_dir(state_dir: Path, feature_id: int, environ: Mapping[str, str] | None = None) -> Path:
    """The CLI state directory of one feature, created, with the user's login linked in."""
    target = state_dir / "claude" / f"feature-{feature_id}"
    target.mkdir(parents=True, exist_ok=True)
    credentials = user_config_dir(environ) / CREDENTIALS
    link = target / CREDENTIALS
    # A link, not a copy: when the CLI refreshes an OAuth token, every session sees the new one.
    if credentials.exists() and not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to(credentials.resolve())
    return target
