"""Soak: a 200-feature DAG, 8 agents, the real CLI against the scripted model, with random faults.

Faults are drawn from a seeded generator: 5% of model requests answer 500, 2% drop the stream
mid-answer, and 1% of sessions have their `claude` process killed (SIGKILL) soon after they
start. The run must end with every feature passing or failed for a recorded reason, nothing
claimed, no file lock left, and the counts adding up. Not run by CI (a few minutes); its numbers
are quoted in the README.

    python bench/soak.py [--quick]     # --quick: 60 features
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, parse_args, print_table, write_results

from api.database import Database, default_url
from api.queue import FeatureQueue
from supervisor.scripted_model import DropMidStream, FakeModelServer, HttpError, isolated_cli_env
from supervisor.scripted_model.agents import Agents
from tests.support.harness import descendants

SEED = 20261123
P_500 = 0.05
P_DROP = 0.02
P_CRASH = 0.01
AGENTS = 8


def make_features(n: int, rng: random.Random) -> list[dict]:
    """A layered DAG: each feature depends on up to two of the twenty before it."""
    categories = ["backend", "frontend", "database", "testing", "documentation"]
    features = []
    for i in range(n):
        earlier = list(range(max(0, i - 20), i))
        deps = rng.sample(earlier, k=min(len(earlier), rng.choice([0, 1, 1, 2])))
        features.append(
            {"name": f"f{i:03d}", "category": rng.choice(categories), "depends_on": [f"f{d:03d}" for d in deps]}
        )
    return features


def crasher(supervisor: subprocess.Popen, server: FakeModelServer, rng: random.Random, stop: threading.Event) -> list:
    """Kill the claude process of about 1% of sessions, once each, soon after the session starts."""
    killed: list[int] = []
    judged: set[str] = set()
    while not stop.is_set():
        # The predicate runs under the server's lock: read the dict, not the locking property.
        server.wait_until(lambda: len(server.models_by_session) > len(judged) or stop.is_set(), timeout=1.0)
        for session in server.sessions:
            if session in judged:
                continue
            judged.add(session)
            if rng.random() >= P_CRASH:
                continue
            clis = [pid for pid, cmd in descendants(supervisor.pid).items() if "_bundled/claude" in cmd]
            if clis:
                victim = rng.choice(clis)
                try:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
                except ProcessLookupError:
                    pass
    return killed


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n = 60 if args.quick else 200
    rng = random.Random(SEED)
    features = make_features(n, rng)
    project = Path(tempfile.mkdtemp(prefix="agent-manager-soak-"))
    (project / "features.json").write_text(json.dumps(features), encoding="utf-8")
    (project / ".agent-manager").mkdir()
    # Small pauses so an injected outage burst does not stall the soak for minutes.
    (project / ".agent-manager" / "config.toml").write_text(
        "backoff_initial_seconds = 1\nbackoff_max_seconds = 5\nstall_seconds = 120\n", encoding="utf-8"
    )

    server = FakeModelServer(Agents()).start()
    faults = {"500": 0, "drop": 0}
    for _ in range(n * 12):  # more than the run will ask for; None is "answer normally"
        roll = rng.random()
        if roll < P_500:
            server.faults.append(HttpError(500))
            faults["500"] += 1
        elif roll < P_500 + P_DROP:
            server.faults.append(DropMidStream(after_events=3, how="reset"))
            faults["drop"] += 1
        else:
            server.faults.append(None)  # type: ignore[arg-type]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_MANAGER_", "ANTHROPIC_", "CLAUDE_"))}
    env.update(isolated_cli_env(server.base_url, project.parent / f"{project.name}-cli"))

    started = time.monotonic()
    command = [sys.executable, str(REPO_ROOT / "agent_manager.py"), "--project-dir", str(project)]
    proc = subprocess.Popen(
        [*command, "--max-agents", str(AGENTS)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    stop = threading.Event()
    killed: list[int] = []
    thread = threading.Thread(target=lambda: killed.extend(crasher(proc, server, rng, stop)), daemon=True)
    thread.start()
    output, _ = proc.communicate(timeout=3600)
    wall = time.monotonic() - started
    stop.set()
    thread.join(5)
    used = {"500": 0, "drop": 0}
    for request in server.requests:
        if request.kind == "http_error:500":
            used["500"] += 1
        elif request.kind == "drop":
            used["drop"] += 1
    server.stop()

    queue = FeatureQueue(Database(default_url(project)), project_dir=project)
    report = queue.status_report()
    counts = report.counts
    failed = [f for f in report.features if f.status == "failed"]
    attempts = sum(f.attempts for f in report.features)
    runs = sum(len(queue.runs(f.id)) for f in report.features)
    checks = {
        "every feature finished": counts.get("passing", 0) + counts.get("failed", 0) + counts.get("blocked", 0) == n,
        "nothing claimed": counts.get("claimed", 0) == 0,
        "no file lock left": queue.file_locks() == [],
        "every failure has a reason": all(f.notes.strip() for f in failed),
    }
    rows = [
        ["features", n],
        ["passing", counts.get("passing", 0)],
        ["failed", counts.get("failed", 0)],
        ["blocked", counts.get("blocked", 0)],
        ["sessions (agent runs)", runs],
        ["attempts counted", attempts],
        ["500s served", used["500"]],
        ["streams dropped", used["drop"]],
        ["claude processes killed", len(killed)],
        ["wall seconds", round(wall, 1)],
        ["supervisor exit code", proc.returncode],
        *[[name, "yes" if ok else "NO"] for name, ok in checks.items()],
    ]
    print_table(f"Soak: {n} features, {AGENTS} agents, random faults (seed {SEED})", ["measure", "value"], rows)
    if not all(checks.values()):
        print(output[-4000:])
    write_results(
        "soak",
        args.quick,
        {
            "features": n,
            "agents": AGENTS,
            "seed": SEED,
            "counts": counts,
            "sessions": runs,
            "attempts": attempts,
            "faults_served": used,
            "killed": len(killed),
            "wall_seconds": wall,
            "exit_code": proc.returncode,
            "checks": checks,
            "failed": [{"name": f.name, "attempts": f.attempts, "notes": f.notes[:300]} for f in failed],
        },
        wall,
    )


if __name__ == "__main__":
    main()
