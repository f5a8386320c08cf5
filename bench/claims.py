"""Benchmark 3: claim throughput, K processes claiming and releasing as fast as they can.

Each process opens its own FeatureQueue and loops claim(1) -> release(passing) on a backlog of
independent features until a deadline. A feature passes once, so any feature claimed twice is
a double claim; every release must also be applied with the token its claim returned. SQLite
runs on one file shared by all processes; PostgreSQL on one database, one connection each.
A cycle is two transactions (the claim and the release); claims/s counts cycles.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ms, parse_args, percentiles, postgres, print_table, write_results

from api.database import Database
from api.errors import LeaseLostError
from api.features_file import FeatureSpec
from api.queue import FeatureQueue

PROCESSES = (1, 4, 8, 16)
GOALS = {("sqlite", 8): 300.0, ("postgresql", 16): 1000.0}  # claims/s
START_TIMEOUT_S = 60.0


def worker(url: str, owner: str, seconds: float, barrier: Any, results: Any) -> None:
    """One process: claim and release until the deadline; reports what it claimed and how fast."""
    record: dict[str, Any] = {"owner": owner, "claims": [], "latencies": [], "lost": 0, "error": None}
    try:
        db = Database(url, pool_size=1)
        queue = FeatureQueue(db, lease_seconds=600)
        db.run(lambda s: s.connection(), read_only=True)  # connect before the start line
        barrier.wait(timeout=START_TIMEOUT_S)
        record["start"] = time.time()
        cpu = time.process_time()
        deadline = record["start"] + seconds
        while time.time() < deadline:
            t0 = time.perf_counter()
            claimed = queue.claim(1, owner)
            record["latencies"].append(time.perf_counter() - t0)
            if not claimed:
                break  # backlog exhausted: the run was sized too small, reported as such
            claim = claimed[0]
            record["claims"].append(claim.id)
            try:
                if not queue.release(claim.id, owner, claim.lease_token, "passing").applied:
                    record["lost"] += 1  # someone else had already released it with our token
            except LeaseLostError:
                record["lost"] += 1  # it was claimed again while we held it
        record["end"] = time.time()
        record["cpu"] = time.process_time() - cpu
        db.dispose()
    except Exception:  # noqa: BLE001 - reported to the parent
        record["error"] = traceback.format_exc()
    results.put(record)


def run_processes(url: str, processes: int, seconds: float, server_cpu: Callable[[], float] = lambda: 0.0) -> dict:
    # fork: the workers inherit the imports; the parent holds no open connection at this point.
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    server_before = server_cpu()
    procs = [ctx.Process(target=worker, args=(url, f"w{i}", seconds, barrier, results)) for i in range(processes)]
    for p in procs:
        p.start()
    records = [results.get(timeout=START_TIMEOUT_S + seconds + 30) for _ in procs]
    for p in procs:
        p.join(10)
    time.sleep(0.2)  # let the server reap the backends, so their CPU is counted
    server = server_cpu() - server_before
    errors = [r["error"] for r in records if r["error"]]
    if errors:
        raise RuntimeError(errors[0])
    claims = Counter(fid for r in records for fid in r["claims"])
    window = max(r["end"] for r in records) - min(r["start"] for r in records)
    total = sum(claims.values())
    lat = percentiles([x for r in records for x in r["latencies"]])
    return {
        "processes": processes,
        "claims": total,
        "seconds": window,
        "claims_per_s": total / window,
        "double_claims": sum(n - 1 for n in claims.values() if n > 1),
        "lost_releases": sum(r["lost"] for r in records),
        "exhausted": any(len(r["latencies"]) > len(r["claims"]) for r in records),
        "claim_p50_ms": ms(lat["p50"]),
        "claim_p99_ms": ms(lat["p99"]),
        "client_cpu_ms_per_claim": ms(sum(r["cpu"] for r in records) / total),
        "server_cpu_ms_per_claim": ms(server / total),
    }


def postgres_cpu(data_dir: Path) -> float:
    """CPU-seconds used so far by a PostgreSQL server: the postmaster, its reaped and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def backlog(features: int) -> list[FeatureSpec]:
    return [FeatureSpec(name=f"b{i:06d}", category="backend") for i in range(features)]


def load_template(url: str, features: int) -> None:
    db = Database(url)
    db.migrate()
    FeatureQueue(db).import_specs(backlog(features))
    db.dispose()  # checkpoints the WAL on SQLite, so the file alone is the database


def sqlite_runs(tmp: Path, features: int, seconds: float) -> list[dict]:
    template = tmp / "template.db"
    load_template(f"sqlite:///{template}", features)
    rows = []
    for k in PROCESSES:
        path = tmp / f"claims-{k}.db"
        shutil.copy(template, path)
        rows.append({"backend": "sqlite", **run_processes(f"sqlite:///{path}", k, seconds)})
    return rows


def postgres_runs(features: int, seconds: float) -> list[dict]:
    import psycopg

    rows = []
    with postgres() as pg:
        if pg is None:
            return rows
        template = pg.create_database()
        load_template(pg.url(template), features)
        admin = f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres"
        for k in PROCESSES:
            name = f"claims_{k}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            cpu = functools.partial(postgres_cpu, pg.data)
            rows.append({"backend": "postgresql", **run_processes(pg.url(name), k, seconds, cpu)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    seconds = 2.0 if args.quick else 5.0
    features = 8_000 if args.quick else 20_000
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
        rows = sqlite_runs(Path(tmp), features, seconds)
    rows += postgres_runs(features, seconds)
    for r in rows:
        goal = GOALS.get((r["backend"], r["processes"]))
        r["goal_claims_per_s"] = goal
        r["met"] = r["double_claims"] == 0 and r["lost_releases"] == 0 and (goal is None or r["claims_per_s"] >= goal)
    print_table(
        f"Claim throughput: K processes, claim(1) + release(passing), {seconds:.0f} s each",
        [
            "backend",
            "K",
            "claims",
            "claims/s",
            "claim p50 (ms)",
            "claim p99 (ms)",
            "client CPU ms/claim",
            "server CPU ms/claim",
            "double claims",
            "goal",
        ],
        [
            [
                r["backend"],
                r["processes"],
                r["claims"],
                r["claims_per_s"],
                r["claim_p50_ms"],
                r["claim_p99_ms"],
                r["client_cpu_ms_per_claim"],
                r["server_cpu_ms_per_claim"] if r["backend"] == "postgresql" else None,
                r["double_claims"] + r["lost_releases"],
                "-"
                if r["goal_claims_per_s"] is None
                else f"{'met' if r['met'] else 'missed'} (>= {r['goal_claims_per_s']:,.0f}/s)",
            ]
            for r in rows
        ],
        note="double claims counts features claimed more than once plus releases refused for a lost lease; "
        "must be 0. CPU per claim (one claim + one release): the claiming processes, and the PostgreSQL "
        "server's processes.",
    )
    if any(r["exhausted"] for r in rows):
        print("warning: a run exhausted its backlog before the deadline; its rate is a lower bound")
    results = {"seconds_per_run": seconds, "backlog": features, "rows": rows, "met": all(r["met"] for r in rows)}
    write_results("claims", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    main()
