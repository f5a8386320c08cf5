"""A session's start: the guard that ties each CLI to its supervisor, and the MCP server built per session.

The guard now runs util-linux's setpriv where it works (a few milliseconds) and Python elsewhere
(~50 ms of CPU per session); both must keep the same promise: the CLI gets SIGTERM when its
supervisor dies, even by SIGKILL, and never starts for a supervisor that is already gone.
bench/session_start.py measures what the start costs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api.identity import Identity
from mcp_server.server import build_server, server_tools
from supervisor import cli_process
from supervisor.cli_process import CliLauncher, guard_script, python_guard_script

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard is Linux's")

# Stands in for the CLI: says where it runs and with what, then waits for SIGTERM.
FAKE_CLI = """#!/bin/sh
trap 'echo terminated >> "$FAKE_CLI_OUT"; exit 0' TERM
printf 'args:%s\\n' "$@" >> "$FAKE_CLI_OUT"
env | grep '^AGENT_MANAGER_' >> "$FAKE_CLI_OUT"
echo "pid:$$" >> "$FAKE_CLI_OUT"
while :; do sleep 0.05; done
"""

# Stands in for the supervisor: starts the CLI through its guard as the SDK would, then waits.
SUPERVISOR = """
import os, subprocess, sys, time
env = {**os.environ, **{k: v for k, v in (a.split("=", 1) for a in sys.argv[2:])}}
env["AGENT_MANAGER_SUPERVISOR_PID"] = str(os.getpid())
subprocess.Popen([sys.argv[1], "--output-format", "stream-json", "two words"], env=env)
time.sleep(120)
"""


@pytest.fixture(params=["setpriv", "python"])
def guard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The guard script of each kind, written where the runner writes it."""
    if request.param == "setpriv":
        script = guard_script()
        if script is None or "setpriv" not in script:
            pytest.skip("no working setpriv here (util-linux >= 2.33)")
    else:
        script = python_guard_script()
        if script is None:
            pytest.skip("this interpreter's path cannot stand in a shebang line")
    path = tmp_path / "claude-guard"
    path.write_text(script, encoding="utf-8")
    path.chmod(0o755)
    yield str(path)


@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    path = tmp_path / "fake-claude"
    path.write_text(FAKE_CLI, encoding="utf-8")
    path.chmod(0o755)
    return path


def _lines(out: Path) -> list[str]:
    return out.read_text(encoding="utf-8").splitlines() if out.exists() else []


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_the_cli_gets_sigterm_when_its_supervisor_is_killed(guard: str, fake_cli: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.out"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, guard, f"AGENT_MANAGER_CLAUDE_CLI={fake_cli}", f"FAKE_CLI_OUT={out}"]
    )
    try:
        assert _wait_for(lambda: any(line.startswith("pid:") for line in _lines(out))), "the CLI never started"
        lines = _lines(out)
        # The arguments arrive unchanged and the guard's own variables do not reach the CLI.
        assert [line for line in lines if line.startswith("args:")] == [
            "args:--output-format",
            "args:stream-json",
            "args:two words",
        ]
        assert not [line for line in lines if line.startswith("AGENT_MANAGER_")]
        pid = int(next(line for line in lines if line.startswith("pid:"))[4:])
        # The guard exec'd the CLI: the supervisor's child is the CLI itself, no process in between.
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(supervisor.pid)
        assert "terminated" not in _lines(out)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
        assert _wait_for(lambda: "terminated" in _lines(out)), "the CLI outlived its supervisor"
    finally:
        supervisor.kill()
        supervisor.wait(10)
        for line in _lines(out):  # an orphan left by a failure must not outlive the test
            if line.startswith("pid:"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line[4:]), signal.SIGKILL)


def test_the_cli_does_not_start_for_a_supervisor_that_is_gone(guard: str, fake_cli: Path, tmp_path: Path) -> None:
    # The supervisor died before the guard armed the signal: the guard's parent is someone else.
    out = tmp_path / "cli.out"
    env = {
        **os.environ,
        "AGENT_MANAGER_CLAUDE_CLI": str(fake_cli),
        "AGENT_MANAGER_SUPERVISOR_PID": "1",  # not this test, the guard's real parent
        "FAKE_CLI_OUT": str(out),
    }
    done = subprocess.run([guard, "--version"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip() == "agent-manager: the supervisor exited before its claude CLI started"
    assert not out.exists()


def test_the_launcher_prefers_setpriv_and_falls_back_to_python(
    monkeypatch: pytest.MonkeyPatch, fake_cli: Path, tmp_path: Path
) -> None:
    guard_script.cache_clear()
    which = cli_process.shutil.which
    monkeypatch.setattr(cli_process.shutil, "which", lambda name: None if name == "setpriv" else which(name))
    try:
        command, env = CliLauncher(str(fake_cli)).command(tmp_path / "no-setpriv")
        assert command is not None and env["AGENT_MANAGER_CLAUDE_CLI"] == str(fake_cli)
        assert Path(command).read_text(encoding="utf-8") == python_guard_script()
    finally:
        guard_script.cache_clear()
    monkeypatch.undo()
    script = guard_script()
    command, _ = CliLauncher(str(fake_cli)).command(tmp_path / "default")
    assert command is not None and Path(command).read_text(encoding="utf-8") == script
    if Path("/usr/bin/setpriv").exists() or Path("/bin/setpriv").exists():
        assert script is not None and "setpriv --pdeathsig TERM" in script


def test_the_setpriv_guard_starts_the_cli_in_a_few_milliseconds(guard: str, fake_cli: Path, tmp_path: Path) -> None:
    # What the guard costs each session before the CLI runs (the CLI itself takes ~0.5 s of CPU).
    cli = tmp_path / "true-cli"
    cli.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    cli.chmod(0o755)
    env = {**os.environ, "AGENT_MANAGER_CLAUDE_CLI": str(cli), "AGENT_MANAGER_SUPERVISOR_PID": str(os.getpid())}
    runs = []
    for _ in range(5):
        before = os.times()
        subprocess.run([guard], env=env, check=True, timeout=30)
        after = os.times()
        runs.append(after.children_user + after.children_system - before.children_user - before.children_system)
    if "setpriv" in Path(guard).read_text(encoding="utf-8"):
        assert min(runs) < 0.02, runs


def test_every_session_server_shares_the_tools_built_once(tmp_path: Path) -> None:
    tools = server_tools()
    assert [t.name for t in tools] == [
        "feature_get", "feature_release", "feature_claim_batch", "ask_question",
        "claim_file", "release_file", "list_file_locks",
    ]  # fmt: skip
    servers = [
        build_server(
            identity=Identity(database_url="sqlite://", project_dir=tmp_path, agent_id=f"agent-{i}", feature_id=i)
        )
        for i in (1, 2)
    ]
    listed = [s._tool_manager.list_tools() for s in servers]
    assert all(a is b for a, b in zip(listed[0], listed[1], strict=True))
    start = time.perf_counter()
    for i in range(20):
        build_server(identity=Identity(database_url="sqlite://", project_dir=tmp_path, agent_id="a", feature_id=i))
    assert (time.perf_counter() - start) / 20 < 0.005  # was ~30 ms each: one pydantic model per tool


def test_the_guard_text_is_a_valid_shell_script() -> None:
    script = guard_script()
    if script is None or "setpriv" not in script:
        pytest.skip("no working setpriv here")
    assert subprocess.run(["/bin/sh", "-n", "-c", script], check=False).returncode == 0
    assert textwrap.dedent(script).startswith("#!/bin/sh\n")
