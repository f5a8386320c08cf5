"""Run a feature's ``verify`` command in its workspace; only exit 0 lets it pass (on every path: the
supervisor, and the MCP server's feature_release for self-claimed features)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

TAIL_CHARS = 4000
KILL_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL to what the command leaves running
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class VerifyResult:
    passed: bool
    exit_code: int | None  # None: stopped at the timeout
    output_tail: str
    seconds: float

    @property
    def ended(self) -> str:
        """How the command ended, as a message says it: "exited 1", "timed out"."""
        return "timed out" if self.exit_code is None else f"exited {self.exit_code}"

    def summary(self, command: str) -> str:
        return f"verify command `{command}` {self.ended}; output tail:\n{self.output_tail}".rstrip()

    def failure_notes(self, command: str, agent_notes: str = "") -> str:
        """The notes a failed verify leaves on its feature, the same whoever ran it."""
        verdict = self.summary(command)
        return f"{verdict}\n\nThe agent's notes: {agent_notes}" if agent_notes else verdict


async def run_verify(command: str, cwd: Path, timeout_s: float, env: Mapping[str, str] | None = None) -> VerifyResult:
    """Run ``command`` with a shell in ``cwd`` (``env`` added to this process's environment);
    stdout and stderr are kept together.

    The verdict is the shell's own exit status, as soon as it exits: a process it left in the
    background (``server & ...``) does not hold it up. Whatever the command leaves running is
    stopped before this returns (SIGTERM to its process group, SIGKILL after
    KILL_GRACE_SECONDS), and so is the command itself at the timeout or on cancellation.
    """
    start = time.monotonic()
    # A file, not a pipe: background children inherit the output, and reading a pipe to its end
    # would wait for them instead of for the command.
    with tempfile.TemporaryFile() as output:
        # Shielded: a cancellation that lands here would leave a started command without its
        # cleanup below (it is delivered at the next await instead).
        with anyio.CancelScope(shield=True):
            proc = await asyncio.create_subprocess_shell(
                command,
                cwd=cwd,
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so its children can be stopped with it
            )
        code: int | None = None
        try:
            code = await asyncio.wait_for(proc.wait(), timeout=timeout_s)
        except TimeoutError:
            pass
        finally:
            with anyio.CancelScope(shield=True):  # on cancellation too: stopping is bounded
                await anyio.to_thread.run_sync(_end_group, proc.pid)
        if code is None:
            await proc.wait()  # dead by now; reap it
        tail = _tail(output)
    return VerifyResult(code == 0, code, tail, time.monotonic() - start)


def _tail(output: BinaryIO) -> str:
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - TAIL_CHARS * 4))  # at most 4 bytes per character in UTF-8
    return output.read().decode("utf-8", "replace")[-TAIL_CHARS:]


def _end_group(pgid: int) -> None:
    """SIGTERM every process of the group, SIGKILL what is left after the grace; return once none runs."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    if _wait_group(pgid, KILL_GRACE_SECONDS):
        return
    _signal_group(pgid, signal.SIGKILL)
    _wait_group(pgid, KILL_GRACE_SECONDS)  # a killed process is gone at its next scheduling


def _signal_group(pgid: int, sig: int) -> bool:
    """False when the group has no process left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that changed its user (setuid) still counts
        return True
    return True


def _wait_group(pgid: int, seconds: float) -> bool:
    """Whether every process of the group ended within ``seconds``."""
    deadline = time.monotonic() + seconds
    while _group_runs(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True


def _group_runs(pgid: int) -> bool:
    """Whether a process of the group still runs. Exited ones count as gone although they stay
    in the group until their parent (init, for orphans) reaps them, which can take seconds."""
    if not _signal_group(pgid, 0):
        return False
    try:
        entries = os.scandir("/proc")
    except OSError:  # no procfs: only the signal test above can tell
        return True
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # exited meanwhile
                continue
            # The command name (field 2) may hold spaces and ")": fields 3 on follow its last ")".
            state, _ppid, group = stat[stat.rfind(b")") + 2 :].split()[:3]
            if int(group) == pgid and state not in (b"Z", b"X"):
                return True
    return False
