"""Real git for the tests: a command runner, and git free of the developer's own configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

# The developer's ~/.gitconfig (signing, hooks, default branch) must not change what git does here.
NO_USER_CONFIG = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    """Run ``git ARGS`` in ``cwd``; its stdout without the final newline. Fails the test on an error."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.rstrip("\n")


@pytest.fixture(autouse=True)
def no_user_git_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Autouse in every test module that imports it."""
    for name, value in NO_USER_CONFIG.items():
        monkeypatch.setenv(name, value)
