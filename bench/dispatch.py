"""Benchmark 2: dispatch latency, from a session ending to the session it unblocks starting.

The real Supervisor runs chains of features with simulated sessions (bench/simulated.py): each
feature depends on the previous one of its chain, so every start after the first of a chain
has exactly one cause, the end of its predecessor, whose session ending frees the agent and
whose passing makes the next feature ready. Latency = runner called for the next feature -
runner of the previous one returned, timed from outside the supervisor. The view callbacks
split it into "conclude" (verdict read, run recorded, feature released) and "claim and start"
(woken, claimed, assignment read, run started).

Scenarios: one agent on one chain (dispatch alone), and four agents on four chains with
sessions of 50-150 ms (10-40 ms with --quick), so dispatches overlap other agents' work.
2,000 dispatches per scenario (500 with --quick).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fresh_pg_url, ms, parse_args, percentiles, postgres, print_table, write_results
from simulated import SimulatedRun, run_supervisor

from api.features_file import FeatureSpec

GOAL_P99_MS = 20.0


@dataclass(frozen=True)
class Scenario:
    name: str
    agents: int
    chain_length: int
    session_ms: tuple[float, float]  # uniform range of simulated session durations


def chains(scenario: Scenario) -> list[FeatureSpec]:
    specs = []
    for c in range(scenario.agents):
        for i in range(scenario.chain_length):
            depends = (f"c{c}-{i - 1:04d}",) if i else ()
            specs.append(FeatureSpec(name=f"c{c}-{i:04d}", category="backend", depends_on=depends))
    return specs


def latencies(run: SimulatedRun, specs: list[FeatureSpec]) -> dict[str, list[float]]:
    """Per dispatch (seconds): total, conclude (end -> released) and claim-and-start (released -> start)."""
    ids = {name: fid for fid, name in run.names.items()}
    out: dict[str, list[float]] = {"total": [], "conclude": [], "claim_start": []}
    for spec in specs:
        if not spec.depends_on:
            continue
        prev, this = ids[spec.depends_on[0]], ids[spec.name]
        ended, released, started = run.runner.ended[prev], run.view.finishes[prev], run.runner.started[this]
        out["total"].append(started - ended)
        out["conclude"].append(released - ended)
        out["claim_start"].append(started - released)
    return out


def measure(backend: str, url: str, scenario: Scenario, workdir: Path) -> dict:
    specs = chains(scenario)
    rng = random.Random(f"dispatch:{scenario.name}")
    durations = {s.name: rng.uniform(*scenario.session_ms) / 1000 for s in specs}
    run = run_supervisor(url, specs, durations, scenario.agents, workdir)
    lat = latencies(run, specs)
    total = {k: ms(v) for k, v in percentiles(lat["total"]).items()}
    return {
        "backend": backend,
        "scenario": scenario.name,
        "agents": scenario.agents,
        "dispatches": len(lat["total"]),
        "session_ms": list(scenario.session_ms),
        **{f"{k}_ms": v for k, v in total.items()},
        "max_ms": ms(max(lat["total"])),
        "conclude_p50_ms": ms(percentiles(lat["conclude"])["p50"]),
        "claim_start_p50_ms": ms(percentiles(lat["claim_start"])["p50"]),
        "met": total["p99"] <= GOAL_P99_MS,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    # --quick: 500 dispatches per scenario, the least the issue asks for; the full run takes 2,000
    # so that a burst of other work on the machine moves p99 less.
    scenarios = (
        [Scenario("1 chain, 1 agent", 1, 501, (2.0, 8.0)), Scenario("4 chains, 4 agents", 4, 126, (10.0, 40.0))]
        if args.quick
        else [Scenario("1 chain, 1 agent", 1, 2001, (2.0, 8.0)), Scenario("4 chains, 4 agents", 4, 501, (50.0, 150.0))]
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        workdir = Path(tmp)
        for i, scenario in enumerate(scenarios):
            rows.append(measure("sqlite", f"sqlite:///{workdir / f'dispatch-{i}.db'}", scenario, workdir))
        with postgres() as pg:
            if pg is not None:
                rows.extend(measure("postgresql", fresh_pg_url(pg), scenario, workdir) for scenario in scenarios)
    print_table(
        "Dispatch latency: session end -> next session start (ms), real Supervisor",
        ["backend", "scenario", "dispatches", "p50", "p95", "p99", "max", "conclude p50", "claim+start p50", "goal"],
        [
            [
                r["backend"],
                r["scenario"],
                r["dispatches"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["conclude_p50_ms"],
                r["claim_start_p50_ms"],
                "met" if r["met"] else "missed",
            ]
            for r in rows
        ],
        note=f"goal: p99 <= {GOAL_P99_MS:.0f} ms. conclude = runner returned -> feature released; "
        "claim+start = released -> runner called for the next feature.",
    )
    results = {"goal_p99_ms": GOAL_P99_MS, "rows": rows, "met": all(r["met"] for r in rows)}
    write_results("dispatch", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
