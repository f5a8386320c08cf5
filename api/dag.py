"""The feature dependency graph (networkx): validation, ready and blocked sets, claim order.

Edges point from a dependency to the feature that needs it, so a node's ancestors are
everything it waits for and its descendants are everything it unblocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import networkx as nx
# networkx is imported where a graph is built: reading commands (status, logs) never need one,
# and the import alone cost them 0.15 s of start-up.

PRIORITY_LIMIT = 1_000_000
_PATH_WEIGHT = 10 * PRIORITY_LIMIT  # critical path dominates, priority breaks ties

Node = TypeVar("Node", int, str)  # feature ids in the queue, names in a features file


def build_graph(dependencies: Mapping[Node, Iterable[Node]]) -> nx.DiGraph[Node]:
    """Graph of ``{feature: [dependency, ...]}``; every key becomes a node."""
    import networkx as nx

    graph: nx.DiGraph[Node] = nx.DiGraph()
    graph.add_nodes_from(dependencies)
    for node, deps in dependencies.items():
        graph.add_edges_from((dep, node) for dep in deps)
    return graph


def find_cycle(graph: nx.DiGraph[Node]) -> list[Node] | None:
    """One dependency cycle as a closed path ``[a, b, ..., a]``, or None for a DAG."""
    import networkx as nx

    if nx.is_directed_acyclic_graph(graph):
        return None  # the common case, and far cheaper than find_cycle's search
    try:
        edges: list[tuple[Node, Node]] = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    return [edges[0][0]] + [v for _, v in edges]


def critical_path_lengths(graph: nx.DiGraph[Node]) -> dict[Node, int]:
    """For each node, the number of features on the longest chain that starts at it.

    A node with nothing depending on it has length 1. Claiming by this first keeps the
    longest chain of remaining work moving, which bounds the makespan from below.
    """
    import networkx as nx

    lengths: dict[Node, int] = {}
    for node in reversed(list(nx.topological_sort(graph))):
        lengths[node] = 1 + max((lengths[s] for s in graph.successors(node)), default=0)
    return lengths


def claim_order(critical_path: int, priority: int) -> int:
    """Ascending sort key by chain length in features: longest chain first, then higher priority."""
    return -(critical_path * _PATH_WEIGHT + priority + PRIORITY_LIMIT)


def timed_paths(graph: nx.DiGraph[Node], seconds: Mapping[Node, float]) -> dict[Node, float]:
    """For each node, the estimated seconds of the longest chain of work that starts at it, itself
    included (``seconds`` per node; a finished node weighs 0)."""
    import networkx as nx

    paths: dict[Node, float] = {}
    for node in reversed(list(nx.topological_sort(graph))):
        paths[node] = seconds.get(node, 0.0) + max((paths[s] for s in graph.successors(node)), default=0.0)
    return paths


def timed_order(path_seconds: float, priority: int) -> int:
    """The stored sort key: the longest remaining chain in estimated time first (to the
    millisecond), then higher priority. With equal estimates it ranks as claim_order does."""
    return -(round(path_seconds * 1000) * _PATH_WEIGHT + priority + PRIORITY_LIMIT)


def ready_set(graph: nx.DiGraph[Node], status: Mapping[Node, str]) -> set[Node]:
    """Pending features whose dependencies have all passed."""
    return {
        node
        for node in graph
        if status.get(node) == "pending" and all(status.get(dep) == "passing" for dep in graph.predecessors(node))
    }


def blocked_set(dependencies: Mapping[Node, Iterable[Node]], status: Mapping[Node, str]) -> set[Node]:
    """Unfinished features that can never run because something they depend on failed.

    Takes ``{feature: [dependency, ...]}`` rather than a graph: `status` calls it on every
    feature, and a walk over the dependents is all it needs.
    """
    dependents: dict[Node, list[Node]] = {}
    for node, deps in dependencies.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(node)
    below: set[Node] = set()
    frontier = [node for node in dependencies if status.get(node) == "failed"]
    while frontier:
        for child in dependents.get(frontier.pop(), ()):
            if child not in below:
                below.add(child)
                frontier.append(child)
    return {node for node in below if status.get(node) not in ("passing", "failed")}


def rank(graph: nx.DiGraph[Node], nodes: Iterable[Node], priority: Mapping[Node, int]) -> list[Node]:
    """``nodes`` in claim order (critical path, then priority, then the node key)."""
    lengths = critical_path_lengths(graph)
    return sorted(nodes, key=lambda n: (claim_order(lengths[n], priority.get(n, 0)), n))
