"""Benchmark 1: makespan of 200-feature DAGs against the lower bound, ours beside the seed design.

Each workload is a random DAG (layered, or random edges) whose features get seeded lognormal
durations (mean 1 time unit). For N agents the lower bound is max(critical path in time,
total work / N); we report makespan / bound for

* ours: the real Supervisor (supervisor/loop.py) on a real SQLite file, its sessions simulated
  through the AgentRunner protocol (bench/simulated.py);
* seed: a small reimplementation of the seed design's policy on the same SQLite schema: one
  dispatcher that sleeps a fixed poll interval before each claim, and claims the ready feature
  with the highest priority, oldest first. The seed polled every 5 s against features of about
  10 minutes, so its interval here is 5/600 of the mean duration.

Both orders are also replayed in virtual time with no overhead at all ("policy" columns), which
separates what the claim order costs from what dispatching costs. "oracle" is the same list
scheduler ranked by the critical path in time, which needs durations no scheduler knows.
"""

from __future__ import annotations

import asyncio
import heapq
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, print_table, write_results
from simulated import load_queue, run_supervisor
from sqlalchemy import text

from api import dag
from api.features_file import FeatureSpec

FEATURES = 200
AGENTS = (1, 3, 8, 16)
SIGMA = 0.8  # lognormal shape: the longest of 200 features is 5-10x the mean, the shortest 1/10 of it
SEED_POLL_FRACTION = 5 / 600  # the seed: 5 s poll interval against 10-minute features
REPLAY_DAGS = 20  # per shape, for the virtual-time statistics (cheap)
GOAL = 1.05


# -- workloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    shape: str
    seed: int
    specs: list[FeatureSpec]
    units: dict[str, float]  # duration per feature in time units (mean 1)

    @property
    def deps(self) -> dict[str, tuple[str, ...]]:
        return {s.name: s.depends_on for s in self.specs}


def layered(rng: random.Random) -> list[tuple[int, ...]]:
    """Layers of 10-30 features; each depends on 1-3 of the layer above, sometimes one older."""
    deps: list[tuple[int, ...]] = []
    layers: list[list[int]] = []
    while len(deps) < FEATURES:
        width = min(rng.randint(10, 30), FEATURES - len(deps))
        layer = list(range(len(deps), len(deps) + width))
        for _ in layer:
            chosen: set[int] = set()
            if layers:
                chosen.update(rng.sample(layers[-1], min(len(layers[-1]), rng.randint(1, 3))))
                if len(layers) > 1 and rng.random() < 0.3:
                    chosen.add(rng.choice(rng.choice(layers[:-1])))
            deps.append(tuple(sorted(chosen)))
        layers.append(layer)
    return deps


def random_edges(rng: random.Random) -> list[tuple[int, ...]]:
    """Each feature depends on each older one with probability 3 / FEATURES (about 1.5 each)."""
    p = 3 / FEATURES
    return [tuple(j for j in range(i) if rng.random() < p) for i in range(FEATURES)]


SHAPES: dict[str, Callable[[random.Random], list[tuple[int, ...]]]] = {"layered": layered, "random-edge": random_edges}


def workload(shape: str, seed: int) -> Workload:
    rng = random.Random(f"{shape}:{seed}")
    deps = SHAPES[shape](rng)
    specs = [
        FeatureSpec(
            name=f"f{i:03d}",
            category="backend",
            priority=rng.choice((0, 0, 0, 1, 2)),
            depends_on=tuple(f"f{j:03d}" for j in d),
        )
        for i, d in enumerate(deps)
    ]
    raw = [rng.lognormvariate(0.0, SIGMA) for _ in specs]
    mean = statistics.fmean(raw)
    return Workload(shape, seed, specs, {s.name: r / mean for s, r in zip(specs, raw, strict=False)})


def longest_chains(deps: Mapping[str, tuple[str, ...]], units: Mapping[str, float]) -> dict[str, float]:
    """Earliest finish of each feature with unlimited agents (its longest weighted chain of dependencies)."""
    finish: dict[str, float] = {}
    for name in nx.topological_sort(dag.build_graph(deps)):
        finish[name] = units[name] + max((finish[d] for d in deps[name]), default=0.0)
    return finish


def lower_bound(w: Workload, agents: int) -> tuple[float, float, float]:
    """(critical path, total work / N, the bound), in time units."""
    cp = max(longest_chains(w.deps, w.units).values())
    work = sum(w.units.values()) / agents
    return cp, work, max(cp, work)


# -- virtual-time replays (no overhead) ----------------------------------------------------------


def simulate(w: Workload, agents: int, rank: Mapping[str, Hashable], poll: float | None = None) -> float:
    """Makespan in time units of a list scheduler that starts the best-ranked ready feature.

    ``poll=None``: a freed agent starts the next feature at once. ``poll=p``: one dispatcher
    wakes every p units and starts at most one feature per wake (the seed's loop).
    """
    deps = w.deps
    waiting = {name: len(d) for name, d in deps.items()}
    dependents: dict[str, list[str]] = {name: [] for name in deps}
    for name, d in deps.items():
        for dep in d:
            dependents[dep].append(name)
    ready = [(rank[n], n) for n, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    done = 0

    def complete_until(t: float) -> None:
        nonlocal done
        while running and running[0][0] <= t + 1e-12:
            _, name = heapq.heappop(running)
            done += 1
            for nxt in dependents[name]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    heapq.heappush(ready, (rank[nxt], nxt))

    def start(t: float) -> float:
        _, name = heapq.heappop(ready)
        end = t + w.units[name]
        heapq.heappush(running, (end, name))
        return end

    now = last = 0.0
    while done < len(deps):
        if poll is None:
            while ready and len(running) < agents:
                last = max(last, start(now))
            now = running[0][0]
        else:
            now += poll
            if ready and len(running) < agents:
                last = max(last, start(now))
        complete_until(now)
    return last


def our_rank(w: Workload) -> dict[str, tuple[int, int]]:
    """api.dag's claim order (longest chain counted in features, then priority), then file order."""
    lengths = dag.critical_path_lengths(dag.build_graph(w.deps))
    return {s.name: (dag.claim_order(lengths[s.name], s.priority), i) for i, s in enumerate(w.specs)}


def seed_rank(w: Workload) -> dict[str, tuple[int, int]]:
    return {s.name: (-s.priority, i) for i, s in enumerate(w.specs)}


def oracle_rank(w: Workload) -> dict[str, tuple[float, int]]:
    """Longest remaining chain in time (HLFET): needs the durations in advance."""
    reverse: dict[str, list[str]] = {s.name: [] for s in w.specs}
    for s in w.specs:
        for d in s.depends_on:
            reverse[d].append(s.name)
    tail = longest_chains({n: tuple(v) for n, v in reverse.items()}, w.units)
    return {s.name: (-tail[s.name], i) for i, s in enumerate(w.specs)}


POLICIES: dict[str, tuple[Callable[[Workload], Mapping[str, Hashable]], float | None]] = {
    "ours": (our_rank, None),
    "seed": (seed_rank, SEED_POLL_FRACTION),
    "oracle": (oracle_rank, None),
}


def policy_ratio(w: Workload, agents: int, policy: str) -> float:
    rank, poll = POLICIES[policy]
    return simulate(w, agents, rank(w), poll) / lower_bound(w, agents)[2]


# -- the seed design, for real ------------------------------------------------------------------

_SEED_CLAIM = text(
    """
    UPDATE features SET status = 'claimed' WHERE id = (
        SELECT f.id FROM features f
        WHERE f.status = 'pending' AND NOT EXISTS (
            SELECT 1 FROM feature_dependencies d JOIN features p ON p.id = d.depends_on_id
            WHERE d.feature_id = f.id AND p.status <> 'passing')
        ORDER BY f.priority DESC, f.id
        LIMIT 1)
    RETURNING name
    """
)
_SEED_PASS = text("UPDATE features SET status = 'passing' WHERE name = :name")


def run_seed(url: str, w: Workload, agents: int, unit_s: float) -> float:
    """Makespan in seconds of the seed's loop on the same schema and durations."""
    db = load_queue(url, w.specs).db
    poll = SEED_POLL_FRACTION * unit_s
    total = len(w.specs)

    async def main() -> float:
        finished: list[float] = []
        running: set[asyncio.Task] = set()

        async def session(name: str) -> None:
            await asyncio.sleep(w.units[name] * unit_s)
            await asyncio.to_thread(db.run, lambda s: s.execute(_SEED_PASS, {"name": name}))
            finished.append(time.perf_counter())

        t0 = time.perf_counter()
        while len(finished) < total:
            await asyncio.sleep(poll)
            if len(running) >= agents:
                continue
            name = await asyncio.to_thread(db.run, lambda s: s.execute(_SEED_CLAIM).scalar())
            if name is not None:
                task = asyncio.create_task(session(name))
                running.add(task)
                task.add_done_callback(running.discard)
        return max(finished) - t0

    try:
        return asyncio.run(main())
    finally:
        db.dispose()


# -- the benchmark ------------------------------------------------------------------------------------


def measure(w: Workload, agents: int, unit_s: float, tmp: Path, pool: ProcessPoolExecutor) -> dict:
    """One workload at one N: ours here while the seed runs in the other process (both mostly sleep)."""
    cp, work, bound = lower_bound(w, agents)
    tag = f"{w.shape}-{w.seed}-{agents}"
    seed_future = pool.submit(run_seed, f"sqlite:///{tmp / f'seed-{tag}.db'}", w, agents, unit_s)
    durations = {name: u * unit_s for name, u in w.units.items()}
    ours = run_supervisor(f"sqlite:///{tmp / f'ours-{tag}.db'}", w.specs, durations, agents, tmp)
    seed = seed_future.result()
    return {
        "shape": w.shape,
        "dag_seed": w.seed,
        "agents": agents,
        "critical_path_units": cp,
        "work_per_agent_units": work,
        "bound_units": bound,
        "bound_s": bound * unit_s,
        "ours_s": ours.makespan,
        "ours_ratio": ours.makespan / (bound * unit_s),
        "seed_s": seed,
        "seed_ratio": seed / (bound * unit_s),
        **{f"{p}_policy_ratio": policy_ratio(w, agents, p) for p in POLICIES},
    }


def replay_statistics(dags: int) -> list[dict]:
    """Policy ratios over many DAGs per shape, in virtual time."""
    out = []
    for shape in SHAPES:
        workloads = [workload(shape, seed) for seed in range(1, dags + 1)]
        for agents in AGENTS:
            entry: dict = {"shape": shape, "agents": agents, "dags": dags}
            for policy in POLICIES:
                ratios = [policy_ratio(w, agents, policy) for w in workloads]
                entry[policy] = {
                    "mean": statistics.fmean(ratios),
                    "max": max(ratios),
                    "share_over_goal": sum(r > GOAL for r in ratios) / len(ratios),
                }
            out.append(entry)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    # A mean session of 1 s keeps the supervisor's ~10-20 ms per dispatch a small share, as it is
    # against real sessions of minutes; --quick compresses time 33x and the overhead dominates.
    unit_s = 0.03 if args.quick else 1.0
    runs = []
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-makespan-") as tmp, ProcessPoolExecutor(1, mp_context=ctx) as pool:
        for shape in SHAPES:
            w = workload(shape, 1)
            for agents in AGENTS:
                r = measure(w, agents, unit_s, Path(tmp), pool)
                runs.append(r)
                print(f"  {shape} N={agents}: ours {r['ours_ratio']:.3f}, seed {r['seed_ratio']:.3f}", flush=True)
    print_table(
        f"Makespan / lower bound: {FEATURES} features, mean session {unit_s * 1000:.0f} ms, real Supervisor on SQLite",
        [
            "shape",
            "N",
            "critical path",
            "work / N",
            "bound (s)",
            "ours (s)",
            "ours",
            "seed",
            "ours policy",
            "seed policy",
            "oracle policy",
        ],
        [
            [
                r["shape"],
                r["agents"],
                r["critical_path_units"],
                r["work_per_agent_units"],
                r["bound_s"],
                r["ours_s"],
                r["ours_ratio"],
                r["seed_ratio"],
                r["ours_policy_ratio"],
                r["seed_policy_ratio"],
                r["oracle_policy_ratio"],
            ]
            for r in runs
        ],
        note=f"goal: ours <= {GOAL} at every N. Critical path and work / N in time units (mean duration 1). "
        "policy = the same order replayed in virtual time with zero overhead.",
    )
    replay = replay_statistics(REPLAY_DAGS)
    print_table(
        f"Claim order alone (virtual time, zero overhead): makespan / bound over {REPLAY_DAGS} DAGs per shape",
        [
            "shape",
            "N",
            "ours mean",
            "ours max",
            "ours > goal",
            "seed mean",
            "seed max",
            "seed > goal",
            "oracle mean",
            "oracle max",
        ],
        [
            [
                e["shape"],
                e["agents"],
                e["ours"]["mean"],
                e["ours"]["max"],
                f"{e['ours']['share_over_goal']:.0%}",
                e["seed"]["mean"],
                e["seed"]["max"],
                f"{e['seed']['share_over_goal']:.0%}",
                e["oracle"]["mean"],
                e["oracle"]["max"],
            ]
            for e in replay
        ],
        note="ours ranks by the longest chain counted in features (durations are unknown); oracle ranks by the "
        "longest chain in time.",
    )
    results = {
        "features": FEATURES,
        "unit_s": unit_s,
        "sigma": SIGMA,
        "seed_poll_units": SEED_POLL_FRACTION,
        "goal": GOAL,
        "runs": runs,
        "replay": replay,
        "met": all(r["ours_ratio"] <= GOAL for r in runs),
    }
    write_results("makespan", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
