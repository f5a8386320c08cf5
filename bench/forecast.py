"""Benchmark: how close the cost forecast (`status`, the dashboard, the summary) comes to what
the rest of a backlog really costs.

Simulated backlogs of 200 features in four categories, whose attempts cost a lognormal amount
around a per-category median (sigma 0.6: a feature costs 0.5x-2x its category's typical cost),
and which fail an attempt with probability 0.25 (up to 3 attempts; each failed attempt is paid
for). Features finish in a random order. At 10 %, 25 %, 50 %, 75 % and 90 % of them finished,
api.estimates.forecast_cost is asked what the rest will cost, and the answer is compared with the
rest's real total. Its statistic (the mean, the product's choice) is run beside the median on the
same draws. No database and no agents: only the estimator is measured.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, percentiles, print_table, write_results

from api.estimates import forecast_cost
from api.records import FeatureView, Status

FEATURES = 200
CATEGORIES = {"backend": 0.6, "frontend": 0.3, "testing": 0.05, "database": 1.5}  # median $ per attempt
SIGMA = 0.6
FAIL_P = 0.25
MAX_ATTEMPTS = 3
CHECKPOINTS = (0.10, 0.25, 0.50, 0.75, 0.90)
STATISTICS = {"mean (product)": statistics.fmean, "median": statistics.median}


def backlog(rng: random.Random) -> list[tuple[str, float, int]]:
    """(category, total cost, attempts) per feature."""
    features = []
    for i in range(FEATURES):
        category = list(CATEGORIES)[i % len(CATEGORIES)]
        attempts, cost = 0, 0.0
        while attempts < MAX_ATTEMPTS:
            attempts += 1
            cost += rng.lognormvariate(0.0, SIGMA) * CATEGORIES[category]
            if rng.random() >= FAIL_P:
                break
        features.append((category, cost, attempts))
    rng.shuffle(features)  # the order they finish in
    return features


def views(features: list[tuple[str, float, int]], finished: int) -> list[FeatureView]:
    made = []
    for i, (category, cost, attempts) in enumerate(features):
        done = i < finished
        made.append(
            FeatureView(
                id=i + 1, name=f"f{i}", category=category, status=Status.PASSING if done else Status.PENDING,
                attempts=attempts if done else 0, model=None, cost_usd=cost if done else 0.0,
                depends_on=(), notes="", priority=0, critical_path=0, owner=None,
            )
        )  # fmt: skip
    return made


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    trials = 40 if args.quick else 400
    started = time.monotonic()
    errors: dict[tuple[str, float], list[float]] = {}
    for seed in range(trials):
        features = backlog(random.Random(seed))
        for point in CHECKPOINTS:
            finished = int(FEATURES * point)
            real = sum(cost for _, cost, _ in features[finished:])
            for name, statistic in STATISTICS.items():
                forecast = forecast_cost(views(features, finished), statistic).usd
                assert forecast is not None
                errors.setdefault((name, point), []).append((forecast - real) / real)
    results, rows = [], []
    for (name, point), errs in errors.items():
        absolute = percentiles([abs(e) * 100 for e in errs], (50, 90))
        bias = statistics.fmean(errs) * 100
        results.append(
            {"statistic": name, "finished": point, "bias_pct": round(bias, 2),
             "abs_error_p50_pct": round(absolute["p50"], 2), "abs_error_p90_pct": round(absolute["p90"], 2)}
        )  # fmt: skip
        rows.append((name, f"{point:.0%}", round(bias, 1), round(absolute["p50"], 1), round(absolute["p90"], 1)))
    print_table(
        f"Cost forecast vs the real cost of the rest ({trials} backlogs of {FEATURES} features)",
        ("statistic", "finished", "bias %", "|error| p50 %", "|error| p90 %"),
        rows,
        note="bias: mean of (forecast - real) / real; negative means the forecast falls short",
    )
    summary = {"trials": trials, "features": FEATURES, "rows": results}
    write_results("forecast", args.quick, summary, time.monotonic() - started)
    return {"rows": results}


if __name__ == "__main__":
    main()
