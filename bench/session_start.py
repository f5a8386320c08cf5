"""Session start: claim -> the session's first model request, beside bare `claude` sessions started at once.

Issue 13: from a free slot with a ready feature to the next session's first model request, against
N = 3 bare `claude` sessions started at the same moment on the same machine (the CLI's own start-up
is CPU-bound, about 0.5 s of CPU, so only the same concurrency compares). One run interleaves, in
each repetition (alternating their order), three waves of N sessions:

- *bare*: N sessions started at once through ``ClaudeSDKClient`` (connect, then the prompt, as the
  runner does) with the tests' isolated environment (``supervisor.scripted_model.cli_options``: no
  settings, no MCP server, no hooks, a fresh CLAUDE_CONFIG_DIR each); latency = calling connect()
  -> the scripted server receiving the session's first request;
- *supervised*: one real ``Supervisor`` in serve mode for the whole run, with a real ``ClaudeRunner``
  (everything `agent-manager run` builds: the guard, a CLI state directory per feature, the
  in-process MCP server, hooks, can_use_tool, the project's settings); each wave imports N ready
  features from another queue and pokes it; latency = the claim committed (``FeatureQueue.claim``
  returning in the supervisor's thread) -> that feature's first request. Its first wave (cold
  engine and MCP queue) is a row of its own, the others are *supervised*;
- *runner options*: bare sessions given everything ``ClaudeRunner.options`` builds, without the
  supervisor around them (built before the clock starts).

The scripted model holds every session at its first request until the whole wave has sent one
(a session that went on with its turn would take CPU from those still starting), then answers a
bare session with text and plays the least agent for a feature: feature_get, feature_release
(passing), end of turn. Each session's phases are timed (dispatch: claim -> runner.run; options:
-> connect(); CLI start: -> the CLI's answer to initialize; prompt: -> first request), with the
CPU its CLI process had used (user + system, the guard's included: it execs into the CLI) when
its first request arrived, and this process's CPU over the wave.

Then, unless ``--no-ingredients`` (or ``--quick``), the ingredients: one session at a time, bare
and bare plus one piece of the runner's session (the guard, the Python guard it replaced, the
supervisor's environment and CLI state directory, the MCP server, the hooks, can_use_tool, the
project's settings, the tool set and system prompt, all of them), twice per repetition. Alone, a
CLI's start is not smeared by the others' and costs of 10-50 ms show: this is the breakdown in
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, PermissionResultAllow, ResultMessage
from cli_overhead import brain as feature_brain
from common import ms, print_table, write_results
from simulated import bench_settings

from api.database import Database
from api.features_file import FeatureSpec
from api.identity import Identity
from api.queue import FeatureQueue
from supervisor import cli_process
from supervisor.claude_runner import BUILTIN_TOOLS, ClaudeRunner
from supervisor.cli_process import CliLauncher, nudge_hooks, tool_hooks
from supervisor.cli_state import feature_config_dir
from supervisor.live import PlainView
from supervisor.loop import Supervisor
from supervisor.mcp_hosting import MCP_SERVER_NAME, McpHost, mcp_tool_names
from supervisor.prompts import SYSTEM_APPEND
from supervisor.routing import load_policy
from supervisor.runner import AgentTask, Steering
from supervisor.scripted_model import FakeModelServer, Reply, Request, cli_options, isolated_cli_env
from supervisor.scripted_model import agents as scripted

AGENTS = 3
STEADY_SESSIONS = 15
GOAL_RATIO = 1.2
_TICK = os.sysconf("SC_CLK_TCK")
_KEY_RE = re.compile(r"\[\[(\S+)\]\]")
_FEATURE_RE = re.compile(r"Implement feature #(\d+)")

# -- timing ------------------------------------------------------------------------------------------

_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_key", default=None)


class Marks:
    """Wall-clock marks (time.time(), the scripted server's clock) per session key."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.at: dict[str, dict[str, float]] = {}
        self.pids: dict[str, int] = {}
        self.supervised_prefix = ""  # "sup-<rep>": a feature's first request is keyed by it and the feature id
        self.expect: dict[str, int] = {}  # wave -> how many sessions it starts

    def mark(self, key: str | None, what: str, when: float | None = None) -> None:
        if key is None:
            return
        with self.lock:
            marks = self.at.setdefault(key, {})
            marks.setdefault(what, time.time() if when is None else when)
            marks.setdefault(f"{what}_py_cpu", time.process_time())

    def first_request(self, req: Request) -> None:
        text = req.first_user_text()
        found = _KEY_RE.search(text)
        key = found.group(1) if found else None
        feature = _FEATURE_RE.search(text)
        if key is None and feature is not None:
            key = f"{self.supervised_prefix}-{feature.group(1)}"
        now = time.time()
        with self.lock:
            seen = key is None or "request" in self.at.get(key, {})
            pid = self.pids.get(key) if key else None
        if seen or key is None:
            return
        self.mark(key, "request", now)
        self.mark(key, "cli_cpu", _cpu_seconds(pid) if pid else float("nan"))
        # Hold each session at its first request until the whole wave has sent one: a session that
        # went on with its turn would take CPU from the ones still starting.
        wave = key.rsplit("-", 1)[0]
        with self.lock:
            self.lock.notify_all()
            self.lock.wait_for(lambda: self._arrived(wave) >= self.expect.get(wave, AGENTS), timeout=60)

    def _arrived(self, wave: str) -> int:
        return sum(1 for k, m in self.at.items() if k.rsplit("-", 1)[0] == wave and "request" in m)


MARKS = Marks()


def _cpu_now() -> tuple[float, float]:
    """CPU so far of this process's reaped children (the CLIs) and of this process."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime, time.process_time()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (its exec'd guard included: same process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def brain(req: Request) -> Reply:
    MARKS.first_request(req)
    text = req.first_user_text()
    if _FEATURE_RE.search(text):
        return feature_brain(req)
    if "[[steady-" in text and len(scripted.read(req).calls) < 2:
        # As many tool calls as a feature's agent makes (feature_get, feature_release), with a
        # built-in tool that runs inside the CLI.
        return Reply.tool_use("TodoWrite", {"todos": [{"content": "x", "status": "completed", "activeForm": "x"}]})
    return Reply.text("Done.")


def _instrument() -> None:
    """Mark connect() and the prompt of every ClaudeSDKClient (the runner's and the bare ones)."""
    connect, query = ClaudeSDKClient.connect, ClaudeSDKClient.query

    async def timed_connect(self: ClaudeSDKClient, *args: Any, **kwargs: Any) -> None:
        key = _KEY.get()
        MARKS.mark(key, "connect")
        await connect(self, *args, **kwargs)
        MARKS.mark(key, "connected")
        transport = getattr(self, "_transport", None)
        process = getattr(transport, "_process", None)
        if key is not None and process is not None:
            with MARKS.lock:
                MARKS.pids[key] = process.pid

    async def timed_query(self: ClaudeSDKClient, *args: Any, **kwargs: Any) -> None:
        MARKS.mark(_KEY.get(), "prompt")
        await query(self, *args, **kwargs)

    ClaudeSDKClient.connect = timed_connect  # type: ignore[method-assign]
    ClaudeSDKClient.query = timed_query  # type: ignore[method-assign]


# -- bare sessions (and bare plus one ingredient) ------------------------------------------------------


async def _bare_session(key: str, options: ClaudeAgentOptions) -> None:
    _KEY.set(key)
    MARKS.mark(key, "start")
    client = ClaudeSDKClient(options=options)
    try:
        await client.connect()
        await client.query(f"Say done. [[{key}]]")
        async for message in client.receive_response():
            if isinstance(message, ResultMessage):
                break
    finally:
        await client.disconnect()


async def _bare_wave(
    prefix: str, make: Callable[[Path, str], ClaudeAgentOptions], tmp: Path, sessions: int = AGENTS
) -> list[str]:
    MARKS.expect[prefix] = sessions
    keys = [f"{prefix}-{i}" for i in range(1, sessions + 1)]
    options = [make(tmp / key, key) for key in keys]  # built before the clock starts
    await asyncio.gather(*(_bare_session(key, opts) for key, opts in zip(keys, options, strict=True)))
    return keys


class Ingredients:
    """Bare options plus one piece of the runner's session at a time."""

    def __init__(self, server: FakeModelServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.db_url = f"sqlite:///{tmp / 'ingredients.db'}"
        Database(self.db_url).migrate()
        self.launcher = CliLauncher()
        self.mcp = McpHost()
        # As the supervisor runs them: one environment for every session, a state directory per feature.
        self.runner = ClaudeRunner(extra_env=isolated_cli_env(server.base_url, tmp / "runner-env"))
        self.state_dir = tmp / "runner-state"
        self.features = 0

    def close(self) -> None:
        self.mcp.close()
        self.runner.close()

    def task(self, where: Path, key: str) -> AgentTask:
        project = where / "project"
        project.mkdir(parents=True, exist_ok=True)
        self.features += 1

        async def ask(_tool: str, _input: dict) -> Any:
            raise AssertionError("no tool needs a person here")

        return AgentTask(
            feature_id=self.features,
            feature_name=key,
            agent_id=f"agent-{key}",
            model="sonnet",
            prompt="",
            cwd=project,
            transcript_path=self.tmp / "logs" / f"{key}.jsonl",
            identity=Identity(
                database_url=self.db_url, project_dir=project, agent_id=f"agent-{key}", feature_id=self.features
            ),
            max_turns=50,
            timeout_s=600,
            stall_s=600,
            ask_permission=ask,
            steering=Steering(),
            env={"CLAUDE_CONFIG_DIR": str(feature_config_dir(self.state_dir, self.features))},
        )

    def bare(self, where: Path, key: str) -> ClaudeAgentOptions:
        return cli_options(self.server.base_url, where)

    def guard(self, where: Path, key: str) -> ClaudeAgentOptions:
        cli_path, env = self.launcher.command(self.tmp / "guard")
        return cli_options(self.server.base_url, where, env=env, cli_path=cli_path)

    def python_guard(self, where: Path, key: str) -> ClaudeAgentOptions:
        """The guard as it was before setpriv: a Python interpreter that sets the signal, then execs."""
        path = self.tmp / "python-guard" / "claude-guard"
        if not path.exists():
            make = getattr(cli_process, "python_guard_script", None)  # older trees: the only guard
            script = make() if make else cli_process._GUARD_SCRIPT.format(python=sys.executable)  # type: ignore[attr-defined]
            path.parent.mkdir(parents=True)
            path.write_text(script, encoding="utf-8")
            path.chmod(0o755)
        real = self.launcher.executable()
        env = {"AGENT_MANAGER_CLAUDE_CLI": str(real), "AGENT_MANAGER_SUPERVISOR_PID": str(os.getpid())}
        return cli_options(self.server.base_url, where, env=env, cli_path=str(path))

    def state(self, where: Path, key: str) -> ClaudeAgentOptions:
        """The supervisor's environment: a shared HOME and TMPDIR, a CLI state directory per feature."""
        env = {**isolated_cli_env(self.server.base_url, self.tmp / "runner-env"), **self.task(where, key).env}
        return cli_options(self.server.base_url, where, env=env)

    def mcp_server(self, where: Path, key: str) -> ClaudeAgentOptions:
        server = self.mcp.server(self.task(where, key))
        return cli_options(self.server.base_url, where, mcp_servers={MCP_SERVER_NAME: server})

    def hooks(self, where: Path, key: str) -> ClaudeAgentOptions:
        task = self.task(where, key)
        hooks = tool_hooks(task, lambda _: None) | nudge_hooks(Steering(), lambda _: None)
        return cli_options(self.server.base_url, where, hooks=hooks)

    def can_use_tool(self, where: Path, key: str) -> ClaudeAgentOptions:
        async def allow(_tool: str, _input: dict, _context: Any) -> PermissionResultAllow:
            return PermissionResultAllow()

        return cli_options(self.server.base_url, where, can_use_tool=allow)

    def settings(self, where: Path, key: str) -> ClaudeAgentOptions:
        return cli_options(self.server.base_url, where, setting_sources=["project"])

    def shape(self, where: Path, key: str) -> ClaudeAgentOptions:
        """The runner's tools, allow-list, system prompt, model and ENABLE_TOOL_SEARCH."""
        return cli_options(
            self.server.base_url,
            where,
            env={"ENABLE_TOOL_SEARCH": "false"},
            model="sonnet",
            tools=list(BUILTIN_TOOLS),
            allowed_tools=[*BUILTIN_TOOLS, *mcp_tool_names()],
            system_prompt={"type": "preset", "preset": "claude_code", "append": SYSTEM_APPEND},
        )

    def runner_options(self, where: Path, key: str) -> ClaudeAgentOptions:
        """Everything ClaudeRunner.run hands the SDK, without the supervisor around it."""
        task = self.task(where, key)
        progress_hooks = tool_hooks(task, lambda _: None) | nudge_hooks(Steering(), lambda _: None)

        async def allow(_tool: str, _input: dict, _context: Any) -> PermissionResultAllow:
            return PermissionResultAllow()

        return self.runner.options(task, progress_hooks, lambda _line: None, allow)

    def all(self) -> dict[str, Callable[[Path, str], ClaudeAgentOptions]]:
        return {
            "guard": self.guard,
            "guard (Python)": self.python_guard,
            "state dir": self.state,
            "MCP server": self.mcp_server,
            "hooks": self.hooks,
            "can_use_tool": self.can_use_tool,
            "settings": self.settings,
            "tools+prompt": self.shape,
            "runner options": self.runner_options,
        }


# -- supervised sessions ------------------------------------------------------------------------------


class _TimedRunner:
    """The ClaudeRunner, with each session's key set for the instrumented SDK client."""

    def __init__(self, runner: ClaudeRunner) -> None:
        self.runner = runner

    async def preflight(self) -> Any:
        return await self.runner.preflight()

    async def run(self, task: AgentTask, on_activity: Callable[[Any], None]) -> Any:
        key = f"{MARKS.supervised_prefix}-{task.feature_id}"
        _KEY.set(key)
        MARKS.mark(key, "run")
        return await self.runner.run(task, on_activity)


class _CountingView(PlainView):
    """The plain view (to /dev/null), counting finished sessions for the benchmark."""

    def __init__(self, out: Any) -> None:
        super().__init__(out)
        self.finished_count = 0
        self.changed = asyncio.Event()

    def finished(self, state: Any, status: str, notes: str) -> None:
        super().finished(state, status, notes)
        self.finished_count += 1
        self.changed.set()


class Supervised:
    """One real Supervisor in serve mode, as `agent-manager serve` runs it, for the whole benchmark:
    each wave imports AGENTS ready features (from another queue, as another process would), pokes it
    and waits for them to pass. Latency starts when its claim returns."""

    def __init__(self, server: FakeModelServer, tmp: Path) -> None:
        self.project = tmp / "supervised"
        self.project.mkdir()
        url = f"sqlite:///{self.project / 'queue.db'}"
        self.db = Database(url)
        self.db.migrate()
        self.queue = FeatureQueue(self.db, project_dir=self.project, lease_seconds=60)
        self.importer = FeatureQueue(Database(url), project_dir=self.project, lease_seconds=60)
        claim = self.queue.claim

        def timed_claim(*args: Any, **kwargs: Any) -> Any:
            claimed = claim(*args, **kwargs)
            now = time.time()
            for feature in claimed:
                MARKS.mark(f"{MARKS.supervised_prefix}-{feature.id}", "start", now)
            return claimed

        self.queue.claim = timed_claim  # type: ignore[method-assign]
        settings = bench_settings(self.project, url, AGENTS, load_policy(self.project), serve=True)
        self.runner = ClaudeRunner(extra_env=isolated_cli_env(server.base_url, tmp / "supervised-env"))
        self.devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        self.view = _CountingView(self.devnull)
        self.supervisor = Supervisor(self.queue, _TimedRunner(self.runner), settings, self.view)  # type: ignore[arg-type]
        self.features = 0

    async def wave(self, prefix: str, count: int = AGENTS, hold: bool = True) -> list[str]:
        """Import ``count`` ready features and wait until they pass; ``hold``: their first requests
        wait for each other (a wave), else each session goes on at once (steady state)."""
        MARKS.supervised_prefix = prefix
        MARKS.expect[prefix] = count if hold else 1
        first = self.features + 1
        self.features += count
        specs = [FeatureSpec(name=f"feature-{i}", category="backend") for i in range(first, self.features + 1)]
        done = self.view.finished_count + count
        await asyncio.to_thread(self.importer.import_specs, specs)
        self.supervisor.poke()
        async with asyncio.timeout(300):
            while self.view.finished_count < done:
                self.view.changed.clear()
                await self.view.changed.wait()
        ids = {f.name: f.id for f in self.importer.status_report().features}
        return [f"{prefix}-{ids[spec.name]}" for spec in specs]

    def check(self) -> None:
        report = self.importer.status_report()
        if report.counts != {"passing": self.features}:
            raise RuntimeError(f"supervised features did not all pass: {report.counts}")

    def close(self) -> None:
        self.runner.close()
        self.importer.db.dispose()
        self.db.dispose()
        self.devnull.close()


async def _bare_steady(prefix: str, ingredients: Ingredients, tmp: Path, count: int) -> list[str]:
    """AGENTS workers, each running bare sessions back to back until ``count`` have run."""
    keys: list[str] = []
    MARKS.expect[prefix] = 1

    async def worker(w: int) -> None:
        for i in range(w, count, AGENTS):
            key = f"{prefix}-{i + 1}"
            keys.append(key)
            await _bare_session(key, ingredients.bare(tmp / key, key))

    await asyncio.gather(*(worker(w) for w in range(AGENTS)))
    return keys


def _later(keys: list[str]) -> list[str]:
    """The sessions that started in a slot another session had freed (all but the first AGENTS)."""
    return sorted(keys, key=lambda k: MARKS.at[k]["start"])[AGENTS:]


# -- results -----------------------------------------------------------------------------------------

PHASES = (
    ("dispatch", "start", "run"),
    ("options", "run", "connect"),
    ("CLI start", "connect", "connected"),
    ("prompt", "connected", "request"),
)


def _row(name: str, keys: list[str]) -> dict[str, Any]:
    marks = [MARKS.at[k] for k in keys]
    missing = [k for k, m in zip(keys, marks, strict=True) if "request" not in m]
    if missing:
        raise RuntimeError(f"{name}: no model request seen for {missing}")
    latency = [m["request"] - m["start"] for m in marks]
    row: dict[str, Any] = {
        "variant": name,
        "sessions": len(keys),
        "median_ms": ms(statistics.median(latency)),
        "mean_ms": ms(statistics.fmean(latency)),
        "min_ms": ms(min(latency)),
        "max_ms": ms(max(latency)),
        "cli_cpu_ms": ms(statistics.median(m["cli_cpu"] for m in marks)),
        "latencies_ms": [round(ms(v), 1) for v in latency],
    }
    # This process's CPU (the supervisor or the bare sessions' SDK, and the scripted server) from
    # the first start of a wave to its last first request, per session.
    waves: dict[str, list[dict[str, float]]] = {}
    for k, m in zip(keys, marks, strict=True):
        waves.setdefault(k.rsplit("-", 1)[0], []).append(m)
    row["py_cpu_ms"] = ms(
        statistics.median(
            (max(m["request_py_cpu"] for m in w) - min(m["start_py_cpu"] for m in w)) / len(w) for w in waves.values()
        )
    )
    for phase, a, b in PHASES:
        spans = [m[b] - m[a] for m in marks if a in m and b in m]
        row[f"{phase}_ms"] = ms(statistics.median(spans)) if spans else None
    return row


def _wave_median(prefix: str) -> float:
    """Median start -> first request of one wave."""
    waves = [m for k, m in MARKS.at.items() if k.rsplit("-", 1)[0] == prefix]
    return statistics.median(m["request"] - m["start"] for m in waves)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions, no ingredients")
    parser.add_argument("--reps", type=int, help="repetitions (default 10, 2 with --quick)")
    parser.add_argument(
        "--ingredients",
        action=argparse.BooleanOptionalAction,
        help="bare plus one ingredient at a time, one session at a time (default: on, off with --quick)",
    )
    parser.add_argument(
        "--steady",
        action=argparse.BooleanOptionalAction,
        help=f"steady state: {STEADY_SESSIONS} sessions through {AGENTS} slots, twice (default: on, off with --quick)",
    )
    args = parser.parse_args(argv)
    reps = args.reps or (2 if args.quick else 10)
    with_ingredients = args.ingredients if args.ingredients is not None else not args.quick
    with_steady = args.steady if args.steady is not None else not args.quick
    started = time.perf_counter()
    _instrument()
    keys: dict[str, list[str]] = {}
    alone: dict[str, list[str]] = {}
    steady: dict[str, list[str]] = {}
    steady_cpu: dict[str, list[tuple[float, float]]] = {}  # kind -> (CLI CPU, this process's CPU) per session
    with FakeModelServer(brain) as server, tempfile.TemporaryDirectory(prefix="bench-start-") as tmp_name:
        tmp = Path(tmp_name)
        ingredients = Ingredients(server, tmp)
        supervised = Supervised(server, tmp)
        variants = {"bare": ingredients.bare, **ingredients.all()} if with_ingredients else {}

        async def waves() -> None:
            # The first wave of each kind warms up (the page cache, first calls, the supervisor's
            # engine and MCP queue); the supervisor's is kept as its own row.
            await _bare_wave("warm-bare", ingredients.bare, tmp)
            keys["supervised, first wave"] = await supervised.wave("first")
            for rep in range(reps):
                # Alternate the order so that no kind always follows the same one.
                kinds = ["bare", "supervised", "runner options"]
                for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                    if kind == "bare":
                        wave = await _bare_wave(f"bare-{rep}", ingredients.bare, tmp)
                    elif kind == "supervised":
                        wave = await supervised.wave(f"sup-{rep}")
                    else:
                        wave = await _bare_wave(f"ropt-{rep}", ingredients.runner_options, tmp)
                    keys.setdefault(kind, []).extend(wave)
                # Ingredients one session at a time, twice per repetition: alone, a CLI's start is
                # not smeared by the others', and small costs show. A discarded session first (the
                # waves' CLIs may still be exiting), then each ingredient in a rotating order.
                if variants:
                    await _bare_wave(f"one-settle-{rep}", ingredients.bare, tmp, 1)
                names = list(variants)
                for turn in range(2):
                    shift = (2 * rep + turn) % max(1, len(names))
                    for name in names[shift:] + names[:shift]:
                        slug = re.sub(r"\W+", "_", name)
                        wave = await _bare_wave(f"one-{slug}-{rep}.{turn}", variants[name], tmp, 1)
                        alone.setdefault(name, []).extend(wave)
                print(f"  repetition {rep + 1}/{reps} done", flush=True)
            for rep in range(2 if with_steady else 0):
                for kind in ["bare", "supervised"] if rep % 2 == 0 else ["supervised", "bare"]:
                    before = _cpu_now()
                    if kind == "bare":
                        run = await _bare_steady(f"steady-{rep}", ingredients, tmp, STEADY_SESSIONS)
                    else:
                        run = await supervised.wave(f"ssteady-{rep}", STEADY_SESSIONS, hold=False)
                    await asyncio.sleep(0.5)  # the last CLIs reaped
                    after = _cpu_now()
                    steady.setdefault(kind, []).extend(_later(run))
                    steady_cpu.setdefault(kind, []).append(
                        ((after[0] - before[0]) / len(run), (after[1] - before[1]) / len(run))
                    )
                print(f"  steady state {rep + 1}/2 done", flush=True)

        async def run() -> None:
            serving = asyncio.create_task(supervised.supervisor.run())
            try:
                await waves()
            finally:
                supervised.supervisor.stop("benchmark done")
                summary = await serving
            if summary.exit_code != 0:
                raise RuntimeError(f"the supervisor exited {summary.exit_code}: {summary.stop_reason}")

        try:
            asyncio.run(run())
            supervised.check()
        finally:
            supervised.close()
            ingredients.close()

    rows = [_row(name, k) for name, k in keys.items()]
    bare = next(r for r in rows if r["variant"] == "bare")
    supervised_row = next(r for r in rows if r["variant"] == "supervised")
    for r in rows:
        r["vs_bare"] = r["median_ms"] / bare["median_ms"]
        r["cli_cpu_vs_bare_ms"] = r["cli_cpu_ms"] - bare["cli_cpu_ms"]
    ratio = supervised_row["median_ms"] / bare["median_ms"]
    # The same, repetition by repetition (each supervised wave against the bare wave beside it):
    # steadier than the ratio of medians when other work on the machine comes and goes.
    paired = statistics.median(_wave_median(f"sup-{rep}") / _wave_median(f"bare-{rep}") for rep in range(reps))
    print_table(
        f"Session start, {AGENTS} at once: start -> first model request (ms; {reps} repetitions)",
        ["variant", "sessions", "median", "vs bare", "min", "max", "dispatch", "options", "CLI start", "prompt",
         "CLI CPU", "CPU +", "py CPU"],
        [
            [r["variant"], r["sessions"], r["median_ms"], r["vs_bare"], r["min_ms"], r["max_ms"], r["dispatch_ms"],
             r["options_ms"], r["CLI start_ms"], r["prompt_ms"], r["cli_cpu_ms"], r["cli_cpu_vs_bare_ms"],
             r["py_cpu_ms"]]
            for r in rows
        ],
        note="start: connect() called (bare, runner options) or the claim committed (supervised). Phases are "
        "medians: dispatch = claim -> runner.run, options = -> connect(), CLI start = -> the CLI's answer to "
        "initialize, prompt = -> first request. CLI CPU: user+system of the CLI process when its first request "
        "arrived (median). py CPU: this process's CPU per session over the wave. "
        f"Goal: supervised <= {GOAL_RATIO}x bare.",
    )  # fmt: skip
    print(f"supervised / bare = {ratio:.2f} (goal <= {GOAL_RATIO}); median of the per-repetition ratios {paired:.2f}")
    one = [_row(name, k) for name, k in alone.items()]
    if one:
        base = one[0]
        for r in one:
            r["extra_ms"] = r["median_ms"] - base["median_ms"]
            r["cli_cpu_vs_bare_ms"] = r["cli_cpu_ms"] - base["cli_cpu_ms"]
        print_table(
            f"Ingredients, one session at a time: bare plus one piece of the runner's session (ms; {2 * reps} each)",
            ["variant", "median", "+ vs bare", "CLI start", "prompt", "CLI CPU", "CPU +", "py CPU"],
            [
                [r["variant"], r["median_ms"], r["extra_ms"], r["CLI start_ms"], r["prompt_ms"], r["cli_cpu_ms"],
                 r["cli_cpu_vs_bare_ms"], r["py_cpu_ms"]]
                for r in one
            ],
            note="Options are built before the clock starts here: the supervised row above has their building "
            "in its options phase. runner options = everything ClaudeRunner.run hands the SDK.",
        )  # fmt: skip
    steady_rows = [_row(kind, k) for kind, k in steady.items()]
    for r in steady_rows:
        r["session_cli_cpu_ms"] = ms(statistics.fmean(c for c, _ in steady_cpu[r["variant"]]))
        r["session_py_cpu_ms"] = ms(statistics.fmean(p for _, p in steady_cpu[r["variant"]]))
    if steady_rows:
        print_table(
            f"Steady state: {STEADY_SESSIONS} sessions through {AGENTS} slots, twice; start -> first request of "
            f"those started in a freed slot (ms)",
            ["variant", "sessions", "median", "min", "max", "dispatch", "CLI start", "prompt", "CLI CPU/session",
             "py CPU/session"],
            [
                [r["variant"], r["sessions"], r["median_ms"], r["min_ms"], r["max_ms"], r["dispatch_ms"],
                 r["CLI start_ms"], r["prompt_ms"], r["session_cli_cpu_ms"], r["session_py_cpu_ms"]]
                for r in steady_rows
            ],
            note="bare: 3 workers run sessions back to back, each making two TodoWrite calls (a feature's agent "
            "makes two MCP calls). CPU per session: the whole session (every CLI reaped; this process: the "
            "supervisor or the SDK, and the scripted server).",
        )  # fmt: skip
    results = {
        "agents": AGENTS,
        "repetitions": reps,
        "goal_ratio": GOAL_RATIO,
        "ratio": ratio,
        "paired_ratio": paired,
        "met": ratio <= GOAL_RATIO,
        "rows": rows,
        "ingredients_one_at_a_time": one,
        "steady_state": steady_rows,
    }
    write_results("session_start", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
