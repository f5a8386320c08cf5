"""The real agent runner: one Claude Agent SDK session (the bundled `claude` CLI) per attempt."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import claude_agent_sdk
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIConnectionError,
    CLINotFoundError,
    HookMatcher,
    ProcessError,
    ResultError,
    ResultMessage,
    SystemMessage,
    ToolUseBlock,
)

from api.database import Database
from api.queue import FeatureQueue
from mcp_server import Identity
from mcp_server.server import build_server
from supervisor.prompts import REMINDER, SYSTEM_APPEND
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending

try:  # newer SDKs only
    from claude_agent_sdk import RateLimitEvent
except ImportError:  # pragma: no cover
    RateLimitEvent = None  # type: ignore[assignment,misc]

REPO_ROOT = Path(__file__).resolve().parent.parent
MCP_SERVER_NAME = "agent-manager"
AGENT_MCP_TOOLS = ("feature_get", "feature_release", "claim_file", "release_file", "list_file_locks")
BUILTIN_TOOLS = (
    "Read", "Write", "Edit", "MultiEdit", "NotebookEdit", "Glob", "Grep", "LS",
    "Bash", "BashOutput", "KillShell", "TodoWrite",
)  # fmt: skip
WRITE_TOOLS = "Write|Edit|MultiEdit|NotebookEdit"
_INTERRUPT_GRACE_S = 5.0
SYNTHETIC_MODEL = "<synthetic>"  # what the CLI names the model of its own error messages

# Stands in for the `claude` executable: asks Linux to send the CLI SIGTERM when the supervisor
# dies (PR_SET_PDEATHSIG survives exec), then becomes the CLI. Without it, a supervisor killed
# with SIGKILL leaves its CLIs working on as orphans until their turn ends (measured: stdin EOF
# is only read between turns), calling the model and writing files for features whose leases
# pass to another supervisor. SIGTERM, not SIGKILL: the CLI then stops its own MCP server and
# Bash commands. The signal comes when the thread that started the CLI exits: the SDK starts it
# from the event loop's thread, which lives as long as the supervisor.
_GUARD_SCRIPT = """#!{python} -I
# Written by agent-manager (supervisor/claude_runner.py): runs the claude CLI so that it dies with its supervisor.
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
if str(os.getppid()) != os.environ.pop("AGENT_MANAGER_SUPERVISOR_PID", str(os.getppid())):
    sys.exit("agent-manager: the supervisor exited before its claude CLI started")
cli = os.environ.pop("AGENT_MANAGER_CLAUDE_CLI")
os.execv(cli, [cli, *sys.argv[1:]])
"""
# prctl is Linux's; a shebang line cannot hold spaces and is cut at 127 bytes on older kernels.
_GUARD_WORKS = sys.platform.startswith("linux") and " " not in sys.executable and len(sys.executable) < 120


def mcp_tool_names() -> list[str]:
    return [f"mcp__{MCP_SERVER_NAME}__{name}" for name in AGENT_MCP_TOOLS]


class _Timeout(Exception):
    def __init__(self, ending: Ending, message: str) -> None:
        super().__init__(message)
        self.ending = ending


@dataclasses.dataclass
class _Progress:
    session_id: str | None = None
    num_turns: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    reminders: int = 0
    messages: int = 0  # received from the CLI: once there are some, it started
    result: ResultMessage | None = None
    retry_after_s: float | None = None  # the CLI's last retry delay (it honours retry-after)


class ClaudeRunner:
    """Runs AgentTasks on the bundled `claude` CLI through ClaudeSDKClient."""

    def __init__(
        self,
        *,
        setting_sources: tuple[str, ...] = ("project",),
        extra_env: dict[str, str] | None = None,
        cli_path: str | None = None,
    ) -> None:
        self.setting_sources = list(setting_sources)
        self.extra_env = dict(extra_env or {})
        self.cli_path = cli_path
        self._guards: dict[Path, str | None] = {}
        self._mcp_queues: dict[tuple[str, Path, float], FeatureQueue] = {}

    def _real_cli(self) -> str | None:
        """The executable the SDK would start; None if there is none (the SDK then reports it)."""
        if self.cli_path:
            return shutil.which(self.cli_path)
        bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
        return str(bundled) if bundled.is_file() else shutil.which("claude")

    def _guard(self, directory: Path) -> str | None:
        """The guard script in ``directory`` (written once per run), or None where it cannot work."""
        if directory not in self._guards:
            self._guards[directory] = _write_guard(directory) if _GUARD_WORKS else None
        return self._guards[directory]

    def _mcp_server(self, task: AgentTask) -> dict[str, Any]:
        """The coordination MCP server for this session: in this process, or `python -m mcp_server`."""
        if task.mcp_transport == "stdio":
            env = {**task.mcp_env, "PYTHONPATH": str(REPO_ROOT)}
            return {"type": "stdio", "command": sys.executable, "args": ["-m", "mcp_server"], "env": env}
        identity = Identity.from_env(task.mcp_env)
        server = build_server(self._mcp_queue, identity=identity)
        # The SDK serves any low-level mcp Server over an in-memory transport, lifespan included;
        # MCPServer keeps its own as _lowlevel_server (no public accessor in mcp 2.x).
        return {"type": "sdk", "name": MCP_SERVER_NAME, "instance": server._lowlevel_server}

    def _mcp_queue(self, identity: Identity) -> FeatureQueue:
        """One queue per database for every in-process server: sessions share its connection pool."""
        key = (identity.database_url, identity.project_dir, identity.lease_seconds)
        if key not in self._mcp_queues:
            db = Database(identity.database_url, pool_size=10)
            self._mcp_queues[key] = FeatureQueue(
                db, project_dir=identity.project_dir, lease_seconds=identity.lease_seconds
            )
        return self._mcp_queues[key]

    def close(self) -> None:
        """Close the in-process MCP servers' database connections."""
        for queue in self._mcp_queues.values():
            queue.db.dispose()
        self._mcp_queues.clear()

    def options(self, task: AgentTask, hook: Callable[..., Any]) -> ClaudeAgentOptions:
        env = {
            # Nothing but the model endpoint needs to be reachable.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # Our six tools are small: list them directly instead of behind ToolSearch,
            # which saves a model round trip before the first feature_get.
            "ENABLE_TOOL_SEARCH": "false",
            **self.extra_env,
            **task.env,
        }
        cli_path, real_cli = self.cli_path, self._real_cli()
        guard = self._guard(task.transcript_path.parent) if real_cli else None
        if guard is not None:
            cli_path = guard
            env.update(AGENT_MANAGER_CLAUDE_CLI=real_cli, AGENT_MANAGER_SUPERVISOR_PID=str(os.getpid()))
        return ClaudeAgentOptions(
            cwd=str(task.cwd),
            model=task.model,
            fallback_model=task.fallback_model,
            permission_mode="acceptEdits",  # bypassPermissions is refused as root
            tools=list(BUILTIN_TOOLS),
            allowed_tools=[*BUILTIN_TOOLS, *mcp_tool_names()],
            system_prompt={"type": "preset", "preset": "claude_code", "append": SYSTEM_APPEND},
            mcp_servers={MCP_SERVER_NAME: self._mcp_server(task)},
            max_turns=task.max_turns,
            max_budget_usd=task.max_budget_usd,
            resume=task.resume_session_id,
            setting_sources=self.setting_sources,
            env=env,
            hooks={
                "PreToolUse": [
                    HookMatcher(matcher=WRITE_TOOLS, hooks=[hook]),
                    HookMatcher(matcher="Bash", hooks=[hook]),
                ]
            },
            cli_path=cli_path,
        )

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        progress = _Progress(session_id=task.resume_session_id)

        async def guard(input_data: dict[str, Any], _tool_use_id: str | None, _context: Any) -> dict[str, Any]:
            tool_input = input_data.get("tool_input") or {}
            if input_data.get("tool_name") == "Bash":
                verdict = task.guard_bash(str(tool_input.get("command", ""))) if task.guard_bash else None
                return _deny(verdict.reason) if verdict is not None and not verdict.allowed else {}
            path = tool_input.get("file_path") or tool_input.get("notebook_path")
            if not path or task.guard_write is None:
                return {}
            decision = await task.guard_write(str(path))
            if decision.allowed:
                return {}
            on_activity(ActivityEvent(task.feature_id, "waiting_lock", decision.reason, progress.num_turns))
            return _deny(decision.reason)

        task.transcript_path.parent.mkdir(parents=True, exist_ok=True)
        with open(task.transcript_path, "a", encoding="utf-8") as transcript:
            _write(transcript, "prompt", {"prompt": task.prompt, "model": task.model, "resume": task.resume_session_id})
            try:
                return await self._session(task, guard, progress, transcript, on_activity)
            except _Timeout as exc:
                return _outcome(progress, exc.ending, str(exc))
            except CLINotFoundError as exc:
                return _outcome(progress, Ending.SETUP_ERROR, f"claude CLI not found: {exc}")
            except ResultError as exc:
                return _from_result_error(progress, exc)
            except ProcessError as exc:
                return _outcome(progress, Ending.AGENT_ERROR, _process_failure(exc))
            except CLIConnectionError as exc:
                if progress.result is not None and progress.result.is_error:
                    return _classify(progress, progress.result)
                if progress.messages:
                    # It was running: the process went away under the session (killed, crashed).
                    return _outcome(progress, Ending.AGENT_ERROR, f"the claude process died: {_first_line(exc)}")
                return _outcome(progress, Ending.SETUP_ERROR, f"cannot start the claude CLI: {_first_line(exc)}")
            finally:
                _write(transcript, "end", dataclasses.asdict(progress) | {"result": None})

    async def _session(self, task, guard, progress, transcript, on_activity) -> AgentOutcome:  # noqa: ANN001
        deadline = time.monotonic() + task.timeout_s
        async with ClaudeSDKClient(options=self.options(task, guard)) as client:
            await client.query(task.prompt)
            while True:
                try:
                    result = await self._drain(client, task, progress, transcript, on_activity, deadline)
                except _Timeout:
                    await _interrupt(client)
                    raise
                if result is None:
                    return _outcome(progress, Ending.AGENT_ERROR, "the session ended without a result")
                if result.is_error:
                    return _classify(progress, result)
                if task.is_released is None or await task.is_released():
                    return _outcome(progress, Ending.COMPLETED)
                if progress.reminders >= task.reminders:
                    return _outcome(progress, Ending.COMPLETED, "ended without calling feature_release")
                progress.reminders += 1
                _write(transcript, "reminder", {"n": progress.reminders})
                await client.query(REMINDER)

    async def _drain(self, client, task, progress, transcript, on_activity, deadline) -> ResultMessage | None:  # noqa: ANN001
        messages = client.receive_response().__aiter__()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout(Ending.TIMEOUT, f"timed out after {task.timeout_s:g} s")
            wait = min(task.stall_s, left)
            try:
                message = await asyncio.wait_for(messages.__anext__(), timeout=wait)
            except StopAsyncIteration:
                return None
            except asyncio.TimeoutError:
                if wait < task.stall_s:
                    raise _Timeout(Ending.TIMEOUT, f"timed out after {task.timeout_s:g} s") from None
                raise _Timeout(Ending.STALLED, f"stalled: no message for {task.stall_s:g} s") from None
            progress.messages += 1
            _write(transcript, type(message).__name__, _jsonable(message))
            session_id = getattr(message, "session_id", None) or (getattr(message, "data", None) or {}).get(
                "session_id"
            )
            if session_id and session_id != progress.session_id:
                progress.session_id = session_id
                if task.on_session is not None:
                    await task.on_session(session_id)
            if isinstance(message, AssistantMessage):
                if message.model and message.model != SYNTHETIC_MODEL:
                    progress.model = message.model
                tools = [b.name for b in message.content if isinstance(b, ToolUseBlock)]
                on_activity(
                    ActivityEvent(task.feature_id, "tool" if tools else "message", ", ".join(tools), progress.num_turns)
                )
            elif RateLimitEvent is not None and isinstance(message, RateLimitEvent):
                info = message.rate_limit_info
                on_activity(ActivityEvent(task.feature_id, "rate_limit", info.status, utilization=info.utilization))
            elif isinstance(message, SystemMessage) and message.subtype == "api_retry":
                delay_ms = (message.data or {}).get("retry_delay_ms")
                if isinstance(delay_ms, (int, float)):
                    progress.retry_after_s = delay_ms / 1000
            elif isinstance(message, ResultMessage):
                _absorb(progress, message)
                on_activity(ActivityEvent(task.feature_id, "turn", "", progress.num_turns, progress.cost_usd))
                return message


def _absorb(progress: _Progress, result: ResultMessage) -> None:
    progress.result = result
    progress.session_id = result.session_id or progress.session_id
    # Each turn's result reports the session's running totals.
    progress.num_turns = result.num_turns or progress.num_turns
    progress.cost_usd = result.total_cost_usd or progress.cost_usd
    usage = result.usage or {}
    progress.input_tokens = (
        sum(int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        or progress.input_tokens
    )
    progress.output_tokens = int(usage.get("output_tokens") or 0) or progress.output_tokens
    served = [m for m in (result.model_usage or {}) if m != SYNTHETIC_MODEL]
    if served:
        progress.model = served[0]


def _classify(progress: _Progress, result: ResultMessage) -> AgentOutcome:
    return _classify_fields(
        progress, result.subtype, result.api_error_status, result.terminal_reason, result.result, result.errors
    )


def _from_result_error(progress: _Progress, exc: ResultError) -> AgentOutcome:
    if exc.session_id:
        progress.session_id = exc.session_id
    return _classify_fields(progress, exc.subtype, exc.api_error_status, exc.terminal_reason, exc.result, exc.errors)


def _classify_fields(progress, subtype, status, reason, text, errors) -> AgentOutcome:  # noqa: ANN001
    detail = _first_line(text or "; ".join(errors or []) or subtype or "error")
    if status in (401, 403):
        return _outcome(progress, Ending.AUTH_ERROR, f"the API rejected the credentials ({status}): {detail}", status)
    if status is not None and (status == 429 or status >= 500) or reason == "api_error":
        return _outcome(
            progress, Ending.API_UNAVAILABLE, f"API unavailable ({status or 'connection'}): {detail}", status
        )
    if subtype == "error_max_turns":
        return _outcome(progress, Ending.AGENT_ERROR, f"reached the turn limit ({progress.num_turns} turns)")
    if subtype == "error_max_budget_usd":
        spent = f"stopped at its budget after spending ${progress.cost_usd:.4f}"
        outcome = _outcome(progress, Ending.AGENT_ERROR, spent)
        return dataclasses.replace(outcome, over_budget=True)
    return _outcome(progress, Ending.AGENT_ERROR, f"session error: {detail}", status)


def _outcome(progress: _Progress, ending: Ending, message: str = "", status: int | None = None) -> AgentOutcome:
    return AgentOutcome(
        ending=ending,
        message=message,
        session_id=progress.session_id,
        num_turns=progress.num_turns,
        input_tokens=progress.input_tokens,
        output_tokens=progress.output_tokens,
        cost_usd=progress.cost_usd,
        model=progress.model,
        reminders_sent=progress.reminders,
        api_error_status=status,
        retry_after_s=progress.retry_after_s,
    )


def _write_guard(directory: Path) -> str | None:
    path, script = directory / "claude-guard", _GUARD_SCRIPT.format(python=sys.executable)
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


def _process_failure(exc: ProcessError) -> str:
    code = exc.exit_code
    if code is not None and code < 0:  # killed by a signal: the OOM killer, a user, a crash
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the claude process died (killed by {name})"
    return f"the claude process failed: {_first_line(exc)}"


async def _interrupt(client: ClaudeSDKClient) -> None:
    try:
        await asyncio.wait_for(client.interrupt(), timeout=_INTERRUPT_GRACE_S)
    except Exception:  # noqa: BLE001 - the session is being torn down either way
        pass


def _deny(reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": reason,
        }
    }


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:500] if text else ""


def _jsonable(message: object) -> Any:
    if dataclasses.is_dataclass(message):
        return dataclasses.asdict(message)  # type: ignore[arg-type]
    return repr(message)


def _write(transcript: TextIO, kind: str, data: Any) -> None:
    transcript.write(json.dumps({"ts": time.time(), "type": kind, "data": data}, default=str) + "\n")
    transcript.flush()
