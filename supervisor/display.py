"""Terminal output: rich tables on a TTY, plain lines otherwise."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from api.estimates import CostForecast, forecast_cost
from api.records import FeatureContext, ImportReport, RunRecord, Status, StatusReport

STATUS_STYLE: dict[str, str] = {
    Status.PENDING: "white",
    Status.CLAIMED: "cyan",
    Status.PASSING: "green",
    Status.FAILED: "red",
    Status.BLOCKED: "magenta",
    Status.NEEDS_INPUT: "yellow",
}


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit 1 here; the CLI's top-level handler ends a closed pipe (`logs ID | head`)
        # quietly with 141, as it does for every other write.
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def console() -> Console:
    # Piped output keeps full rows instead of rich's 80-column default.
    return _Console() if sys.stdout.isatty() else _Console(width=200, no_color=True)


_STATUS_COLUMNS = (
    ("id", "right"),
    ("name", "left"),
    ("category", "left"),
    ("status", "left"),
    ("attempts", "right"),
    ("model", "left"),
    ("cost", "right"),
    ("estimate", "right"),  # an attempt's estimated time
    ("path", "right"),  # the estimated time of the longest chain of work that starts here
)
RICH_TABLE_LIMIT = 500  # rich lays out ~1,500 rows a second: past this, plain aligned columns


def print_status(report: StatusReport, worktrees: dict[int, Path] | None = None) -> None:
    out = console()
    if not report.features:
        out.print("no features yet: run `agent-manager import --project-dir DIR`")
        return
    rows: list[tuple[str, ...]] = [
        (
            str(f.id),
            f.name,
            f.category or "-",
            str(f.status),
            str(f.attempts),
            f.model or "-",
            f"${f.cost_usd:.4f}",
            _minutes(f.estimate_seconds),
            _minutes(f.path_seconds),
        )
        for f in report.features
    ]
    if len(rows) > RICH_TABLE_LIMIT:
        _print_plain_table(rows)
    else:
        table = Table(show_lines=False)
        for column, justify in _STATUS_COLUMNS:
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            status = row[3]
            table.add_row(*row[:3], f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]", *row[4:])
        out.print(table)
    out.print("  ".join(f"{status}: {n}" for status, n in sorted(report.counts.items())))
    out.print(cost_line(report), markup=False, highlight=False)
    if worktrees:
        names = {f.id: (f.name, f.status) for f in report.features}
        out.print("worktrees kept (inspect them; `agent-manager clean` removes them):", markup=False)
        for fid, path in sorted(worktrees.items()):
            name, status = names.get(fid, ("?", "unknown"))
            out.print(f"  #{fid} {name} ({status}): {path}", markup=False, highlight=False)


def usd(amount: float) -> str:
    """Dollars as people read them: cents of a larger sum, tenths of a cent of a small one."""
    return f"${amount:.4f}" if amount < 1 else f"${amount:,.2f}"


def forecast_text(forecast: CostForecast) -> str | None:
    """The forecast as `status` and the run summary say it, labelled an estimate; None when there is none."""
    if not forecast.unfinished or forecast.usd is None:
        return None
    return (
        f"the {forecast.unfinished} unfinished should cost about {usd(forecast.usd)} more "
        f"(an estimate from the mean cost of the {forecast.samples} finished, per category)"
    )


def cost_line(report: StatusReport) -> str:
    """What the features have cost, and the forecast for the unfinished ones."""
    line = f"cost so far {usd(sum(f.cost_usd for f in report.features))}"
    forecast = forecast_cost(report.features)
    said = forecast_text(forecast)
    if said is not None:
        return f"{line}; {said}"
    if forecast.unfinished:
        return f"{line}; no forecast for the {forecast.unfinished} unfinished before {forecast.needed} features finish"
    return line


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f}m" if seconds < 5940 else f"{seconds / 3600:.1f}h"


def _print_plain_table(rows: list[tuple[str, ...]]) -> None:
    header = tuple(column for column, _ in _STATUS_COLUMNS)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if justify == "right" else c.ljust(w)
            for c, w, (_, justify) in zip(cells, widths, _STATUS_COLUMNS, strict=True)
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


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


def print_runs(feature: FeatureContext, runs: list[RunRecord]) -> None:
    out = console()
    out.print(f"feature #{feature.id} {feature.name}: {feature.status}, {feature.attempts} failed attempt(s)")
    if feature.notes:
        out.print(f"notes: {feature.notes}")
    if not runs:
        out.print("no agent has run on it yet")
        return
    table = Table()
    commits = any(r.commit_sha for r in runs)
    columns = ("attempt", "model", "outcome", "turns", "tokens in/out", "cost", "started", *(("commit",) * commits))
    for column in (*columns, "error"):
        table.add_column(column)
    for r in runs:
        table.add_row(
            str(r.attempt),
            r.model or "-",
            r.outcome or "running",
            str(r.num_turns or 0),
            f"{r.input_tokens or 0}/{r.output_tokens or 0}",
            f"${r.cost_usd or 0:.4f}",
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            *(((r.commit_sha or "-")[:12],) * commits),
            (r.error or "")[:80],
        )
    out.print(table)


def transcript_line(entry: dict[str, Any]) -> str:
    """A readable line for one transcript entry, or "" for bookkeeping entries."""
    kind, data = entry.get("type"), entry.get("data") or {}
    if kind == "prompt":
        return f"> prompt ({data.get('model')}):\n{data.get('prompt')}"
    if kind == "reminder":
        return f"> reminder {data.get('n')}: feature_release was not called"
    if kind == "nudge":
        return f"> {data.get('text')}"
    if kind == "permission":
        verdict = "allowed" if data.get("allowed") else f"denied ({data.get('reason')})"
        return f"permission for {data.get('tool')}: {verdict}"
    if kind == "AssistantMessage":
        parts = []
        for block in data.get("content") or []:
            if "text" in block and block.get("text"):
                parts.append(f"assistant: {block['text']}")
            elif "name" in block:
                parts.append(f"tool call: {block['name']} {json.dumps(block.get('input'))[:300]}")
        return "\n".join(parts)
    if kind == "UserMessage":
        content = data.get("content")
        if isinstance(content, list):
            results = [b for b in content if "tool_use_id" in b]
            return "\n".join(
                f"tool result{' (error)' if b.get('is_error') else ''}: {str(b.get('content'))[:300]}" for b in results
            )
        return ""
    if kind == "ResultMessage":
        return f"result: {data.get('subtype')}, {data.get('num_turns')} turns, ${data.get('total_cost_usd') or 0:.4f}"
    return ""
