"""Starting a session's `claude` CLI and fencing what it does.

Which executable runs (the SDK's bundled CLI unless one is configured), the guard script that
ties each CLI to its supervisor's life, and the PreToolUse hooks that ask the supervisor before
the agent writes a file or runs a command. Where each CLI keeps its state is supervisor.cli_state.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import claude_agent_sdk
from claude_agent_sdk import HookMatcher

from supervisor.runner import AgentTask, Steering

if TYPE_CHECKING:
    from claude_agent_sdk.types import HookCallback, HookEvent

WRITE_TOOLS = "Write|Edit|MultiEdit|NotebookEdit"

# Stands in for the `claude` executable: asks Linux to send the CLI SIGTERM when the supervisor
# dies (PR_SET_PDEATHSIG survives exec), then becomes the CLI. Without it, a supervisor killed
# with SIGKILL leaves its CLIs working on as orphans until their turn ends (measured: stdin EOF
# is only read between turns), calling the model and writing files for features whose leases
# pass to another supervisor. SIGTERM, not SIGKILL: the CLI then stops its own MCP server and
# Bash commands. The signal comes when the thread that started the CLI exits: the SDK starts it
# from the event loop's thread, which lives as long as the supervisor.
#
# util-linux's setpriv sets the signal and execs a shell that checks the supervisor is still its
# parent (it may have died before the signal was armed) and becomes the CLI: a few milliseconds.
# Where setpriv is missing or refuses, Python does the same (~50 ms of CPU per session).
_SETPRIV_GUARD = """#!/bin/sh
# Written by agent-manager (supervisor/cli_process.py): runs the claude CLI so that it dies with its supervisor.
exec {setpriv} --pdeathsig TERM -- /bin/sh -c '
if [ "$PPID" != "${{AGENT_MANAGER_SUPERVISOR_PID:-$PPID}}" ]; then
    echo "agent-manager: the supervisor exited before its claude CLI started" >&2
    exit 1
fi
cli=$AGENT_MANAGER_CLAUDE_CLI
unset AGENT_MANAGER_CLAUDE_CLI AGENT_MANAGER_SUPERVISOR_PID
exec "$cli" "$@"' claude-guard "$@"
"""
_PYTHON_GUARD = """#!{python} -I
# Written by agent-manager (supervisor/cli_process.py): runs the claude CLI so that it dies with its supervisor.
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
if str(os.getppid()) != os.environ.pop("AGENT_MANAGER_SUPERVISOR_PID", str(os.getppid())):
    sys.exit("agent-manager: the supervisor exited before its claude CLI started")
cli = os.environ.pop("AGENT_MANAGER_CLAUDE_CLI")
os.execv(cli, [cli, *sys.argv[1:]])
"""


@functools.cache
def guard_script() -> str | None:
    """The guard for this machine (checked once per process), or None where none can work."""
    if not sys.platform.startswith("linux"):  # prctl is Linux's
        return None
    setpriv = shutil.which("setpriv")
    if setpriv is not None and Path("/bin/sh").is_file() and _setpriv_works(setpriv):
        return _SETPRIV_GUARD.format(setpriv=shlex.quote(setpriv))
    return python_guard_script()


def python_guard_script() -> str | None:
    """The guard in Python, or None if a shebang line cannot name this interpreter."""
    # A shebang line cannot hold spaces and is cut at 127 bytes on older kernels.
    if " " in sys.executable or len(sys.executable) >= 120:
        return None
    return _PYTHON_GUARD.format(python=sys.executable)


def _setpriv_works(setpriv: str) -> bool:
    """util-linux before 2.33 (2018) has no --pdeathsig; a sandbox may refuse the prctl."""
    try:
        done = subprocess.run(
            [setpriv, "--pdeathsig", "TERM", "--", "/bin/sh", "-c", "exit 0"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


class CliLauncher:
    """Which `claude` executable the sessions run, and through which guard."""

    def __init__(self, cli_path: str | None = None, project_dir: Path | None = None) -> None:
        self.cli_path = cli_path
        self.project_dir = project_dir  # a relative cli_path is taken from here
        self._guards: dict[Path, str | None] = {}
        guard_script()  # probes setpriv once per process: here, not in the first session's start

    def executable(self) -> str | None:
        """The executable the sessions run; None if there is none (or it is not executable)."""
        if self.cli_path:
            path = Path(self.cli_path).expanduser()
            if not path.is_absolute() and len(path.parts) > 1 and self.project_dir is not None:
                path = self.project_dir / path
            return shutil.which(str(path))
        bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
        return str(bundled) if bundled.is_file() else shutil.which("claude")

    def name(self) -> str:
        """The CLI as a message names it."""
        return self.executable() or self.cli_path or "claude"

    def command(self, guard_dir: Path) -> tuple[str | None, dict[str, str]]:
        """The ``cli_path`` to hand the SDK, and the variables the guard script reads.

        The guard is written to ``guard_dir`` once per run; where it cannot work, the CLI runs bare.
        """
        real_cli = self.executable()
        guard = self._guard(guard_dir) if real_cli else None
        if real_cli is None or guard is None:
            return real_cli or self.cli_path, {}
        return guard, {"AGENT_MANAGER_CLAUDE_CLI": real_cli, "AGENT_MANAGER_SUPERVISOR_PID": str(os.getpid())}

    def _guard(self, directory: Path) -> str | None:
        if directory not in self._guards:
            self._guards[directory] = _write_guard(directory)
        return self._guards[directory]


def _write_guard(directory: Path) -> str | None:
    path, script = directory / "claude-guard", guard_script()
    if script is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != script:
            # Atomic: another supervisor on the same project may be starting a CLI through it.
            scratch = directory / f".claude-guard.{os.getpid()}"
            scratch.write_text(script, encoding="utf-8")
            scratch.chmod(0o755)
            os.replace(scratch, path)
    except OSError:
        return None
    return str(path) if os.access(path, os.X_OK) else None  # X_OK is refused on a noexec mount


def tool_hooks(task: AgentTask, on_wait: Callable[[str], None]) -> dict[HookEvent, list[HookMatcher]]:
    """PreToolUse hooks that ask ``task.guard_write`` before a file is written and ``task.guard_bash``
    before a command runs; ``on_wait`` hears why a write must wait (a file another agent holds)."""

    async def guard(input_data: dict[str, Any], _tool_use_id: str | None, _context: Any) -> dict[str, Any]:
        tool_input = input_data.get("tool_input") or {}
        if input_data.get("tool_name") == "Bash":
            verdict = task.guard_bash(str(tool_input.get("command", ""))) if task.guard_bash else None
            if verdict is not None and verdict.ask:
                return _decision("ask", verdict.reason)  # the CLI then asks can_use_tool: a person decides
            return _deny(verdict.reason) if verdict is not None and not verdict.allowed else {}
        path = tool_input.get("file_path") or tool_input.get("notebook_path")
        if not path or task.guard_write is None:
            return {}
        decision = await task.guard_write(str(path))
        if decision.allowed:
            return {}
        on_wait(decision.reason)
        return _deny(decision.reason)

    # The SDK types a hook's input as a union of TypedDicts; a PreToolUse hook only sees one kind.
    hook = cast("HookCallback", guard)
    return {"PreToolUse": [HookMatcher(matcher=WRITE_TOOLS, hooks=[hook]), HookMatcher(matcher="Bash", hooks=[hook])]}


def nudge_hooks(steering: Steering, on_nudge: Callable[[str], None]) -> dict[HookEvent, list[HookMatcher]]:
    """A PostToolUse hook that hands a person's pending nudges to the model with the next tool result."""

    async def deliver(_input: dict[str, Any], _tool_use_id: str | None, _context: Any) -> dict[str, Any]:
        message = steering.take_nudges()
        if message is None:
            return {}
        on_nudge(message)
        return {"hookSpecificOutput": {"hookEventName": "PostToolUse", "additionalContext": message}}

    return {"PostToolUse": [HookMatcher(matcher=None, hooks=[cast("HookCallback", deliver)])]}


def _deny(reason: str) -> dict[str, Any]:
    return _decision("deny", reason)


def _decision(decision: str, reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": decision,
            "permissionDecisionReason": reason,
        }
    }
