"""The dependency graph as an SVG drawn on the server: one box per feature, coloured by status.

Layers are networkx's topological generations (a feature sits one layer right of its deepest
dependency), left to right; within a layer, features follow the mean position of their
dependencies (one barycentre sweep, which untangles most crossings), and a layer taller than
``COLUMN_ROWS`` wraps into several columns so that a wide queue stays on a screen. The layout
depends on the features and edges only, so it is cached and a status change just recolours.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

from api.records import FeatureView, Status

NODE_W, NODE_H = 160, 24
GAP_X, GAP_Y = 56, 8
MARGIN = 8
COLUMN_ROWS = 30
LABEL_CHARS = 22
STATUS_COLOURS: dict[str, str] = {
    Status.PENDING: "#80868b",
    Status.CLAIMED: "#1a73e8",
    Status.PASSING: "#188038",
    Status.FAILED: "#d93025",
    Status.NEEDS_INPUT: "#e37400",
    Status.BLOCKED: "#9334e6",
}

Shape = tuple[tuple[int, tuple[int, ...]], ...]  # (feature id, its dependencies' ids), by id


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    positions: dict[int, tuple[int, int]]  # feature id -> top-left corner of its box
    edges: tuple[tuple[int, int], ...]  # (dependency, dependent)


def shape_of(features: Sequence[FeatureView]) -> Shape:
    ids = {f.name: f.id for f in features}
    return tuple((f.id, tuple(sorted(ids[d] for d in f.depends_on if d in ids))) for f in features)


@functools.lru_cache(maxsize=4)
def layout(shape: Shape) -> Layout:
    """Positions for every feature of ``shape``: layers left to right, wrapped past COLUMN_ROWS."""
    graph: nx.DiGraph[int] = nx.DiGraph()
    graph.add_nodes_from(fid for fid, _ in shape)
    graph.add_edges_from((dep, fid) for fid, deps in shape for dep in deps)
    try:
        layers = [sorted(layer) for layer in nx.topological_generations(graph)]
    except nx.NetworkXUnfeasible:  # a cycle cannot be imported; draw one column rather than fail
        layers = [sorted(graph.nodes)]
    rank: dict[int, float] = {}
    positions: dict[int, tuple[int, int]] = {}
    x = MARGIN
    rows_used = 0
    for layer in layers:
        ordered = sorted(layer, key=lambda n: (_mean(rank[p] for p in graph.predecessors(n)), n))
        rank.update((node, i) for i, node in enumerate(ordered))
        columns = max(1, math.ceil(len(ordered) / COLUMN_ROWS))
        per_column = math.ceil(len(ordered) / columns)
        for i, node in enumerate(ordered):
            column, row = divmod(i, per_column)
            positions[node] = (x + column * (NODE_W + GAP_X // 2), MARGIN + row * (NODE_H + GAP_Y))
        rows_used = max(rows_used, per_column)
        x += columns * (NODE_W + GAP_X // 2) + GAP_X // 2
    width = max(x - GAP_X + MARGIN, NODE_W + 2 * MARGIN)
    height = max(MARGIN * 2 + rows_used * (NODE_H + GAP_Y) - GAP_Y, NODE_H + 2 * MARGIN)
    return Layout(width, height, positions, tuple(sorted(graph.edges)))


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found) if found else -1.0


def dag_svg(features: Sequence[FeatureView]) -> str:
    """The graph as an inline SVG element; every name and status is escaped."""
    if not features:
        return '<p class="empty">no features yet</p>'
    placed = layout(shape_of(features))
    e = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{placed.width}" height="{placed.height}" '
        f'viewBox="0 0 {placed.width} {placed.height}" role="img" '
        f'aria-label="dependency graph of {len(features)} features">',
        '<g class="edges">',
    ]
    for dep, fid in placed.edges:
        (x1, y1), (x2, y2) = placed.positions[dep], placed.positions[fid]
        sx, sy, tx, ty = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
        bend = max(20.0, (tx - sx) / 2)
        out.append(
            f'<path d="M{sx:.0f},{sy:.0f} C{sx + bend:.0f},{sy:.0f} {tx - bend:.0f},{ty:.0f} {tx:.0f},{ty:.0f}"/>'
        )
    out.append("</g>")
    for f in features:
        x, y = placed.positions[f.id]
        status = str(f.status)
        colour = STATUS_COLOURS.get(status, "#80868b")
        label = f.name if len(f.name) <= LABEL_CHARS else f.name[: LABEL_CHARS - 1] + "\u2026"
        out.append(
            f'<a href="/feature/{f.id}"><g class="node s-{e(status)}" id="node-{f.id}" data-status="{e(status)}">'
            f"<title>#{f.id} {e(f.name)}: {e(status)}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="4" fill="{colour}"/>'
            f'<text x="{x + 6}" y="{y + NODE_H / 2 + 4:.0f}">#{f.id} {e(label)}</text></g></a>'
        )
    out.append("</svg>")
    return "".join(out)
