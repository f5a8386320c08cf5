"""Terminal output: rich tables on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from api.queue import ImportReport, StatusReport

STATUS_STYLE = {
    "pending": "white",
    "claimed": "cyan",
    "passing": "green",
    "failed": "red",
    "blocked": "magenta",
    "needs_input": "yellow",
}


def console() -> Console:
    # Piped output keeps full rows instead of rich's 80-column default.
    return Console() if sys.stdout.isatty() else Console(width=200, no_color=True)


def print_status(report: StatusReport) -> None:
    out = console()
    if not report.features:
        out.print("no features yet: run `agent-manager import --project-dir DIR`")
        return
    table = Table(show_lines=False)
    for column, justify in (("id", "right"), ("name", "left"), ("category", "left"), ("status", "left"),
                            ("attempts", "right"), ("model", "left"), ("cost", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for f in report.features:
        table.add_row(
            str(f.id), f.name, f.category or "-", f"[{STATUS_STYLE.get(f.status, 'white')}]{f.status}[/]",
            str(f.attempts), f.model or "-", f"${f.cost_usd:.4f}",
        )
    out.print(table)
    out.print("  ".join(f"{status}: {n}" for status, n in sorted(report.counts.items())))


def print_import(report: ImportReport, source: Path) -> None:
    out = console()
    out.print(
        f"imported {source}: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged"
    )
    if report.skipped:
        out.print(f"not updated (already claimed or finished): {', '.join(report.skipped)}")
    if report.kept:
        out.print(f"kept (in the database, not in the file): {', '.join(report.kept)}")
