"""HTML from snapshots: Jinja2 templates shipped in the package, autoescaped.

Every value a template prints is escaped unless it is marked safe, and only the server's own SVG
is: feature names, notes, questions and transcripts are agent text, which is untrusted HTML.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from api.records import Status
from supervisor.dashboard.data import Board, FeaturePage, Row
from supervisor.dashboard.svg import STATUS_COLOURS, dag_svg
from supervisor.display import usd

if TYPE_CHECKING:
    from supervisor.dashboard.board import Snapshot

TEMPLATES = Path(__file__).resolve().parent / "templates"
# The order counts and the progress bar show statuses in: done first, then what is moving.
STATUS_ORDER = (
    Status.PASSING,
    Status.FAILED,
    Status.CLAIMED,
    Status.NEEDS_INPUT,
    Status.PENDING,
    Status.BLOCKED,
)


@dataclass(frozen=True)
class PageContext:
    """What every page carries besides its data: the form token and a message from the last action."""

    project: str
    csrf: str
    path: str  # this page's path and query, where a form's action returns to
    notice: str = ""
    error: str = ""


@dataclass(frozen=True)
class Segment:
    status: str
    colour: str
    x: float
    width: float
    count: int


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=duration, money=money, when=when)
    env.globals.update(STATUS_ORDER=STATUS_ORDER, STATUS_COLOURS=STATUS_COLOURS, segments=segments)
    return env


def render(template: str, **values: Any) -> str:
    # ``now``: the Unix time elapsed cells count from (the page's script keeps counting).
    return environment().get_template(template).render(now=time.time(), **values)


def board_page(snapshot: Snapshot, ctx: PageContext) -> str:
    board = snapshot.board
    rows = [Markup(html) for html in snapshot.rows.values()]
    svg = Markup(dag_svg([r.feature for r in board.rows]))
    return render("board.html", board=board, ctx=ctx, rows=rows, version=snapshot.version, delta=False, dag=svg)


def board_live(snapshot: Snapshot, ctx: PageContext, changed: list[int] | None = None) -> str:
    """The live sections of the board; with ``changed``, only those rows of the table."""
    ids = snapshot.rows.keys() if changed is None else changed
    rows = [Markup(snapshot.rows[fid]) for fid in ids]
    return render(
        "board_live.html", board=snapshot.board, ctx=ctx, rows=rows, version=snapshot.version, delta=changed is not None
    )


def table_row(row: Row, ctx: PageContext) -> str:
    return render("row.html", row=row, ctx=ctx)


def dag(board: Board) -> str:
    return dag_svg([r.feature for r in board.rows])


def feature_page(page: FeaturePage, ctx: PageContext) -> str:
    return render("feature.html", page=page, ctx=ctx)


def feature_live(page: FeaturePage, ctx: PageContext) -> str:
    return render("feature_live.html", page=page, ctx=ctx)


def message(ctx: PageContext, title: str, text: str) -> str:
    return render("message.html", ctx=ctx, title=title, text=text)


def segments(counts: dict[str, int], total: int, width: float = 1000.0) -> list[Segment]:
    """The progress bar's stretches, one per status present, in STATUS_ORDER."""
    out: list[Segment] = []
    x = 0.0
    for status in STATUS_ORDER:
        n = counts.get(status, 0)
        if n and total:
            w = width * n / total
            out.append(Segment(str(status), STATUS_COLOURS[status], x, w, n))
            x += w
    return out


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def money(amount: float | None) -> str:
    return "-" if amount is None else usd(amount)


def when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"
