"""Benchmark 4: claim_file / release_file round trips through the stdio MCP server.

The real ``python -m mcp_server`` is started as the Claude CLI starts it (stdio, the legacy
initialize handshake) with an agent identity in its environment; the MCP SDK's client then
locks and unlocks one project file over and over. The same verbs called on api.queue directly
show how much of a round trip is the database and how much is MCP, JSON and the pipe.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, fresh_pg_url, ms, parse_args, percentiles, postgres, print_table, write_results

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue

TIMEOUT_S = 120
PATH = "src/cart.py"


def prepare(url: str, project: Path) -> tuple[FeatureQueue, str, int]:
    db = Database(url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project)
    queue.import_specs([FeatureSpec("checkout", category="backend")])
    claim = queue.claim(1, "bench")[0]
    return queue, claim.agent_id, claim.id


def through_stdio(url: str, project: Path, agent_id: str, feature_id: int, rounds: int) -> dict[str, list[float]]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server"],
        env={
            **os.environ,
            "AGENT_MANAGER_DATABASE_URL": url,
            "AGENT_MANAGER_PROJECT_DIR": str(project),
            "AGENT_MANAGER_AGENT_ID": agent_id,
            "AGENT_MANAGER_FEATURE_ID": str(feature_id),
            "PYTHONPATH": str(REPO_ROOT),
        },
        cwd=str(project),
    )
    times: dict[str, list[float]] = {"claim_file": [], "release_file": [], "round_trip": []}

    async def scenario() -> None:
        with anyio.fail_after(TIMEOUT_S):
            async with Client(params, mode="legacy") as client:
                for i in range(rounds + 20):  # the first 20 warm up the server's pool and caches
                    t0 = time.perf_counter()
                    locked = await client.call_tool("claim_file", {"file_path": PATH})
                    t1 = time.perf_counter()
                    released = await client.call_tool("release_file", {"file_path": PATH})
                    t2 = time.perf_counter()
                    if locked.is_error or released.is_error or not locked.structured_content["success"]:
                        raise RuntimeError(f"tool call failed: {locked.content} {released.content}")
                    if i >= 20:
                        times["claim_file"].append(t1 - t0)
                        times["release_file"].append(t2 - t1)
                        times["round_trip"].append(t2 - t0)

    anyio.run(scenario)
    return times


def direct(queue: FeatureQueue, agent_id: str, feature_id: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"claim_file": [], "release_file": [], "round_trip": []}
    for i in range(rounds + 20):
        t0 = time.perf_counter()
        assert queue.claim_file(PATH, agent_id, feature_id).success
        t1 = time.perf_counter()
        assert queue.release_file(PATH, agent_id).success
        t2 = time.perf_counter()
        if i >= 20:
            times["claim_file"].append(t1 - t0)
            times["release_file"].append(t2 - t1)
            times["round_trip"].append(t2 - t0)
    return times


def measure(backend: str, url: str, project: Path, rounds: int) -> list[dict]:
    queue, agent_id, feature_id = prepare(url, project)
    rows = []
    for path, times in (
        ("stdio MCP server", through_stdio(url, project, agent_id, feature_id, rounds)),
        ("api.queue in process", direct(queue, agent_id, feature_id, rounds)),
    ):
        row = {"backend": backend, "path": path, "rounds": rounds}
        for call, values in times.items():
            pct = percentiles(values)
            row[f"{call}_p50_ms"] = ms(pct["p50"])
            row[f"{call}_p99_ms"] = ms(pct["p99"])
        rows.append(row)
    queue.db.dispose()
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    rounds = 300 if args.quick else 2000
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        project = Path(tmp) / "project"
        (project / "src").mkdir(parents=True)
        rows += measure("sqlite", f"sqlite:///{Path(tmp) / 'mcp.db'}", project, rounds)
        with postgres() as pg:
            if pg is not None:
                rows += measure("postgresql", fresh_pg_url(pg), project, rounds)
    print_table(
        f"MCP tool latency: {rounds} claim_file + release_file pairs (ms)",
        [
            "backend",
            "path",
            "claim_file p50",
            "claim_file p99",
            "release_file p50",
            "release_file p99",
            "round trip p50",
            "round trip p99",
        ],
        [
            [
                r["backend"],
                r["path"],
                r["claim_file_p50_ms"],
                r["claim_file_p99_ms"],
                r["release_file_p50_ms"],
                r["release_file_p99_ms"],
                r["round_trip_p50_ms"],
                r["round_trip_p99_ms"],
            ]
            for r in rows
        ],
        note="round trip = claim_file then release_file, as an agent brackets an edit.",
    )
    results = {"rounds": rounds, "rows": rows}
    write_results("mcp_latency", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
