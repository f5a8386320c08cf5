"""The real agent runner: one Claude Agent SDK session (the bundled `claude` CLI) per attempt.

This module runs the session: it builds the options, streams the CLI's messages into the live
view, reminds an agent that has not released its feature, and stops a session that runs too long
or goes quiet. How the session ended is read by supervisor.outcome; the CLI is started and fenced
by supervisor.cli_process; the coordination MCP server is hosted by supervisor.mcp_hosting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIConnectionError,
    CLINotFoundError,
    HookMatcher,
    PermissionResultAllow,
    PermissionResultDeny,
    ProcessError,
    ResultError,
    ResultMessage,
    SystemMessage,
    ToolUseBlock,
)

from supervisor import outcome
from supervisor.cli_process import CliLauncher, nudge_hooks, tool_hooks
from supervisor.mcp_hosting import MCP_SERVER_NAME, McpHost, mcp_tool_names
from supervisor.outcome import SYNTHETIC_MODEL, Progress
from supervisor.preflight import check_cli, probe_api
from supervisor.prompts import REMINDER, SYSTEM_APPEND
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending, Steering
from supervisor.transcripts import Transcript, open_transcript

if TYPE_CHECKING:
    from claude_agent_sdk.types import CanUseTool, HookEvent, PermissionResult, SettingSource

try:  # the SDK warns that allowed tools never reach can_use_tool: that is the point (see options())
    from claude_agent_sdk.types import CanUseToolShadowedWarning

    warnings.filterwarnings("ignore", category=CanUseToolShadowedWarning)
except ImportError:  # pragma: no cover - older SDKs do not warn
    pass

try:  # newer SDKs only
    from claude_agent_sdk import RateLimitEvent
except ImportError:  # pragma: no cover
    RateLimitEvent = None  # type: ignore[assignment,misc]

BUILTIN_TOOLS = (
    "Read", "Write", "Edit", "MultiEdit", "NotebookEdit", "Glob", "Grep", "LS",
    "Bash", "BashOutput", "KillShell", "TodoWrite",
)  # fmt: skip
# From starting the CLI to its answer to the SDK's initialize request (the SDK itself waits 60 s).
STARTUP_TIMEOUT_S = 60.0
# A session we stop is interrupted and its final result read, so that what it spent is recorded.
_WIND_DOWN_S = 3.0
_STDERR_LINES = 20


class _Timeout(Exception):
    def __init__(self, ending: Ending, message: str) -> None:
        super().__init__(message)
        self.ending = ending


class ClaudeRunner:
    """Runs AgentTasks on the bundled `claude` CLI through ClaudeSDKClient."""

    def __init__(
        self,
        *,
        setting_sources: tuple[SettingSource, ...] = ("project",),
        extra_env: dict[str, str] | None = None,
        cli_path: str | None = None,
        project_dir: Path | None = None,
    ) -> None:
        self.setting_sources = list(setting_sources)
        self.extra_env = dict(extra_env or {})
        self.cli = CliLauncher(cli_path, project_dir)
        self.mcp = McpHost()

    async def preflight(self) -> AgentOutcome | None:
        """The CLI answers --version and the API endpoint answers a free request, or what is wrong."""
        env = {**os.environ, **self.extra_env}
        problem = await asyncio.to_thread(check_cli, self.cli.executable(), self.cli.cli_path, env)
        problem = problem or await asyncio.to_thread(probe_api, env)
        if problem is None:
            return None
        return AgentOutcome(problem.ending, problem.message, api_error_status=problem.status)

    def close(self) -> None:
        """Close the in-process MCP servers' database connections."""
        self.mcp.close()

    def options(
        self,
        task: AgentTask,
        hooks: dict[HookEvent, list[HookMatcher]],
        stderr: Callable[[str], None] | None = None,
        can_use_tool: CanUseTool | None = None,
    ) -> ClaudeAgentOptions:
        env = {
            # Nothing but the model endpoint needs to be reachable.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # Our six tools are small: list them directly instead of behind ToolSearch,
            # which saves a model round trip before the first feature_get.
            "ENABLE_TOOL_SEARCH": "false",
            **self.extra_env,
            **task.env,
        }
        cli_path, guard_env = self.cli.command(task.transcript_path.parent)
        env.update(guard_env)
        ask = [t for t in task.ask_tools if t not in BUILTIN_TOOLS]
        append = task.system_append or SYSTEM_APPEND
        # Only ask_tools (left out of allowed_tools) and hook "ask" decisions (Bash) reach can_use_tool.
        return ClaudeAgentOptions(
            cwd=str(task.cwd),
            model=task.model,
            fallback_model=task.fallback_model,
            permission_mode="acceptEdits",  # bypassPermissions is refused as root
            tools=[*BUILTIN_TOOLS, *ask],
            allowed_tools=[*(t for t in BUILTIN_TOOLS if t not in task.ask_tools), *mcp_tool_names()],
            can_use_tool=can_use_tool,
            system_prompt={"type": "preset", "preset": "claude_code", "append": append},
            mcp_servers={MCP_SERVER_NAME: self.mcp.server(task)},
            max_turns=task.max_turns,
            max_budget_usd=task.max_budget_usd,
            resume=task.resume_session_id,
            setting_sources=self.setting_sources,
            env=env,
            hooks=hooks,
            cli_path=cli_path,
            stderr=stderr,
        )

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        progress = Progress(resumed=task.resumed_spend, session_id=task.resume_session_id)
        hooks = tool_hooks(task, lambda reason: on_activity(progress.event(task.feature_id, "waiting_lock", reason)))
        if task.steering is not None:
            told = lambda text: on_activity(progress.event(task.feature_id, "nudge", text))  # noqa: E731
            hooks |= nudge_hooks(task.steering, told)

        def stderr(line: str) -> None:
            progress.stderr = ([*progress.stderr, line.rstrip()])[-_STDERR_LINES:]

        with open_transcript(task.transcript_path) as transcript:
            transcript.write("prompt", {"prompt": task.prompt, "model": task.model, "resume": task.resume_session_id})
            try:
                options = self.options(task, hooks, stderr, self._permissions(task, progress, transcript, on_activity))
                return await self._session(task, options, progress, transcript, on_activity)
            except _Timeout as exc:
                return outcome.outcome(progress, exc.ending, str(exc))
            except CLINotFoundError as exc:
                return outcome.outcome(progress, Ending.SETUP_ERROR, f"claude CLI not found: {exc}")
            except ResultError as exc:
                return outcome.from_result_error(progress, exc)
            except ProcessError as exc:
                return outcome.from_process_error(progress, exc, self.cli.name())
            except CLIConnectionError as exc:
                return outcome.from_connection_error(progress, exc, self.cli.name())
            finally:
                transcript.write("end", progress.record())

    def _permissions(
        self,
        task: AgentTask,
        progress: Progress,
        transcript: Transcript,
        on_activity: Callable[[ActivityEvent], None],
    ) -> CanUseTool | None:
        """The SDK's can_use_tool: a call outside the allow-list waits for a person's decision."""
        ask = task.ask_permission
        if ask is None:
            return None

        async def can_use_tool(tool_name: str, tool_input: dict[str, Any], _context: Any) -> PermissionResult:
            progress.waiting += 1
            since = time.monotonic()
            on_activity(progress.event(task.feature_id, "permission", tool_name))
            try:
                decision = await ask(tool_name, tool_input)
            finally:
                progress.waiting -= 1
                progress.waited_s += time.monotonic() - since
            transcript.write("permission", {"tool": tool_name, "allowed": decision.allowed, "reason": decision.reason})
            on_activity(progress.event(task.feature_id, "tool", tool_name))
            if decision.allowed:
                return PermissionResultAllow()
            return PermissionResultDeny(message=decision.reason)

        return can_use_tool

    async def _session(
        self,
        task: AgentTask,
        options: ClaudeAgentOptions,
        progress: Progress,
        transcript: Transcript,
        on_activity: Callable[[ActivityEvent], None],
    ) -> AgentOutcome:
        deadline = time.monotonic() + task.timeout_s
        client = ClaudeSDKClient(options=options)
        try:
            await asyncio.wait_for(client.connect(), timeout=STARTUP_TIMEOUT_S)
        except TimeoutError:
            await _disconnect(client)
            raise CLIConnectionError(f"no answer to the SDK's initialize request in {STARTUP_TIMEOUT_S:g} s") from None
        try:
            await client.query(task.prompt)
            while True:
                try:
                    result = await self._drain(client, task, progress, transcript, on_activity, deadline)
                except (_Timeout, asyncio.CancelledError):
                    # Timed out, stalled or stopped by the supervisor (shutdown, lost lease): end the
                    # turn and read the CLI's final result, so what the session spent is recorded.
                    await self._wind_down(client, task, progress, transcript, on_activity)
                    raise
                if result is None:
                    return outcome.outcome(progress, Ending.AGENT_ERROR, "the session ended without a result")
                if result.is_error:
                    return outcome.from_result(progress, result)
                told = task.steering.take_nudges() if task.steering is not None else None
                if told is not None:
                    # A person's message that found no tool result to ride on: its own turn.
                    transcript.write("nudge", {"text": told})
                    on_activity(progress.event(task.feature_id, "nudge", told))
                    await client.query(told)
                    continue
                if task.is_released is None or await task.is_released():
                    return outcome.outcome(progress, Ending.COMPLETED)
                if progress.reminders >= task.reminders:
                    return outcome.outcome(progress, Ending.COMPLETED, "ended without calling feature_release")
                progress.reminders += 1
                transcript.write("reminder", {"n": progress.reminders})
                await client.query(REMINDER)
        finally:
            await _disconnect(client)

    async def _wind_down(
        self,
        client: ClaudeSDKClient,
        task: AgentTask,
        progress: Progress,
        transcript: Transcript,
        on_activity: Callable[[ActivityEvent], None],
    ) -> None:
        try:
            async with asyncio.timeout(_WIND_DOWN_S):
                await client.interrupt()
                async for message in client.receive_response():
                    progress.messages += 1
                    transcript.message(message)
                    if isinstance(message, ResultMessage):
                        progress.absorb(message)
                        on_activity(progress.event(task.feature_id, "turn"))
        except Exception:  # noqa: BLE001 - the session is being torn down either way; keep what was read
            pass

    async def _drain(
        self,
        client: ClaudeSDKClient,
        task: AgentTask,
        progress: Progress,
        transcript: Transcript,
        on_activity: Callable[[ActivityEvent], None],
        deadline: float,
    ) -> ResultMessage | None:
        """Stream one query's messages into ``progress`` until its result (None: the stream ended).

        Raises _Timeout when ``deadline`` passes or no message comes for ``task.stall_s``."""
        receiver = _Receiver(client.receive_response().__aiter__(), task.steering)
        try:
            return await self._read(receiver, task, progress, transcript, on_activity, deadline)
        finally:
            await receiver.close()

    async def _read(
        self,
        receiver: _Receiver,
        task: AgentTask,
        progress: Progress,
        transcript: Transcript,
        on_activity: Callable[[ActivityEvent], None],
        deadline: float,
    ) -> ResultMessage | None:
        while True:
            # Time spent waiting for a person's permission does not count against the session.
            left = deadline + progress.waited_s - time.monotonic()
            if left <= 0 and not progress.waiting:
                raise _Timeout(Ending.TIMEOUT, f"timed out after {task.timeout_s:g} s")
            wait = min(task.stall_s, max(left, 0.5))
            try:
                message = await receiver.next(wait)
            except StopAsyncIteration:
                return None
            except _Stop:
                raise _Timeout(Ending.STOPPED, (task.steering and task.steering.stop_reason) or "stopped") from None
            except TimeoutError:
                if progress.waiting:
                    continue  # waiting for a person, not stalled
                if wait < task.stall_s:
                    raise _Timeout(Ending.TIMEOUT, f"timed out after {task.timeout_s:g} s") from None
                raise _Timeout(Ending.STALLED, f"stalled: no message for {task.stall_s:g} s") from None
            progress.messages += 1
            transcript.message(message)
            session_id = getattr(message, "session_id", None) or (getattr(message, "data", None) or {}).get(
                "session_id"
            )
            if session_id and session_id != progress.session_id:
                progress.session_id = session_id
                if task.on_session is not None:
                    await task.on_session(session_id)
            if isinstance(message, AssistantMessage):
                if message.model == SYNTHETIC_MODEL:
                    continue  # the CLI's own words about an API error; the result that follows says more
                progress.model = message.model or progress.model
                # The CLI may split one response into a message per content block, sharing its id.
                if message.message_id is None or message.message_id != progress.last_message_id:
                    progress.last_message_id = message.message_id
                    progress.live_turns += 1
                    progress.in_flight.append(message.usage or {})
                tools = [b.name for b in message.content if isinstance(b, ToolUseBlock)]
                on_activity(progress.event(task.feature_id, "tool" if tools else "message", ", ".join(tools)))
            elif RateLimitEvent is not None and isinstance(message, RateLimitEvent):
                info = message.rate_limit_info
                # The CLI states utilization only with a warning; the windows it read (raw
                # "unifiedWindows": {"five_hour": {"utilization", "resetsAt"}, ...}) always say it.
                # The most used window counts, with its own reset unless a hard limit names one.
                used, kind = info.utilization, info.rate_limit_type
                resets: float | None = info.resets_at
                windows = (info.raw or {}).get("unifiedWindows")
                for name, window in windows.items() if isinstance(windows, dict) else ():
                    if not isinstance(window, dict) or not isinstance(window.get("utilization"), (int, float)):
                        continue
                    if window["utilization"] > (used or 0.0):
                        used, at = float(window["utilization"]), window.get("resetsAt")
                        if isinstance(at, (int, float)) and not (info.status == "rejected" and resets is not None):
                            resets, kind = at, name
                said = {"utilization": used, "resets_at": resets, "rate_limit_type": kind}
                on_activity(progress.event(task.feature_id, "rate_limit", info.status, **said))
            elif isinstance(message, SystemMessage) and message.subtype == "api_retry":
                data = message.data or {}
                delay_ms = data.get("retry_delay_ms")
                if isinstance(delay_ms, (int, float)):
                    progress.retry_after_s = delay_ms / 1000
                status = data.get("error_status") if isinstance(data.get("error_status"), int) else None
                what = " ".join(str(x) for x in (status, data.get("error")) if x) or "no connection"
                tries = f", try {data.get('attempt')} of {data.get('max_retries')}" if data.get("attempt") else ""
                on_activity(progress.event(task.feature_id, "api_retry", what + tries, api_error_status=status))
            elif isinstance(message, ResultMessage):
                progress.absorb(message)
                on_activity(progress.event(task.feature_id, "turn"))
                return message


class _Stop(Exception):
    """A person asked to stop the session."""


class _Receiver:
    """Reads a response's messages with a time limit, keeping a read that timed out pending (the
    SDK's stream must not be cancelled mid-message while the session waits for a person), and
    raises _Stop as soon as a person asks to stop the session."""

    def __init__(self, messages: Any, steering: Steering | None) -> None:
        self.messages = messages
        self.steering = steering
        self.pending: asyncio.Future[Any] | None = None

    async def next(self, within: float) -> Any:
        if self.steering is not None and self.steering.stop_reason is not None:
            raise _Stop
        if self.pending is None:
            self.pending = asyncio.ensure_future(self.messages.__anext__())
        waits: set[asyncio.Future[Any]] = {self.pending}
        stop = asyncio.ensure_future(self.steering.stopped.wait()) if self.steering is not None else None
        if stop is not None:
            waits.add(stop)
        try:
            done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stop is not None:
                stop.cancel()
        if self.pending in done:
            read, self.pending = self.pending, None
            return read.result()
        if stop is not None and stop in done:
            raise _Stop
        raise TimeoutError

    async def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            with contextlib.suppress(BaseException):
                await self.pending
            self.pending = None


async def _disconnect(client: ClaudeSDKClient) -> None:
    # A CLI that never started or already died has nothing to close.
    with contextlib.suppress(Exception):
        await client.disconnect()
