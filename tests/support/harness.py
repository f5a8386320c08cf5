"""Running `python agent_manager.py` as a subprocess against a scripted model, for end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.database import Database
from api.queue import FeatureQueue
from supervisor.scripted_model import FakeModelServer, Reply, Request, isolated_cli_env
from tests.support.projects import write_features

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240


class Run:
    """A project directory, a scripted model server, and the CLI pointed at both."""

    def __init__(
        self,
        tmp_path: Path,
        brain: Callable[[Request], Reply],
        features: list[dict],
        config: str,
        database_url: str | None = None,
    ) -> None:
        self.project = tmp_path / "project"
        (self.project / ".agent-manager").mkdir(parents=True)
        write_features(self.project, features, indent=2)
        (self.project / ".agent-manager" / "config.toml").write_text(config, encoding="utf-8")
        self.server = FakeModelServer(brain).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_MANAGER_", "ANTHROPIC_", "CLAUDE_"))}
        # One retry inside the CLI, so API failures reach the supervisor in about a second.
        env.update(isolated_cli_env(self.server.base_url, tmp_path / "cli", CLAUDE_CODE_MAX_RETRIES="1"))
        self.env = env
        # None: the CLI's default, a SQLite file in the project; else passed with --database-url.
        self.database_url = database_url
        self.db_url = database_url or f"sqlite:///{self.project / '.agent-manager' / 'features.db'}"

    def command(self, *args: str) -> list[str]:
        database = ["--database-url", self.database_url] if self.database_url else []
        return [sys.executable, str(REPO / "agent_manager.py"), *args, "--project-dir", str(self.project), *database]

    def supervise(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
        )

    def status(self) -> dict[str, Any]:
        done = subprocess.run(
            [*self.command("status", "--json")], env=self.env, capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        return report | {"by_name": {f["name"]: f for f in report["features"]}}

    def queue(self) -> FeatureQueue:
        return FeatureQueue(Database(self.db_url), project_dir=self.project)

    def close(self) -> None:
        self.server.stop()


def config(**overrides: Any) -> str:
    """A config.toml with small limits, so failure paths finish in seconds; a dict value is a table."""
    values = {"stall_seconds": 60, "backoff_initial_seconds": 0.5, "backoff_max_seconds": 2, **overrides}
    scalars = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if not isinstance(v, dict))
    tables = "".join(
        f"\n[{k}]\n" + "".join(f"{json.dumps(key)} = {json.dumps(value)}\n" for key, value in v.items())
        for k, v in values.items()
        if isinstance(v, dict)
    )
    return scalars + tables


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(
        brain: Callable[[Request], Reply], features: list[dict], database_url: str | None = None, **overrides: Any
    ) -> Run:
        run = Run(tmp_path / f"run{len(runs)}", brain, features, config(**overrides), database_url)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def descendants(pid: int) -> dict[int, str]:
    """Processes below ``pid`` (pid -> command line), read from /proc."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def assert_all_exit(processes: dict[int, str], timeout: float) -> None:
    """Fail unless every process (pid -> command line) has exited within ``timeout`` seconds."""
    # Polled: a process's exit is observable from here only through /proc.
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {pid: command for pid, command in processes.items() if alive(pid)} == {}, "still running"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
