"""The board as every open page shares it: read and rendered once per change, sent as a delta.

A change makes each open page ask for the board again. Reading 1,000 features and rendering
1,000 rows is the dashboard's main cost (and, beside a supervisor, the only CPU it takes from
it), so a snapshot is taken at most once per change (and once per ``FRESH_S`` while sessions
run, for their activity and elapsed time), whatever the number of pages; a row is rendered
again only when what it shows changed; and a page that holds version V of the table is sent
only the rows that differ from V (the last ``KEEP`` versions are remembered; older ones, or a
change in the set of features, get the whole table).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from api.records import Status
from supervisor.dashboard import rendering
from supervisor.dashboard.data import Board, Row
from supervisor.dashboard.rendering import PageContext

FRESH_S = 1.0  # a snapshot serves every request of its change for this long
KEEP = 64  # versions whose rows are remembered for deltas
ROW_CACHE = 4096  # rendered rows kept (cleared when full)


@dataclass(frozen=True)
class Snapshot:
    version: int  # grows with every snapshot; a page sends back the one it has
    generation: int  # the change counter it was taken at (app.ChangeHub)
    taken: float  # time.monotonic()
    board: Board
    rows: dict[int, str]  # feature id -> its rendered table row, in table order


class BoardCache:
    """Snapshots of the board; thread-safe (pages are served from worker threads)."""

    def __init__(self, read: Callable[[], Board], ctx: PageContext) -> None:
        self._read = read
        self._ctx = ctx  # the board's forms return to "/": one context for every row
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._history: OrderedDict[int, dict[int, str]] = OrderedDict()
        self._rendered: dict[Row, str] = {}
        self._version = 0

    def snapshot(self, generation: int) -> Snapshot:
        """The board at ``generation``: the latest snapshot if it is of that change and fresh,
        else a new one. Blocks on the database."""
        with self._lock:
            latest = self._latest
            if latest is not None and latest.generation == generation and time.monotonic() - latest.taken < FRESH_S:
                return latest
            board = self._read()
            self._version += 1
            rows = {row.feature.id: self._row(row) for row in board.rows}
            latest = Snapshot(self._version, generation, time.monotonic(), board, rows)
            self._history[latest.version] = rows
            while len(self._history) > KEEP:
                self._history.popitem(last=False)
            self._latest = latest
            return latest

    def changed_since(self, snapshot: Snapshot, version: int) -> list[int] | None:
        """Ids of the rows that differ between ``version`` and ``snapshot``; None when the page
        needs the whole table (a version forgotten or unknown, a feature added)."""
        with self._lock:
            before = self._history.get(version)
        if before is None or before.keys() != snapshot.rows.keys():
            return None
        return [fid for fid, html in snapshot.rows.items() if before[fid] != html]

    def _row(self, row: Row) -> str:
        if row.feature.status == Status.CLAIMED:
            return rendering.table_row(row, self._ctx)  # elapsed time moves: never the same twice
        html = self._rendered.get(row)
        if html is None:
            if len(self._rendered) >= ROW_CACHE:
                self._rendered.clear()
            html = self._rendered[row] = rendering.table_row(row, self._ctx)
        return html
