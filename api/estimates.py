"""How long a feature's attempt should take, and the claim order that follows from it.

A feature's estimate is its ``estimate_minutes`` from features.json; else the median duration of
recent finished attempts in its category on its model, else in its category, else of any
attempt; else DEFAULT_SECONDS. Ready features are claimed by the longest chain of remaining work
in estimated time (api.dag.timed_paths), so a chain of slow features starts before a longer
chain of quick ones. ``reorder`` refreshes every unfinished feature's estimate and rank in one
transaction; the importer and the supervisor (as attempts finish) call it.

``forecast_cost`` says, the same way, what the unfinished features should still cost.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api import dag
from api.models import AgentRun, Feature, FeatureDependency
from api.records import FeatureView, Status

DEFAULT_SECONDS = 600.0
MIN_SAMPLES = 3  # fewer finished attempts than this say little about a category
RECENT = 50  # attempts per key: the estimate follows the run as it goes
COUNTED = (Status.PASSING, Status.FAILED)  # attempts that really worked (not given back, not stopped early)

ModelFor = Callable[[str, str | None], str]  # (category, the feature's own model) -> the model it runs on


@dataclass
class History:
    """Durations (seconds) of recent finished attempts, by (category, model), category, and overall."""

    by_model: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    by_category: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    overall: list[float] = field(default_factory=list)

    def estimate(self, category: str, model: str | None) -> float:
        for samples in (
            self.by_model.get((category, model or "")),
            self.by_category.get(category),
            self.overall,
        ):
            if samples and len(samples) >= MIN_SAMPLES:
                return statistics.median(samples)
        return DEFAULT_SECONDS


def history(session: Session) -> History:
    """The recent finished attempts' durations, newest RECENT per key."""
    rows = session.execute(
        select(Feature.category, AgentRun.model, AgentRun.started_at, AgentRun.ended_at)
        .join(Feature, Feature.id == AgentRun.feature_id)
        .where(AgentRun.ended_at.is_not(None), AgentRun.outcome.in_(COUNTED))
        .order_by(AgentRun.id.desc())
        .limit(20 * RECENT)
    ).all()
    found = History()
    for category, model, started, ended in rows:
        if ended is None:
            continue  # excluded by the query; for the type checker
        seconds = max(0.0, (ended - started).total_seconds())
        for samples in (found.by_model[(category, model or "")], found.by_category[category]):
            if len(samples) < RECENT:
                samples.append(seconds)
        if len(found.overall) < RECENT:
            found.overall.append(seconds)
    return found


def reorder(session: Session, model_for: ModelFor | None = None) -> int:
    """Refresh the estimate, remaining chain time and claim order of every unfinished feature;
    returns how many rows changed. Runs in the caller's transaction."""
    rows = session.execute(
        select(
            Feature.id,
            Feature.status,
            Feature.category,
            Feature.model,
            Feature.priority,
            Feature.estimate_minutes,
            Feature.estimate_seconds,
            Feature.path_seconds,
            Feature.claim_order,
        )
    ).all()
    if not rows:
        return 0
    past = history(session)
    seconds: dict[int, float] = {}
    for row in rows:
        if row.status == Status.PASSING:
            seconds[row.id] = 0.0  # done: nothing left of it on any chain
        elif row.estimate_minutes:
            seconds[row.id] = row.estimate_minutes * 60.0
        else:
            model = model_for(row.category, row.model) if model_for else row.model
            seconds[row.id] = past.estimate(row.category, model)
    edges: dict[int, list[int]] = {row.id: [] for row in rows}
    for fid, dep in session.execute(select(FeatureDependency.feature_id, FeatureDependency.depends_on_id)):
        edges[fid].append(dep)
    paths = dag.timed_paths(dag.build_graph(edges), seconds)
    changes = []
    for row in rows:
        if Status(row.status).finished:
            continue
        estimate, path = seconds[row.id], paths[row.id]
        order = dag.timed_order(path, row.priority)
        if (row.estimate_seconds, row.path_seconds, row.claim_order) != (estimate, path, order):
            changes.append({"id": row.id, "estimate_seconds": estimate, "path_seconds": path, "claim_order": order})
    if changes:
        session.execute(update(Feature), changes)
    return len(changes)


@dataclass(frozen=True)
class CostForecast:
    """What the unfinished features should still cost: an estimate from the finished ones.

    ``usd`` is None while fewer than MIN_SAMPLES features have finished (nothing to go by).
    """

    usd: float | None
    unfinished: int  # the features it covers
    samples: int  # the finished features it is based on
    needed: ClassVar[int] = MIN_SAMPLES  # finished features before there is a forecast

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "forecast_usd": None if self.usd is None else round(self.usd, 6),
            "unfinished": self.unfinished,
            "finished_samples": self.samples,
        }


def forecast_cost(
    features: Iterable[FeatureView], statistic: Callable[[list[float]], float] = statistics.fmean
) -> CostForecast:
    """The cost of finishing every unfinished feature, estimated from what finished ones cost.

    A finished feature (passing, or failed after its attempts) cost the sum of its attempts. An
    unfinished one should cost the mean of those in its category (with MIN_SAMPLES of them),
    else of all, less what it has already spent (retries and the attempt in flight count), and
    never less than nothing. The mean, not the median: costs are skewed (a few features take
    several attempts), and a sum of medians falls short of the total (bench/forecast.py).
    """
    done: dict[str, list[float]] = defaultdict(list)
    everything: list[float] = []
    left: list[FeatureView] = []
    for feature in features:
        if not feature.status.finished:
            left.append(feature)
        elif feature.attempts > 0:  # failed without an attempt (never ran): says nothing of cost
            done[feature.category].append(feature.cost_usd)
            everything.append(feature.cost_usd)
    if len(everything) < MIN_SAMPLES:
        return CostForecast(None, len(left), len(everything))
    overall = statistic(everything)
    by_category = {c: statistic(costs) for c, costs in done.items() if len(costs) >= MIN_SAMPLES}
    usd = sum(max(0.0, by_category.get(f.category, overall) - f.cost_usd) for f in left)
    return CostForecast(usd, len(left), len(everything))


def cost_json(features: Iterable[FeatureView]) -> dict[str, float | int | None]:
    """What the features have cost and the forecast for the unfinished ones, as `status --json`
    and the lead's queue_status give them."""
    views = list(features)
    return {"spent_usd": round(sum(f.cost_usd for f in views), 6), **forecast_cost(views).to_json()}
