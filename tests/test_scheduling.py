"""Scheduling that knows time and files: the claim order follows the longest chain of work in
estimated time (features.json estimates, else the history of finished attempts), features whose
files overlap are not run at once while other work is ready, and lock waits are measured."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from api import dag, estimates
from api.errors import FeaturesFileError
from api.features_file import FeatureSpec, parse_features
from api.files import overlap, patterns_overlap
from api.models import AgentRun, Feature
from api.queue import FeatureQueue
from api.records import FeatureView, Status, Verdict
from tests.test_dag_properties import Dag, dags, fresh_queue, migrated_sqlite, stored_status  # noqa: F401 - fixtures


def name(n: int) -> str:
    return f"f{n:02d}"


def brute_timed_paths(g: Dag, minutes: dict[int, float]) -> dict[int, float]:
    """Relax every edge until nothing changes: each node's longest chain of estimated seconds."""
    path = {n: minutes[n] * 60 for n in g.nodes}
    changed = True
    while changed:
        changed = False
        for node, deps in g.deps.items():
            for dep in deps:
                if path[node] + minutes[dep] * 60 > path[dep] + 1e-9:
                    path[dep] = path[node] + minutes[dep] * 60
                    changed = True
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags(max_nodes=15, max_deps=3), st.data())
def test_with_exact_estimates_the_queue_starts_the_head_of_the_longest_timed_chain_and_never_an_unready_feature(
    fresh_queue,  # noqa: F811 - the imported fixture
    g: Dag,
    data: st.DataObject,
) -> None:
    minutes = {n: data.draw(st.sampled_from([0.5, 1, 2, 5, 30, 120])) for n in g.nodes}
    specs = [
        FeatureSpec(
            name=name(n), depends_on=tuple(name(d) for d in g.deps[n]), max_attempts=1, estimate_minutes=minutes[n]
        )
        for n in g.nodes
    ]
    paths = brute_timed_paths(g, minutes)
    graph = dag.build_graph({name(n): [name(d) for d in g.deps[n]] for n in g.nodes})
    with fresh_queue() as queue:
        queue.import_specs(specs)
        for _ in range(len(specs) + 1):
            before = stored_status(queue)
            claimed = queue.claim(1, "prop")
            ready = dag.ready_set(graph, before)
            if not claimed:
                assert ready == set()
                break
            (feature,) = claimed
            assert all(before[d] == "passing" for d in graph.predecessors(feature.name)), feature.name
            best = min(ready, key=lambda n: (-round(paths[int(n[1:])] * 1000), n))
            assert feature.name == best, (feature.name, best, {n: paths[int(n[1:])] for n in ready})
            outcome = data.draw(st.sampled_from(["passing", "failed"]), label=f"outcome of {feature.name}")
            queue.release(feature.id, "prop", feature.lease_token, outcome)


def test_a_long_slow_feature_starts_before_a_longer_chain_of_quick_ones(queue: FeatureQueue) -> None:
    queue.import_specs(
        [
            FeatureSpec(name="quick-1", estimate_minutes=2),
            FeatureSpec(name="quick-2", depends_on=("quick-1",), estimate_minutes=2),
            FeatureSpec(name="quick-3", depends_on=("quick-2",), estimate_minutes=2),
            FeatureSpec(name="slow", estimate_minutes=30),
        ]
    )
    assert [c.name for c in queue.claim(1, "sup")] == ["slow"]  # by feature count quick-1 would go first
    views = {f.name: f for f in queue.status_report().features}
    assert views["quick-1"].path_seconds == 360 and views["quick-1"].estimate_seconds == 120
    assert views["quick-1"].to_json()["critical_path_minutes"] == 6.0


def test_the_history_of_finished_attempts_estimates_features_without_an_estimate(queue: FeatureQueue) -> None:
    queue.import_specs(
        [FeatureSpec(name=f"old-{i}", category="database") for i in range(3)]
        + [FeatureSpec(name="db-next", category="database"), FeatureSpec(name="ui-next", category="frontend")]
    )
    # Three database attempts took 40 minutes each; nothing is known about frontend work.
    for claim in queue.claim(3, "sup"):
        run = queue.start_run(claim, "sonnet")
        queue.finish_attempt(run.id, {"outcome": "passing"}, claim, Verdict(Status.PASSING, "ok"))

        def backdate(session, run_id=run.id):
            started = session.scalar(select(AgentRun.ended_at).where(AgentRun.id == run_id)) - timedelta(minutes=40)
            session.execute(update(AgentRun).where(AgentRun.id == run_id).values(started_at=started))

        queue.db.run(backdate)
    assert queue.reorder(lambda category, model: "sonnet") >= 2
    views = {f.name: f for f in queue.status_report().features}
    assert views["db-next"].estimate_seconds == pytest.approx(2400, abs=1)
    # frontend has no history of its own: the median of all attempts stands in.
    assert views["ui-next"].estimate_seconds == pytest.approx(2400, abs=1)
    assert pytest.approx(2400) != estimates.DEFAULT_SECONDS


def test_features_with_overlapping_files_are_not_run_at_once_while_other_work_is_ready(queue: FeatureQueue) -> None:
    queue.import_specs(
        [
            FeatureSpec(name="api", priority=3, files=("src/api/**",)),
            FeatureSpec(name="users", priority=2, files=("src/api/users.py",)),
            FeatureSpec(name="docs", priority=1, files=("docs/**",)),
            FeatureSpec(name="anything", priority=0),
        ]
    )
    first = queue.claim(2, "sup")
    assert [c.name for c in first] == ["api", "docs"]  # users overlaps api: the next that does not goes
    assert [c.name for c in queue.claim(5, "sup")] == ["anything"]  # users waits for api
    api = first[0]
    queue.release(api.id, "sup", api.lease_token, "passing")
    assert [c.name for c in queue.claim(5, "sup")] == ["users"]


def test_files_an_attempt_locked_are_remembered_and_keep_it_apart_next_time(queue: FeatureQueue) -> None:
    queue.import_specs([FeatureSpec(name="cart", priority=2), FeatureSpec(name="checkout", files=("src/cart.py",))])
    (cart,) = queue.claim(1, "sup")
    run = queue.start_run(cart, "sonnet")
    assert queue.claim_file("src/cart.py", cart.agent_id, cart.id).success
    queue.finish_attempt(run.id, {"outcome": "failed"}, cart, Verdict(Status.FAILED, "try again"))
    touched = queue.db.run(lambda s: s.scalar(select(Feature.touched_files).where(Feature.id == cart.id)))
    assert touched == ["src/cart.py"]
    (again,) = queue.claim(1, "sup")  # the retry goes first (priority)...
    assert again.name == "cart"
    assert queue.claim(1, "sup") == []  # ...and checkout, declaring the file cart touched, waits


def test_lock_waits_are_measured_per_attempt_and_summed_per_supervisor(queue: FeatureQueue) -> None:
    queue.import_specs([FeatureSpec(name="a"), FeatureSpec(name="b")])
    a, b = queue.claim(2, "sup")
    run_a, run_b = queue.start_run(a, "sonnet"), queue.start_run(b, "sonnet")
    assert queue.claim_file("shared.py", a.agent_id, a.id).success
    started = time.monotonic()
    assert not queue.claim_file("shared.py", b.agent_id, b.id).success  # b waits from here...
    assert not queue.claim_file("shared.py", b.agent_id, b.id).success  # (a second refusal changes nothing)
    queue.release_file("shared.py", a.agent_id)
    assert queue.claim_file("shared.py", b.agent_id, b.id).success  # ...to here
    waited = time.monotonic() - started
    queue.finish_attempt(run_a.id, {"outcome": "passing"}, a, Verdict(Status.PASSING, ""))
    queue.finish_attempt(run_b.id, {"outcome": "passing"}, b, Verdict(Status.PASSING, ""))
    wait_b = queue.run(run_b.id).lock_wait_seconds
    assert queue.run(run_a.id).lock_wait_seconds == 0
    assert wait_b is not None and 0 < wait_b <= waited + 0.01
    assert queue.lock_wait_seconds("sup") == pytest.approx(wait_b)
    assert queue.lock_wait_seconds("someone-else") == 0


def test_file_globs_overlap_conservatively() -> None:
    assert patterns_overlap("src/**", "src/a/b.py")
    assert patterns_overlap("src/api/**", "src/**")
    assert patterns_overlap("src/", "src/x.py")
    assert patterns_overlap("*.md", "README.md")
    assert not patterns_overlap("src/api/**", "src/web/**")
    assert not patterns_overlap("docs/**", "src/a.py")
    assert not patterns_overlap("src/a.py", "src/b.py")
    assert overlap(["docs/**", "src/x.py"], ["src/*.py"])
    assert not overlap([], ["src/**"])


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("estimate_minutes", 0, "above 0"),
        ("estimate_minutes", -5, "above 0"),
        ("estimate_minutes", "10", "a number of minutes"),
        ("estimate_minutes", True, "a number of minutes"),
        ("estimate_minutes", 10_081, "a week"),
        ("files", "src/**", "a list of strings"),
        ("files", ["/etc/passwd"], "relative to the project"),
        ("files", ["../other/**"], "relative to the project"),
        ("files", [""], "relative to the project"),
    ],
)
def test_bad_estimates_and_file_globs_are_refused_naming_the_feature(field: str, value: object, fragment: str) -> None:
    import json

    raw = json.dumps([{"name": "x", field: value}]).encode()
    with pytest.raises(FeaturesFileError, match=fragment) as caught:
        parse_features(raw)
    assert "feature 'x'" in caught.value.message


def test_estimates_and_files_round_trip_through_import() -> None:
    import json

    raw = json.dumps([{"name": "x", "estimate_minutes": 7.5, "files": ["src/**", "src/**", "README.md"]}]).encode()
    (spec,) = parse_features(raw)
    assert spec.estimate_minutes == 7.5 and spec.files == ("src/**", "README.md")


def test_the_supervisor_runs_a_non_overlapping_feature_beside_a_running_one_and_the_overlapping_one_after(
    queue: FeatureQueue,
) -> None:
    from supervisor.runner import AgentOutcome, AgentTask
    from tests.support.runners import ScriptedRunner, passes
    from tests.support.supervise import supervise

    queue.import_specs(
        [
            FeatureSpec(name="api", priority=3, files=("src/api/**",)),
            FeatureSpec(name="users", priority=2, files=("src/api/users.py",)),
            FeatureSpec(name="docs", priority=1, files=("docs/**",)),
        ]
    )

    async def together(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        await runner.running_at_once(2)  # api and docs run at the same time, or this times out
        return await passes(task, runner)

    runner = ScriptedRunner(queue, by_feature={"api": together, "docs": together})
    summary, _ = supervise(queue, runner, max_agents=2)
    assert summary.exit_code == 0
    names = [t.feature_name for t in runner.tasks]
    assert sorted(names[:2]) == ["api", "docs"] and names[2] == "users"
    assert runner.started["users"] >= runner.finished["api"]


# -- the cost forecast -------------------------------------------------------------------------------


def view(fid: int, status: Status, cost: float, category: str = "backend", attempts: int = 1) -> FeatureView:
    return FeatureView(
        id=fid, name=name(fid), category=category, status=status, attempts=attempts, model=None, cost_usd=cost,
        depends_on=(), notes="", priority=0, critical_path=0, owner=None,
    )  # fmt: skip


def test_the_cost_forecast_is_the_mean_finished_cost_per_category_less_what_each_has_spent() -> None:
    features = [
        view(1, Status.PASSING, 1.0),
        view(2, Status.FAILED, 3.5),  # failed after its attempts: it cost that much too
        view(3, Status.PASSING, 1.5),
        view(4, Status.PASSING, 10.0, "frontend"),  # one frontend sample: too few to use alone
        view(5, Status.FAILED, 0.0, attempts=0),  # never ran: says nothing of cost
        view(6, Status.PENDING, 0.0),  # backend mean 2.0
        view(7, Status.CLAIMED, 0.5),  # in flight: 2.0 - 0.5
        view(8, Status.PENDING, 2.5, attempts=1),  # retried, already over the mean: nothing more
        view(9, Status.BLOCKED, 0.0, "frontend", attempts=0),  # the overall mean: 4.0
        view(10, Status.NEEDS_INPUT, 0.0, "docs", attempts=0),  # no docs history: overall
    ]
    forecast = estimates.forecast_cost(features)
    assert forecast.samples == 4
    assert forecast.unfinished == 5
    assert forecast.usd == pytest.approx(2.0 + 1.5 + 0.0 + 4.0 + 4.0)
    assert forecast.to_json() == {"forecast_usd": 11.5, "unfinished": 5, "finished_samples": 4}


def test_there_is_no_cost_forecast_before_enough_features_have_finished() -> None:
    features = [view(1, Status.PASSING, 1.0), view(2, Status.PASSING, 1.0), view(3, Status.PENDING, 0.0)]
    forecast = estimates.forecast_cost(features)
    assert forecast.usd is None
    assert (forecast.unfinished, forecast.samples) == (1, 2)
    assert estimates.forecast_cost([*features, view(4, Status.FAILED, 4.0)]).usd == pytest.approx(2.0)
