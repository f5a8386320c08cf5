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
from api.identity import Identity
from api.queue import FeatureQueue
from mcp_server.server import build_server
from supervisor.preflight import check_cli, probe_api
from supervisor.prompts import REMINDER, SYSTEM_APPEND
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending, Spend

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
# From starting the CLI to its answer to the SDK's initialize request (the SDK itself waits 60 s).
STARTUP_TIMEOUT_S = 60.0
# A session we stop is interrupted and its final result read, so that what it spent is recorded.
_WIND_DOWN_S = 3.0
_STDERR_LINES = 20
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


# List prices per million tokens (input, output), only to estimate the cost of a turn in flight;
# the CLI states the exact figure when the turn ends, and the estimate is scaled to agree with it.
_LIST_PRICES = {"haiku": (1.0, 5.0), "sonnet": (3.0, 15.0), "opus": (5.0, 25.0)}


@dataclasses.dataclass
class _Progress:
    """One attempt's session as it goes. The CLI's results carry the session's running cost and
    per-model tokens (over every attempt of a resumed session) but per-query turns."""

    resumed: Spend = Spend()
    session_id: str | None = None
    turns: int = 0  # finished queries' turns, summed
    live_turns: int = 0  # model responses of the query in flight
    last_message_id: str | None = None
    session_cost: float | None = None  # the session's running total, from its last result
    session_input: int = 0
    session_output: int = 0
    model: str | None = None
    reminders: int = 0
    messages: int = 0  # received from the CLI: once there are some, it started
    result: ResultMessage | None = None
    retry_after_s: float | None = None  # the CLI's last retry delay (it honours retry-after)
    in_flight: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # usage of responses since the result
    scale: float | None = None  # the CLI's exact cost / list-price cost, once a result is in
    stderr: list[str] = dataclasses.field(default_factory=list)

    @property
    def spend(self) -> Spend:
        """This attempt's own spend (the resumed session's earlier spend taken off)."""
        if self.session_cost is None:
            return Spend()
        return Spend(
            cost_usd=max(0.0, self.session_cost - self.resumed.cost_usd),
            input_tokens=max(0, self.session_input - self.resumed.input_tokens),
            output_tokens=max(0, self.session_output - self.resumed.output_tokens),
        )

    def estimate(self) -> float | None:
        """This attempt's cost including the responses since the last result, or None if exact."""
        if not self.in_flight:
            return None
        prices = _prices(self.model)
        if prices is None:
            return None
        extra = sum(_list_cost(usage, prices) for usage in self.in_flight) * (self.scale or 1.0)
        return self.spend.cost_usd + extra

    def event(self, feature_id: int, kind: str, detail: str = "", **extra: Any) -> ActivityEvent:
        spend, estimate = self.spend, self.estimate()
        return ActivityEvent(
            feature_id,
            kind,
            detail,
            num_turns=self.turns + self.live_turns,
            cost_usd=spend.cost_usd if estimate is None else estimate,
            cost_is_estimate=estimate is not None,
            input_tokens=spend.input_tokens,
            output_tokens=spend.output_tokens,
            session_id=self.session_id,
            model=self.model,
            **extra,
        )


def _prices(model: str | None) -> tuple[float, float] | None:
    return next((p for family, p in _LIST_PRICES.items() if model and family in model), None)


def _list_cost(usage: dict[str, Any], prices: tuple[float, float]) -> float:
    """Cost of token counts at list prices; cache writes cost 1.25x input, cache reads 0.1x."""
    price_in, price_out = prices
    tokens_in = (
        int(usage.get("input_tokens") or usage.get("inputTokens") or 0)
        + 1.25 * int(usage.get("cache_creation_input_tokens") or usage.get("cacheCreationInputTokens") or 0)
        + 0.1 * int(usage.get("cache_read_input_tokens") or usage.get("cacheReadInputTokens") or 0)
    )
    tokens_out = int(usage.get("output_tokens") or usage.get("outputTokens") or 0)
    return (tokens_in * price_in + tokens_out * price_out) / 1e6


class ClaudeRunner:
    """Runs AgentTasks on the bundled `claude` CLI through ClaudeSDKClient."""

    def __init__(
        self,
        *,
        setting_sources: tuple[str, ...] = ("project",),
        extra_env: dict[str, str] | None = None,
        cli_path: str | None = None,
        project_dir: Path | None = None,
    ) -> None:
        self.setting_sources = list(setting_sources)
        self.extra_env = dict(extra_env or {})
        self.cli_path = cli_path
        self.project_dir = project_dir  # a relative cli_path is taken from here
        self._guards: dict[Path, str | None] = {}
        self._mcp_queues: dict[tuple[str, Path, float], FeatureQueue] = {}

    def _real_cli(self) -> str | None:
        """The executable the sessions run; None if there is none (or it is not executable)."""
        if self.cli_path:
            path = Path(self.cli_path).expanduser()
            if not path.is_absolute() and len(path.parts) > 1 and self.project_dir is not None:
                path = self.project_dir / path
            return shutil.which(str(path))
        bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
        return str(bundled) if bundled.is_file() else shutil.which("claude")

    async def preflight(self) -> AgentOutcome | None:
        """The CLI answers --version and the API endpoint answers a free request, or what is wrong."""
        env = {**os.environ, **self.extra_env}
        problem = await asyncio.to_thread(check_cli, self._real_cli(), self.cli_path, env)
        problem = problem or await asyncio.to_thread(probe_api, env)
        if problem is None:
            return None
        return AgentOutcome(problem.ending, problem.message, api_error_status=problem.status)

    def _guard(self, directory: Path) -> str | None:
        """The guard script in ``directory`` (written once per run), or None where it cannot work."""
        if directory not in self._guards:
            self._guards[directory] = _write_guard(directory) if _GUARD_WORKS else None
        return self._guards[directory]

    def _mcp_server(self, task: AgentTask) -> dict[str, Any]:
        """The coordination MCP server for this session: in this process, or `python -m mcp_server`."""
        if task.mcp_transport == "stdio":
            env = {**task.identity.to_env(), "PYTHONPATH": str(REPO_ROOT)}
            return {"type": "stdio", "command": sys.executable, "args": ["-m", "mcp_server"], "env": env}
        server = build_server(self._mcp_queue, identity=task.identity)
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

    def options(
        self, task: AgentTask, hook: Callable[..., Any], stderr: Callable[[str], None] | None = None
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
        real_cli = self._real_cli()
        cli_path = real_cli or self.cli_path
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
            stderr=stderr,
        )

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        progress = _Progress(resumed=task.resumed_spend, session_id=task.resume_session_id)

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
            on_activity(progress.event(task.feature_id, "waiting_lock", decision.reason))
            return _deny(decision.reason)

        def stderr(line: str) -> None:
            progress.stderr = (progress.stderr + [line.rstrip()])[-_STDERR_LINES:]

        task.transcript_path.parent.mkdir(parents=True, exist_ok=True)
        with open(task.transcript_path, "a", encoding="utf-8") as transcript:
            _write(transcript, "prompt", {"prompt": task.prompt, "model": task.model, "resume": task.resume_session_id})
            try:
                return await self._session(task, guard, stderr, progress, transcript, on_activity)
            except _Timeout as exc:
                return _outcome(progress, exc.ending, str(exc))
            except CLINotFoundError as exc:
                return _outcome(progress, Ending.SETUP_ERROR, f"claude CLI not found: {exc}")
            except ResultError as exc:
                return _from_result_error(progress, exc)
            except ProcessError as exc:
                if not progress.messages:
                    code = exc.exit_code
                    what = _process_failure(exc) if code is not None and code < 0 else f"it exited with code {code}"
                    return _outcome(progress, Ending.SETUP_ERROR, self._failed_start(what, progress))
                return _outcome(progress, Ending.AGENT_ERROR, _process_failure(exc))
            except CLIConnectionError as exc:
                if progress.result is not None and progress.result.is_error:
                    return _classify(progress, progress.result)
                if progress.messages:
                    # It was running: the process went away under the session (killed, crashed).
                    return _outcome(progress, Ending.AGENT_ERROR, f"the claude process died: {_first_line(exc)}")
                return _outcome(progress, Ending.SETUP_ERROR, self._failed_start(_first_line(exc), progress))
            finally:
                _write(
                    transcript,
                    "end",
                    dataclasses.asdict(progress) | {"result": None, "in_flight": None, "spend": progress.spend},
                )

    def _failed_start(self, what: str, progress: _Progress) -> str:
        said = next((line for line in reversed(progress.stderr) if line.strip()), "")
        cli = self._real_cli() or self.cli_path or "claude"
        return f"the claude CLI at {cli} could not start a session: {what}" + (
            f" ({said[:300]})" if said and said not in what else ""
        )

    async def _session(self, task, guard, stderr, progress, transcript, on_activity) -> AgentOutcome:  # noqa: ANN001
        deadline = time.monotonic() + task.timeout_s
        client = ClaudeSDKClient(options=self.options(task, guard, stderr))
        try:
            await asyncio.wait_for(client.connect(), timeout=STARTUP_TIMEOUT_S)
        except asyncio.TimeoutError:
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
        finally:
            await _disconnect(client)

    async def _wind_down(self, client, task, progress, transcript, on_activity) -> None:  # noqa: ANN001
        try:
            async with asyncio.timeout(_WIND_DOWN_S):
                await client.interrupt()
                async for message in client.receive_response():
                    progress.messages += 1
                    _write(transcript, type(message).__name__, _jsonable(message))
                    if isinstance(message, ResultMessage):
                        _absorb(progress, message)
                        on_activity(progress.event(task.feature_id, "turn"))
        except Exception:  # noqa: BLE001 - the session is being torn down either way; keep what was read
            pass

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
                on_activity(progress.event(task.feature_id, "rate_limit", info.status, utilization=info.utilization))
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
                _absorb(progress, message)
                on_activity(progress.event(task.feature_id, "turn"))
                return message


def _absorb(progress: _Progress, result: ResultMessage) -> None:
    progress.result = result
    progress.session_id = result.session_id or progress.session_id
    progress.turns += result.num_turns or 0  # per query, not per session
    progress.live_turns = 0
    progress.in_flight = []
    served = {m: u for m, u in (result.model_usage or {}).items() if m != SYNTHETIC_MODEL}
    if served:
        # Cost and per-model tokens are the session's running totals, resumed attempts included.
        progress.model = next(iter(served))
        progress.session_input = sum(
            int(u.get(k) or 0)
            for u in served.values()
            for k in ("inputTokens", "cacheReadInputTokens", "cacheCreationInputTokens")
        )
        progress.session_output = sum(int(u.get("outputTokens") or 0) for u in served.values())
    if result.total_cost_usd is not None:
        progress.session_cost = result.total_cost_usd
        listed = sum(_list_cost(u, p) for m, u in served.items() if (p := _prices(m)) is not None)
        if listed > 0 and result.total_cost_usd > 0:
            progress.scale = result.total_cost_usd / listed


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
        return _outcome(progress, Ending.AGENT_ERROR, f"reached the turn limit ({progress.turns} turns)")
    if subtype == "error_max_budget_usd":
        spent = f"stopped at its budget after spending ${progress.spend.cost_usd:.4f}"
        outcome = _outcome(progress, Ending.AGENT_ERROR, spent)
        return dataclasses.replace(outcome, over_budget=True)
    return _outcome(progress, Ending.AGENT_ERROR, f"session error: {detail}", status)


def _outcome(progress: _Progress, ending: Ending, message: str = "", status: int | None = None) -> AgentOutcome:
    spend = progress.spend
    return AgentOutcome(
        ending=ending,
        message=message,
        session_id=progress.session_id,
        num_turns=progress.turns + progress.live_turns,
        input_tokens=spend.input_tokens,
        output_tokens=spend.output_tokens,
        cost_usd=spend.cost_usd,
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


async def _disconnect(client: ClaudeSDKClient) -> None:
    try:
        await client.disconnect()
    except Exception:  # noqa: BLE001 - a CLI that never started or already died has nothing to close
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
