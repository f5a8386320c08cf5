"""Run a feature's ``verify`` command in its workspace; only exit 0 lets it pass (on every path: the
supervisor, and the MCP server's feature_release for self-claimed features)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

TAIL_CHARS = 4000


@dataclass(frozen=True)
class VerifyResult:
    passed: bool
    exit_code: int | None  # None: killed at the timeout
    output_tail: str
    seconds: float

    def summary(self, command: str) -> str:
        what = "timed out" if self.exit_code is None else f"exited {self.exit_code}"
        return f"verify command `{command}` {what}; output tail:\n{self.output_tail}".rstrip()


async def run_verify(command: str, cwd: Path, timeout_s: float) -> VerifyResult:
    """Run ``command`` with a shell; stdout and stderr are captured together."""
    start = time.monotonic()
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # so a timeout kills the command's children too
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
        code: int | None = proc.returncode
    except asyncio.TimeoutError:
        _kill_group(proc.pid)
        output, _ = await proc.communicate()
        code = None
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    text = output.decode("utf-8", "replace")
    return VerifyResult(code == 0, code, text[-TAIL_CHARS:], time.monotonic() - start)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
