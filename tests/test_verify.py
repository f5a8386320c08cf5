"""A feature's verify command (api.verify): its verdict, its output, and what it leaves behind.

Each test runs a real shell command. Processes are observed through /proc, where a zombie
(exited, not yet reaped by init) counts as gone.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from api.verify import run_verify

WAIT_S = 60  # bound of every test; each check below ends in a few seconds when it works


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def check(command: str, cwd: Path, timeout_s: float = 30):
    async def bounded():
        with anyio.fail_after(WAIT_S):
            return await run_verify(command, cwd, timeout_s)

    return anyio.run(bounded)


def test_a_command_that_leaves_a_background_process_passes_as_soon_as_it_exits(tmp_path: Path) -> None:
    # The background sleep inherits the command's output: a check that reads until the output
    # closes would wait for the sleep, and fail at the timeout a command that exited 0.
    result = check("sleep 60 & echo server started; true", tmp_path, timeout_s=20)
    assert result.passed, result.summary("...")
    assert result.exit_code == 0
    assert "server started" in result.output_tail
    assert result.seconds < 15


def test_no_process_the_command_started_outlives_the_check(tmp_path: Path) -> None:
    command = (
        "sleep 60 >/dev/null 2>&1 & echo $! > polite.pid; "
        "(trap '' TERM; exec sleep 60) >/dev/null 2>&1 & echo $! > stubborn.pid; "  # ignores SIGTERM
        "echo done"
    )
    result = check(command, tmp_path)
    assert result.passed and result.output_tail == "done\n"
    polite, stubborn = (int((tmp_path / name).read_text()) for name in ("polite.pid", "stubborn.pid"))
    assert not alive(polite)
    assert not alive(stubborn)


def test_a_command_past_the_timeout_is_asked_to_stop_before_it_is_killed(tmp_path: Path) -> None:
    command = "trap 'echo stopping cleanly; exit 1' TERM; echo working; sleep 60 & wait"
    result = check(command, tmp_path, timeout_s=1)
    assert not result.passed
    assert result.exit_code is None
    assert result.output_tail == "working\nstopping cleanly\n"
    assert result.summary("slow").startswith("verify command `slow` timed out; output tail:\nworking")


def test_a_cancelled_check_lets_the_command_clean_up_and_leaves_no_process(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "started")  # the command says, once its trap is set, that it runs
    started = os.open(tmp_path / "started", os.O_RDONLY | os.O_NONBLOCK)
    command = "trap 'echo cleaned > cleaned.txt; exit 1' TERM; sleep 60 >/dev/null 2>&1 & echo $$ $! > started; wait"

    async def scenario() -> list[int]:
        with anyio.fail_after(WAIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_verify, command, tmp_path, 60)
                await anyio.wait_readable(started)
                tg.cancel_scope.cancel()
        return [int(pid) for pid in os.read(started, 100).split()]

    try:
        shell, child = anyio.run(scenario)
    finally:
        os.close(started)
    assert (tmp_path / "cleaned.txt").read_text() == "cleaned\n"
    assert not alive(shell)
    assert not alive(child)


@pytest.mark.parametrize(("notes", "expected_end"), [("it works", "\n\nThe agent's notes: it works"), ("", "out")])
def test_a_failed_verify_leaves_its_summary_and_the_agents_notes(tmp_path: Path, notes: str, expected_end: str) -> None:
    result = check("echo out; exit 3", tmp_path)
    written = result.failure_notes("make check", notes)
    assert written.startswith("verify command `make check` exited 3; output tail:\nout")
    assert written.endswith(expected_end)
