"""The real Supervisor driven by a simulated agent runner, with a view that timestamps every session.

Shared by the makespan and dispatch benchmarks. The runner stands in for a Claude session of a
known duration: it reports ``passing`` the way an agent's feature_release would (through its own
queue and threads, as the MCP server is a separate process) and returns when the duration is up.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from supervisor.config import Settings
from supervisor.loop import RunSummary, Supervisor
from supervisor.routing import AgentPolicy
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending
from supervisor.view import RunState


class SimulatedRunner:
    """An AgentRunner whose sessions last ``durations[feature name]`` seconds and then pass."""

    def __init__(self, database_url: str, durations: Mapping[str, float], max_agents: int) -> None:
        # Its own engine and threads: the agent side must not queue behind the supervisor's.
        self.queue = FeatureQueue(Database(database_url, pool_size=max_agents))
        self.durations = durations
        self.pool = ThreadPoolExecutor(max_workers=max_agents, thread_name_prefix="agent")
        self.started: dict[int, float] = {}
        self.ended: dict[int, float] = {}

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        start = time.perf_counter()
        self.started[task.feature_id] = start
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self.queue.report, task.agent_id, task.feature_id, "passing", "")
        await asyncio.sleep(max(0.0, start + self.durations[task.feature_name] - time.perf_counter()))
        self.ended[task.feature_id] = time.perf_counter()
        return AgentOutcome(Ending.COMPLETED, session_id=f"sim-{task.feature_id}", num_turns=1, model=task.model)

    def close(self) -> None:
        self.pool.shutdown()
        self.queue.db.dispose()


@dataclass
class RecordingView:
    """The supervisor's view interface, keeping only timestamps (perf_counter seconds)."""

    finishes: dict[int, float] = field(default_factory=dict)  # after the release is committed
    notes: list[str] = field(default_factory=list)

    def start(self, run: RunState) -> None:
        pass

    def started(self, state) -> None:
        pass

    def activity(self, state, event) -> None:
        pass

    def finished(self, state, status: str, notes: str) -> None:
        self.finishes[state.claim.id] = time.perf_counter()

    def paused(self, seconds: float, reason: str) -> None:
        self.notes.append(f"paused {seconds:.1f} s: {reason}")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def stop(self, summary: RunSummary) -> None:
        pass


@dataclass
class SimulatedRun:
    summary: RunSummary
    t0: float  # perf_counter when Supervisor.run() was called
    runner: SimulatedRunner
    view: RecordingView
    names: dict[int, str]  # feature id -> name

    @property
    def makespan(self) -> float:
        """From calling run() to the last release committed."""
        return max(self.view.finishes.values()) - self.t0


def bench_settings(project: Path, url: str, agents: int, policy: AgentPolicy | None = None, **extra: Any) -> Settings:
    """A benchmark's supervisor settings: ``project`` and its database at ``url``, ``agents``
    slots, a 60 s lease; ``extra`` as Settings takes it (serve=True, idle_poll_seconds=...)."""
    return Settings(
        project_dir=project,
        database_url=url,
        features_file=project / "features.json",
        max_agents=agents,
        lease_seconds=60,
        policy=policy or AgentPolicy(),
        **extra,
    )


def load_queue(url: str, specs: list[FeatureSpec]) -> FeatureQueue:
    db = Database(url)
    db.migrate()
    queue = FeatureQueue(db, lease_seconds=60)
    queue.import_specs(specs)
    return queue


def run_supervisor(
    url: str, specs: list[FeatureSpec], durations: Mapping[str, float], max_agents: int, workdir: Path
) -> SimulatedRun:
    """Import ``specs`` into a fresh database at ``url`` and supervise them to the end."""
    queue = load_queue(url, specs)
    names = {f.id: f.name for f in queue.status_report().features}
    runner = SimulatedRunner(url, durations, max_agents)
    view = RecordingView()
    settings = bench_settings(workdir, url, max_agents)
    supervisor = Supervisor(queue, runner, settings, view)
    gc.freeze()  # as `agent-manager run` does before it starts supervising

    async def main() -> tuple[float, RunSummary]:
        t0 = time.perf_counter()
        return t0, await supervisor.run()

    try:
        t0, summary = asyncio.run(main())
    finally:
        runner.close()
        queue.db.dispose()
    if summary.exit_code != 0:
        raise RuntimeError(f"supervisor exited {summary.exit_code}: {summary.counts} {view.notes[-3:]}")
    return SimulatedRun(summary, t0, runner, view, names)
