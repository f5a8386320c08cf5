"""Benchmark: features that share files, conflict-aware co-scheduling against blind (issue 13).

A 60-feature layered DAG (5 layers of 12, each feature depending on 1-2 of the layer above) in
which 30 % of the features share a file with another: 6 pairs and 2 triples, each group inside
one layer, so its members are ready together. Every feature also writes a file of its own.

The real Supervisor (supervisor/loop.py) runs on a SQLite queue with a simulated runner (no
claude CLI). A session first locks each of its feature's files, in path order, through
``task.guard_write``: the product's write hook, i.e. ``FeatureQueue.claim_file`` for the
feature's agent. While refused it waits and asks again every 50 ms (that wait is what
``agent_runs.lock_wait_seconds`` measures). Then it works for its seeded duration (0.5-2 s,
0.1-0.4 s with --quick), reports passing through its own queue as feature_release would, and
ends; its locks go when the supervisor finishes the attempt.

Two modes on the same DAG and durations:

* aware: every FeatureSpec declares its ``files``, so ``claim`` keeps overlapping features apart
  (api.queue._apart) and another ready feature takes the agent instead;
* blind: the same features without ``files``. The queue learns the files an attempt locked, but
  each feature runs once here, so nothing is known before a collision: agents wait on locks.

Per run: lock-wait agent-seconds from the queue (``lock_wait_seconds(owner)``, the sum of
agent_runs.lock_wait_seconds) and as the runner measured it (first refusal -> lock granted),
sessions that waited, wall time (RunSummary.wall_seconds), makespan (run() called -> last release
committed), agent-seconds (RunSummary.agent_seconds, which includes the waits), and makespan /
lower bound where bound = max(critical path, total work / N) from the durations alone.

N = 4 and 8 agents, 3 seeds (a seed is a DAG, its durations and its groups); rows are medians over
the seeds, both modes run back to back on each. --quick: one seed, shorter sessions. Every run is
checked: the supervisor exits 0, all 60 pass in one session each, and in aware mode no two
features sharing a file ever ran at the same time. Exit 1 otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, print_table, write_results
from simulated import RecordingView, bench_settings, load_queue

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from api.records import Status
from supervisor.loop import RunSummary, Supervisor
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending

LAYERS = 5
WIDTH = 12  # features per layer: 60 in all
GROUPS = (2, 2, 2, 2, 2, 2, 3, 3)  # features per shared file: 18 of 60 share one (30 %)
AGENTS = (4, 8)
SEEDS = (1, 2, 3)
SESSION_S = (0.5, 2.0)  # uniform, seeded per feature
SESSION_S_QUICK = (0.1, 0.4)
LOCK_RETRY_S = 0.05  # a refused lock is asked for again after this long
MODES = ("aware", "blind")
RUN_TIMEOUT_S = 600.0


# -- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    seed: int
    deps: dict[str, tuple[str, ...]]  # in topological order
    durations: dict[str, float]  # seconds of work per feature, the same in both modes
    files: dict[str, tuple[str, ...]]  # project-relative paths each feature writes
    groups: list[list[str]]  # features sharing one file, one list per shared file

    def specs(self, declare_files: bool) -> list[FeatureSpec]:
        return [
            FeatureSpec(
                name,
                category="backend",
                depends_on=deps,
                files=self.files[name] if declare_files else (),
            )
            for name, deps in self.deps.items()
        ]

    def critical_path(self) -> float:
        finish: dict[str, float] = {}
        for name, deps in self.deps.items():  # topological order
            finish[name] = self.durations[name] + max((finish[d] for d in deps), default=0.0)
        return max(finish.values())

    def bound(self, agents: int) -> float:
        return max(self.critical_path(), sum(self.durations.values()) / agents)


def workload(seed: int, session_s: tuple[float, float]) -> Workload:
    rng = random.Random(f"file_conflicts:{seed}")
    layers = [[f"f{layer * WIDTH + i:02d}" for i in range(WIDTH)] for layer in range(LAYERS)]
    deps: dict[str, tuple[str, ...]] = {}
    for k, layer in enumerate(layers):
        for name in layer:
            deps[name] = tuple(sorted(rng.sample(layers[k - 1], rng.randint(1, 2)))) if k else ()
    durations = {name: rng.uniform(*session_s) for name in deps}
    files: dict[str, list[str]] = {name: [f"src/{name}.py"] for name in deps}
    free = {k: list(layer) for k, layer in enumerate(layers)}
    groups: list[list[str]] = []
    for g, size in enumerate(GROUPS):
        k = rng.choice([k for k, names in free.items() if len(names) >= size])
        members = sorted(rng.sample(free[k], size))
        for name in members:
            free[k].remove(name)
            files[name].append(f"shared/s{g}.py")
        groups.append(members)
    return Workload(seed, deps, durations, {n: tuple(sorted(f)) for n, f in files.items()}, groups)


# -- the simulated agent -------------------------------------------------------------------------


@dataclass
class Session:
    start: float  # perf_counter: the runner was called
    locked: float = 0.0  # every file locked
    end: float = 0.0  # reported passing, returning
    waited: float = 0.0  # seconds refused a lock, by the runner's clock
    refusals: int = 0


@dataclass
class LockingRunner:
    """An AgentRunner whose sessions lock their feature's files, work for their duration and pass."""

    database_url: str
    durations: Mapping[str, float]
    files: Mapping[str, tuple[str, ...]]
    max_agents: int
    sessions: dict[str, list[Session]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Its own engine and threads for the verdict, as the agents' MCP calls are not the supervisor's.
        self.queue = FeatureQueue(Database(self.database_url, pool_size=self.max_agents))
        self.pool = ThreadPoolExecutor(max_workers=self.max_agents, thread_name_prefix="agent")

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        name = task.feature_name
        session = Session(time.perf_counter())
        self.sessions.setdefault(name, []).append(session)
        assert task.guard_write is not None
        for path in self.files[name]:  # in path order, so two agents never wait on each other
            refused_at = None
            while True:
                decision = await task.guard_write(str(task.cwd / path))
                if decision.allowed:
                    break
                session.refusals += 1
                if refused_at is None:
                    refused_at = time.perf_counter()
                    on_activity(ActivityEvent(task.feature_id, "waiting_lock", decision.reason))
                await asyncio.sleep(LOCK_RETRY_S)
            if refused_at is not None:
                session.waited += time.perf_counter() - refused_at
        session.locked = time.perf_counter()
        await asyncio.sleep(self.durations[name])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self.queue.report, task.agent_id, task.feature_id, "passing", "done")
        session.end = time.perf_counter()
        return AgentOutcome(Ending.COMPLETED, session_id=f"sim-{task.feature_id}", num_turns=1, model=task.model)

    def close(self) -> None:
        self.pool.shutdown()
        self.queue.db.dispose()


# -- one run ----------------------------------------------------------------------------------------


def run_once(workdir: Path, w: Workload, mode: str, agents: int) -> dict:
    label = f"s{w.seed}-n{agents}-{mode}"
    project = workdir / label
    project.mkdir()
    url = f"sqlite:///{workdir / f'{label}.db'}"
    queue = load_queue(url, w.specs(declare_files=mode == "aware"))
    runner = LockingRunner(url, w.durations, w.files, agents)
    view = RecordingView()
    settings = bench_settings(project, url, agents)
    supervisor = Supervisor(queue, runner, settings, view)
    gc.collect()
    gc.freeze()  # as `agent-manager run` does before it starts supervising

    async def main() -> tuple[float, RunSummary]:
        t0 = time.perf_counter()
        return t0, await asyncio.wait_for(supervisor.run(), RUN_TIMEOUT_S)

    try:
        t0, summary = asyncio.run(main())
        features = queue.status_report().features
        queue_wait = queue.lock_wait_seconds(supervisor.owner)
        run_waits = {f.name: sum(r.lock_wait_seconds or 0.0 for r in queue.runs(f.id)) for f in features}
    finally:
        runner.close()
        queue.db.dispose()
    sessions = [s for runs in runner.sessions.values() for s in runs]
    runner_wait = sum(s.waited for s in sessions)
    passing = sum(f.status == Status.PASSING for f in features)
    # Features sharing a file whose sessions overlapped in time (a collision, or a near miss).
    overlaps = 0
    for group in w.groups:
        spans = [(s.start, s.end) for name in group for s in runner.sessions.get(name, [])]
        overlaps += sum(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
    work = sum(w.durations.values())
    bound = w.bound(agents)
    makespan = max(view.finishes.values()) - t0 if view.finishes else float("nan")
    row = {
        "label": label,
        "seed": w.seed,
        "mode": mode,
        "agents": agents,
        "exit_code": summary.exit_code,
        "stop_reason": summary.stop_reason,
        "passing": passing,
        "sessions": len(sessions),
        "lock_wait_queue_s": queue_wait,
        "lock_wait_summary_s": summary.lock_wait_seconds,
        "lock_wait_runner_s": runner_wait,
        "sessions_waited": sum(s.waited > 0 for s in sessions),
        "refusals": sum(s.refusals for s in sessions),
        "overlapping_pairs": overlaps,
        "wall_s": summary.wall_seconds,
        "makespan_s": makespan,
        "agent_s": summary.agent_seconds,
        "runner_agent_s": sum(s.end - s.start for s in sessions),
        "work_s": work,
        "critical_path_s": w.critical_path(),
        "bound_s": bound,
        "makespan_over_bound": makespan / bound,
        "lock_wait_s_by_feature": {k: round(v, 3) for k, v in sorted(run_waits.items()) if v > 0},
    }
    row["problems"] = _problems(row, len(w.deps))
    return row


def _problems(row: dict, features: int) -> list[str]:
    problems = []
    if row["exit_code"] != 0:
        problems.append(f"the supervisor exited {row['exit_code']}: {row['stop_reason']}")
    if row["passing"] != features or row["sessions"] != features:
        problems.append(f"{row['passing']} of {features} passing in {row['sessions']} sessions")
    if row["mode"] == "aware" and row["overlapping_pairs"]:
        problems.append(f"{row['overlapping_pairs']} pairs of features sharing a file ran at once")
    return problems


# -- the tables --------------------------------------------------------------------------------------


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    seeds = SEEDS[:1] if args.quick else SEEDS
    session_s = SESSION_S_QUICK if args.quick else SESSION_S
    workloads = [workload(seed, session_s) for seed in seeds]
    runs: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-file-conflicts-") as tmp:
        for w in workloads:
            for agents in AGENTS:
                for mode in MODES:  # back to back on the same workload
                    row = run_once(Path(tmp), w, mode, agents)
                    runs.setdefault((agents, mode), []).append(row)
                    print(
                        f"  seed {w.seed} N={agents} {mode}: wall {row['wall_s']:.2f} s, lock wait "
                        f"{row['lock_wait_queue_s']:.2f} agent-s, makespan/bound {row['makespan_over_bound']:.3f}",
                        flush=True,
                    )

    table = [
        {
            "agents": agents,
            "mode": mode,
            "runs": len(rows),
            "runs_ok": sum(not r["problems"] for r in rows),
            **{
                key: _median(rows, key)
                for key in (
                    "lock_wait_queue_s",
                    "lock_wait_runner_s",
                    "sessions_waited",
                    "overlapping_pairs",
                    "wall_s",
                    "makespan_s",
                    "agent_s",
                    "work_s",
                    "bound_s",
                    "makespan_over_bound",
                )
            },
        }
        for (agents, mode), rows in runs.items()
    ]
    print_table(
        f"{LAYERS * WIDTH} features ({LAYERS} layers of {WIDTH}), {sum(GROUPS)} sharing a file in "
        f"{GROUPS.count(2)} pairs and {GROUPS.count(3)} triples, sessions {session_s[0]}-{session_s[1]} s"
        + (f", median of {len(seeds)} seeds" if len(seeds) > 1 else ""),
        [
            "N",
            "mode",
            "lock-wait agent-s",
            "(runner)",
            "sessions waited",
            "sharing pairs run at once",
            "wall s",
            "makespan s",
            "agent-s",
            "work s",
            "bound s",
            "makespan / bound",
            "runs ok",
        ],
        [
            [
                t["agents"],
                t["mode"],
                t["lock_wait_queue_s"],
                t["lock_wait_runner_s"],
                t["sessions_waited"],
                t["overlapping_pairs"],
                t["wall_s"],
                t["makespan_s"],
                t["agent_s"],
                t["work_s"],
                t["bound_s"],
                t["makespan_over_bound"],
                f"{t['runs_ok']}/{t['runs']}",
            ]
            for t in table
        ],
        note="lock-wait agent-s: queue.lock_wait_seconds(owner), the sum of agent_runs.lock_wait_seconds; "
        "(runner): the same waits timed by the sessions (first refusal -> lock granted). agent-s: "
        "RunSummary.agent_seconds (sessions, waits included). work: the durations alone. bound = "
        "max(critical path, work / N). aware: features declare their files; blind: they do not.",
    )
    ratios = []
    for agents in AGENTS:
        aware = {r["seed"]: r for r in runs[(agents, "aware")]}
        blind = {r["seed"]: r for r in runs[(agents, "blind")]}
        ratios.append(
            {
                "agents": agents,
                "lock_wait_saved_s": statistics.median(
                    blind[s]["lock_wait_queue_s"] - aware[s]["lock_wait_queue_s"] for s in seeds
                ),
                "wall_aware_over_blind": statistics.median(aware[s]["wall_s"] / blind[s]["wall_s"] for s in seeds),
                "agent_s_aware_over_blind": statistics.median(aware[s]["agent_s"] / blind[s]["agent_s"] for s in seeds),
            }
        )
    print_table(
        "Aware against blind, per seed then the median",
        ["N", "lock-wait agent-s saved", "wall aware / blind", "agent-s aware / blind"],
        [
            [r["agents"], r["lock_wait_saved_s"], r["wall_aware_over_blind"], r["agent_s_aware_over_blind"]]
            for r in ratios
        ],
    )
    every = [row for rows in runs.values() for row in rows]
    problems = [f"{row['label']}: {problem}" for row in every for problem in row["problems"]]
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    results = {
        "parameters": {
            "features": LAYERS * WIDTH,
            "layers": LAYERS,
            "groups": list(GROUPS),
            "sharing_features": sum(GROUPS),
            "agents": list(AGENTS),
            "seeds": list(seeds),
            "session_s": list(session_s),
            "lock_retry_s": LOCK_RETRY_S,
            "backend": "sqlite",
        },
        "workloads": [
            {
                "seed": w.seed,
                "groups": w.groups,
                "critical_path_s": w.critical_path(),
                "work_s": sum(w.durations.values()),
            }
            for w in workloads
        ],
        "table": table,
        "aware_vs_blind": ratios,
        "runs": every,
        "problems": problems,
        "ok": not problems,
    }
    write_results("file_conflicts", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
