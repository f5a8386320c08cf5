"""Run every benchmark in turn, each in its own interpreter, then list their times and goals.

``python bench/run_all.py [--quick]`` from the repository root; ``--quick`` is passed on to each
benchmark (the whole set then takes a few minutes on a 2-core machine). Every benchmark prints
its tables and writes bench/results/<name>.json; this script exits 1 if any of them failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, console, parse_args, print_table

BENCHMARKS = (
    "makespan",
    "dispatch",
    "claims",
    "mcp_latency",
    "cli_overhead",
    "scale",
    "git_merge",
    "serve_wake",
    "file_conflicts",
    "rate_limit",
    "session_start",
    "dashboard",
    "forecast",
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    out = console()
    rows = []
    started = time.perf_counter()
    for name in BENCHMARKS:
        out.rule(f"bench/{name}.py{' --quick' if args.quick else ''}")
        t0 = time.perf_counter()
        command = [sys.executable, str(REPO_ROOT / "bench" / f"{name}.py"), *(["--quick"] if args.quick else [])]
        code = subprocess.run(command, cwd=REPO_ROOT).returncode
        seconds = time.perf_counter() - t0
        goal = "-"
        if code == 0:
            met = json.loads((RESULTS_DIR / f"{name}.json").read_text())["results"].get("met")
            goal = "-" if met is None else ("met" if met else "missed")
        rows.append([name, seconds, "ok" if code == 0 else f"FAILED (exit {code})", goal])
    total = time.perf_counter() - started
    out.rule("summary")
    print_table(
        f"Benchmarks{' (--quick)' if args.quick else ''}: {total:.0f} s in all",
        ["benchmark", "seconds", "run", "goals"],
        rows,
        note="goals: every goal of that benchmark met, or at least one missed (see its table and bench/README.md).",
    )
    return 0 if all(r[2] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
