"""What every benchmark shares: arguments, machine facts, percentiles, tables, JSON results, PostgreSQL.

Run benchmarks from the repository root (``python bench/NAME.py [--quick]``); importing this
module puts the root on ``sys.path`` so ``api``, ``supervisor`` and ``tests`` import from a clone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.support.pg import PostgresServer, find_pg_bin  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="smaller workloads (run_all --quick stays under 5 minutes)"
    )
    return parser.parse_args(argv)


def console() -> Console:
    # Piped output keeps whole rows instead of rich's 80-column default.
    return Console() if sys.stdout.isatty() else Console(width=160, no_color=True)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str | None = None) -> None:
    """A rich table; numbers are right-aligned, everything is printed with str()."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        numeric = any(isinstance(row[i], (int, float)) for row in rows)
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(fmt(value) for value in row))
    out = console()
    out.print(table)
    if note:
        out.print(note, highlight=False)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` (inclusive method: p100 is the maximum)."""
    if len(values) < 2:
        only = values[0] if values else float("nan")
        return {f"p{p}": only for p in points}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {f"p{p}": cuts[p - 1] for p in points}


def ms(seconds: float) -> float:
    return seconds * 1000.0


def postgres_version() -> str | None:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True)
    return out.stdout.strip().removeprefix("postgres (PostgreSQL) ")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _git_commit() -> str | None:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "agent_manager.py", "api", "alembic", "mcp_server", "supervisor"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


# Taken when the benchmark starts: the code it runs is the code it imported, and other work on
# the machine skews every number here.
_COMMIT_AT_START = _git_commit()
_LOAD_AT_START = os.getloadavg()


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres_version(),
        "commit": _COMMIT_AT_START,
        "load_average_at_start": _LOAD_AT_START,
        "load_average_at_end": os.getloadavg(),
    }


def write_results(name: str, quick: bool, results: Any, seconds: float) -> Path:
    """Write ``bench/results/<name>.json`` with the machine it ran on; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "quick": quick,
        "seconds": round(seconds, 1),
        "machine": machine_info(),
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    console().print(f"wrote {path.relative_to(REPO_ROOT)} ({seconds:.1f} s)", highlight=False)
    return path


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer | None]:
    """A throwaway PostgreSQL server (tests.pg), or None with a note when none can be started."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        console().print("PostgreSQL is not installed (apt-get install postgresql): skipping its rows")
        yield None
        return
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - the SQLite rows are still worth printing
        server.cleanup()
        console().print(f"could not start PostgreSQL ({exc}): skipping its rows")
        yield None
        return
    try:
        yield server
    finally:
        server.cleanup()


def fresh_pg_url(server: PostgresServer) -> str:
    return server.url(server.create_database())
