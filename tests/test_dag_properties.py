"""Property tests: api.dag against brute-force definitions, and the real queue against api.dag."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from api import dag
from api.database import Database
from api.features_file import FeatureSpec
from api.models import Feature
from api.queue import FeatureQueue

STATUSES = ("pending", "claimed", "passing", "failed", "needs_input")
UNFINISHED_EXCLUDES = ("passing", "failed")


@dataclass(frozen=True)
class Dag:
    """Nodes 0..n-1; ``deps[j]`` holds only indexes below j, so it is acyclic by construction."""

    deps: dict[int, tuple[int, ...]]

    @property
    def nodes(self) -> list[int]:
        return sorted(self.deps)

    def graph(self):
        return dag.build_graph(self.deps)

    def dependents(self, node: int) -> list[int]:
        return [j for j, ds in self.deps.items() if node in ds]

    def descendants(self, node: int) -> set[int]:
        seen: set[int] = set()
        stack = self.dependents(node)
        while stack:
            j = stack.pop()
            if j not in seen:
                seen.add(j)
                stack.extend(self.dependents(j))
        return seen


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 30, max_deps: int = 5) -> Dag:
    n = draw(st.integers(1, max_nodes))
    deps = {}
    for j in range(n):
        chosen = draw(st.sets(st.integers(0, j - 1), max_size=min(j, max_deps))) if j else set()
        deps[j] = tuple(sorted(chosen))
    return Dag(deps)


@st.composite
def dags_with_statuses(draw: st.DrawFn) -> tuple[Dag, dict[int, str]]:
    g = draw(dags())
    return g, {node: draw(st.sampled_from(STATUSES)) for node in g.nodes}


def brute_longest_chain(g: Dag) -> dict[int, int]:
    """Relax every edge until nothing changes: no topological order, no networkx."""
    length = dict.fromkeys(g.nodes, 1)
    changed = True
    while changed:
        changed = False
        for node, deps in g.deps.items():
            for dep in deps:
                if length[node] + 1 > length[dep]:
                    length[dep] = length[node] + 1
                    changed = True
    return length


# -- api.dag against its definitions ---------------------------------------------------------


@given(dags_with_statuses())
def test_ready_set_is_exactly_the_pending_features_whose_dependencies_all_pass(case) -> None:
    g, status = case
    ready = dag.ready_set(g.graph(), status)
    for node in ready:
        assert status[node] == "pending"
        assert all(status[d] == "passing" for d in g.deps[node]), (node, g.deps[node])
    expected = {n for n in g.nodes if status[n] == "pending" and all(status[d] == "passing" for d in g.deps[n])}
    assert ready == expected


@given(dags_with_statuses())
def test_blocked_set_is_exactly_the_unfinished_descendants_of_failed_features(case) -> None:
    g, status = case
    below = set().union(*(g.descendants(n) for n in g.nodes if status[n] == "failed"))
    expected = {n for n in below if status[n] not in UNFINISHED_EXCLUDES}
    assert dag.blocked_set(g.deps, status) == expected


@given(dags())
def test_critical_path_length_is_the_longest_chain_starting_at_each_feature(g: Dag) -> None:
    assert dag.critical_path_lengths(g.graph()) == brute_longest_chain(g)


@given(dags(), st.data())
def test_rank_orders_by_critical_path_then_priority_then_key(g: Dag, data: st.DataObject) -> None:
    nodes = data.draw(st.sets(st.sampled_from(g.nodes)))
    limit = dag.PRIORITY_LIMIT
    priority_value = st.one_of(st.integers(-3, 3), st.sampled_from([-limit, limit]), st.integers(-limit, limit))
    priority = data.draw(st.dictionaries(st.sampled_from(g.nodes), priority_value))
    lengths = brute_longest_chain(g)
    ranked = dag.rank(g.graph(), nodes, priority)
    assert sorted(ranked) == sorted(nodes)
    keys = [(-lengths[n], -priority.get(n, 0), n) for n in ranked]
    assert keys == sorted(keys)


@given(dags())
def test_find_cycle_finds_nothing_on_a_dag(g: Dag) -> None:
    assert dag.find_cycle(g.graph()) is None


@given(dags(), st.data())
def test_find_cycle_finds_the_cycle_a_back_edge_closes(g: Dag, data: st.DataObject) -> None:
    late = data.draw(st.sampled_from(g.nodes))
    ancestors = [n for n in g.nodes if late in g.descendants(n)]
    early = data.draw(st.sampled_from([late, *ancestors]))  # late itself: a self-dependency
    deps = dict(g.deps)
    deps[early] = (*deps[early], late)  # early now waits for late, which waits for early
    graph = dag.build_graph(deps)
    cycle = dag.find_cycle(graph)
    assert cycle is not None
    assert len(cycle) >= 2 and cycle[0] == cycle[-1]
    assert all(graph.has_edge(a, b) for a, b in pairwise(cycle)), cycle
    assert len(set(cycle[:-1])) == len(cycle) - 1, f"not a simple cycle: {cycle}"


# -- the real queue against api.dag ------------------------------------------------------------


def name(i: int) -> str:
    return f"n{i:02d}"


@pytest.fixture(scope="module")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated empty database file; each example copies it (alembic per example is slow)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.dispose()
    return path


@pytest.fixture
def fresh_queue(migrated_sqlite: Path):
    @contextlib.contextmanager
    def make() -> Iterator[FeatureQueue]:
        with tempfile.TemporaryDirectory(prefix="dagprop-") as tmp:
            path = Path(tmp) / "queue.db"
            shutil.copyfile(migrated_sqlite, path)
            db = Database(f"sqlite:///{path}")
            try:
                yield FeatureQueue(db, lease_seconds=600, default_max_attempts=1)
            finally:
                db.dispose()

    return make


def stored_status(queue: FeatureQueue) -> dict[str, str]:
    return dict(queue.db.run(lambda s: s.execute(select(Feature.name, Feature.status)).all(), read_only=True))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags(max_nodes=15, max_deps=3), st.data())
def test_queue_claims_only_ready_features_and_reports_blocked_like_the_dag(
    fresh_queue, g: Dag, data: st.DataObject
) -> None:
    priorities = {n: data.draw(st.integers(-2, 2)) for n in g.nodes}
    specs = [
        FeatureSpec(name=name(n), priority=priorities[n], depends_on=tuple(name(d) for d in g.deps[n]), max_attempts=1)
        for n in g.nodes
    ]
    deps_by_name = {name(n): [name(d) for d in g.deps[n]] for n in g.nodes}
    graph = dag.build_graph(deps_by_name)
    priority_by_name = {name(n): p for n, p in priorities.items()}
    with fresh_queue() as queue:
        queue.import_specs(specs)
        for _ in range(len(specs) + 1):
            before = stored_status(queue)
            claimed = queue.claim(1, "prop")
            if not claimed:
                assert dag.ready_set(graph, before) == set(), "ready work left unclaimed"
                break
            (feature,) = claimed
            assert before[feature.name] == "pending"
            assert all(before[d] == "passing" for d in graph.predecessors(feature.name)), feature.name
            assert feature.name == dag.rank(graph, dag.ready_set(graph, before), priority_by_name)[0]

            outcome = data.draw(st.sampled_from(["passing", "failed"]), label=f"outcome of {feature.name}")
            result = queue.release(feature.id, "prop", feature.lease_token, outcome)
            assert result.applied and result.status == outcome  # max_attempts=1: a failure is final

            after = stored_status(queue)
            reported = {f.name for f in queue.status_report().features if f.status == "blocked"}
            assert reported == dag.blocked_set(deps_by_name, after)
        else:
            pytest.fail("the queue handed out more claims than there are features")
        final = stored_status(queue)
        assert set(final.values()) <= {"passing", "failed", "pending"}
        assert {n for n, s in final.items() if s == "pending"} == dag.blocked_set(deps_by_name, final)
