"""Benchmark 5: the real CLI end to end, sessions per second and memory per agent.

``python agent_manager.py --project-dir DIR --max-agents N`` runs as a subprocess against the
scripted model server of the tests (supervisor/scripted_model), so every session is a real bundled
``claude`` process with the real ``python -m mcp_server`` attached. The scripted model calls
feature_get, then feature_release(passing) with the id it got, then ends its turn: the least
work a session can do, so what is measured is the supervisor's and the CLI's own overhead.

While it runs, the process tree is sampled every 100 ms: VmRSS and PSS (proportional set size,
which splits shared pages between the processes sharing them, so it can be summed) of the
supervisor, of each claude process and of each MCP server.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, parse_args, print_table, write_results

from api.database import Database, default_url
from api.queue import FeatureQueue
from supervisor.scripted_model import FakeModelServer, Reply, Request, isolated_cli_env
from supervisor.scripted_model import agents as scripted

AGENTS = (1, 4, 8)
GOAL_MB_PER_AGENT = 30.0
SAMPLE_EVERY_S = 0.1
RUN_TIMEOUT_S = 600


def brain(req: Request) -> Reply:
    """The least an agent can do: feature_get, feature_release(passing) with the id it got, end the turn."""
    convo = scripted.read(req)
    if convo.feature is None:
        return scripted.get_feature()
    if not convo.succeeded(scripted.TOOL + "feature_release"):
        return scripted.release(convo.feature)
    return Reply.text("Done.")


# -- process tree sampling ------------------------------------------------------------------------


def _proc_kib(path: str, field: str) -> int | None:
    """A "Field:  N kB" line of a /proc file, or None once the process is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree[ppid].append(int(stat.parent.name))
    return tree


def _kind(pid: int) -> str | None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if comm == "claude":
        return "cli"
    if b"mcp_server" in cmdline:
        return "mcp_server"
    return None


@dataclass
class Sampler:
    """Samples the supervisor's process tree in a thread until stopped."""

    root: int
    peak: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # kind -> largest single RSS (KiB)
    peak_total_pss: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # kind -> largest sum of PSS
    peak_concurrent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        tree = _children()
        pss: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        stack, seen = [self.root], []
        while stack:
            pid = stack.pop()
            seen.append(pid)
            stack.extend(tree.get(pid, []))
        for pid in seen:
            kind = "supervisor" if pid == self.root else _kind(pid)
            if kind is None:
                continue
            rss = _proc_kib(f"/proc/{pid}/status", "VmRSS:")
            if rss is None:
                continue
            self.peak[kind] = max(self.peak[kind], rss)
            pss[kind] += _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:") or 0
            count[kind] += 1
        for kind in pss:
            self.peak_total_pss[kind] = max(self.peak_total_pss[kind], pss[kind])
            self.peak_concurrent[kind] = max(self.peak_concurrent[kind], count[kind])
        beyond_cli = pss["supervisor"] + pss["mcp_server"]
        self.peak_total_pss["supervisor+mcp"] = max(self.peak_total_pss["supervisor+mcp"], beyond_cli)
        self.samples += 1

    def run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def stop(self) -> None:
        self._stop.set()


# -- one run ----------------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(agents: int, features: int, tmp: Path) -> dict:
    project = tmp / f"project-{agents}"
    project.mkdir()
    (project / "features.json").write_text(
        json.dumps(
            [{"name": f"feature-{i:03d}", "category": "backend", "description": "no-op"} for i in range(features)]
        )
    )
    with FakeModelServer(brain) as server:
        env = {**os.environ, **isolated_cli_env(server.base_url, tmp / f"cli-{agents}")}
        started = time.perf_counter()
        # Every process of the run is waited for by its parent (CLI by the supervisor, MCP server by
        # its CLI), so their CPU time ends up in our children's usage once the supervisor exits.
        cpu_before = _children_cpu()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "agent_manager.py"),
                "--project-dir",
                str(project),
                "--max-agents",
                str(agents),
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampler = Sampler(proc.pid)
        thread = threading.Thread(target=sampler.run, name="rss-sampler", daemon=True)
        thread.start()
        try:
            output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            sampler.stop()
            thread.join()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - started
        cpu = _children_cpu() - cpu_before
        model_requests = len(server.requests)
    if proc.returncode != 0:
        raise RuntimeError(f"agent_manager exited {proc.returncode} with N={agents}:\n{output[-3000:]}")
    db = Database(default_url(project))
    queue = FeatureQueue(db)
    report = queue.status_report()
    runs = [run for feature in report.features for run in queue.runs(feature.id)]
    db.dispose()
    if report.counts != {"passing": features} or any(run.ended_at is None for run in runs):
        raise RuntimeError(f"unexpected end with N={agents}: {report.counts}\n{output[-3000:]}")
    # From the first session's start to the last one's end, as the queue recorded them: the
    # supervisor's and the CLI's start-up and shut-down are left out.
    run_wall = (max(r.ended_at for r in runs) - min(r.started_at for r in runs)).total_seconds()
    sessions = len(runs)
    mib = 1 / 1024
    return {
        "agents": agents,
        "features": features,
        "sessions": sessions,
        "model_requests": model_requests,
        "process_wall_s": wall,
        "run_wall_s": run_wall,
        "sessions_per_s": sessions / run_wall,
        "mean_session_s": sum((r.ended_at - r.started_at).total_seconds() for r in runs) / sessions,
        "cli_rss_peak_mib": sampler.peak["cli"] * mib,
        "mcp_server_rss_peak_mib": sampler.peak["mcp_server"] * mib,
        "supervisor_rss_peak_mib": sampler.peak["supervisor"] * mib,
        "peak_concurrent_cli": sampler.peak_concurrent["cli"],
        "cli_pss_total_peak_mib": sampler.peak_total_pss["cli"] * mib,
        "supervisor_pss_peak_mib": sampler.peak_total_pss["supervisor"] * mib,
        "supervisor_and_mcp_pss_peak_mib": sampler.peak_total_pss["supervisor+mcp"] * mib,
        "mcp_server_pss_mib": sampler.peak_total_pss["mcp_server"]
        * mib
        / max(1, sampler.peak_concurrent["mcp_server"]),
        "cpu_s_per_session": cpu / sessions,
        "samples": sampler.samples,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        for agents in AGENTS:
            # The full run keeps every N busy for several waves; --quick is one wave of N (at least 4).
            features = max(4, agents) if args.quick else max(24, 3 * agents)
            rows.append(measure(agents, features, Path(tmp)))
            r = rows[-1]
            print(f"  N={agents}: {r['sessions']} sessions in {r['run_wall_s']:.1f} s", flush=True)
    base = rows[0]["supervisor_rss_peak_mib"]
    for r in rows:
        # What our side costs per agent beyond the CLIs: the supervisor's growth over its N=1 size,
        # plus one MCP server per session (the CLI starts it, but it is ours).
        r["supervisor_growth_mib_per_agent"] = (r["supervisor_rss_peak_mib"] - base) / max(1, r["agents"] - 1)
        r["ours_beyond_cli_pss_mib_per_agent"] = r["supervisor_and_mcp_pss_peak_mib"] / r["agents"]
        # The goal's measure: what each added agent costs us, its MCP server (stdio) included.
        r["marginal_mib_per_agent"] = r["supervisor_growth_mib_per_agent"] + r["mcp_server_pss_mib"]
        r["met_supervisor"] = r["supervisor_growth_mib_per_agent"] <= GOAL_MB_PER_AGENT
        r["met_with_mcp_servers"] = r["ours_beyond_cli_pss_mib_per_agent"] <= GOAL_MB_PER_AGENT
        r["met"] = r["marginal_mib_per_agent"] <= GOAL_MB_PER_AGENT
    print_table(
        "Real claude CLI against the scripted model: throughput and memory (MiB)",
        [
            "N",
            "sessions",
            "run s",
            "sessions/s",
            "session s",
            "CPU s/session",
            "CLIs",
            "CLI RSS",
            "CLIs PSS",
            "sup. RSS",
            "sup. +/agent",
            "MCP RSS",
            "MCP PSS",
            "ours PSS/agent",
            "ours +/agent",
        ],
        [
            [
                r["agents"],
                r["sessions"],
                r["run_wall_s"],
                r["sessions_per_s"],
                r["mean_session_s"],
                r["cpu_s_per_session"],
                r["peak_concurrent_cli"],
                r["cli_rss_peak_mib"],
                r["cli_pss_total_peak_mib"],
                r["supervisor_rss_peak_mib"],
                r["supervisor_growth_mib_per_agent"] if r["agents"] > 1 else None,
                r["mcp_server_rss_peak_mib"],
                r["mcp_server_pss_mib"],
                r["ours_beyond_cli_pss_mib_per_agent"],
                r["marginal_mib_per_agent"] if r["agents"] > 1 else None,
            ]
            for r in rows
        ],
        note=f"goal: supervisor <= {GOAL_MB_PER_AGENT:.0f} MB per agent beyond the CLIs. CLIs = most claude processes "
        "at once. RSS = peak of one process; PSS splits shared pages, so it adds up: CLIs PSS = all claude processes "
        "at peak. sup. +/agent = the supervisor's RSS growth per agent over N=1; ours PSS/agent = (supervisor + MCP "
        "servers) PSS at peak / N; ours +/agent = what one more agent costs: sup. +/agent plus one MCP server's PSS "
        "(0 with the default in-process servers), the goal's measure. "
        "CPU s/session: every process of the run (supervisor, CLIs, MCP servers).",
    )
    results = {
        "goal_mib_per_agent": GOAL_MB_PER_AGENT,
        "rows": rows,
        "met_supervisor": all(r["met_supervisor"] for r in rows),
        "met_with_mcp_servers": all(r["met_with_mcp_servers"] for r in rows),
        "met": all(r["met"] for r in rows if r["agents"] > 1),
    }
    write_results("cli_overhead", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
