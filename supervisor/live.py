"""What a run shows while it works: a rich live table on a TTY, one log line per event otherwise."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from api.records import Status
from supervisor.display import STATUS_STYLE, console, forecast_text, usd
from supervisor.runner import ActivityEvent

if TYPE_CHECKING:
    from supervisor.view import AgentState, RunState, RunSummary

STALE_AFTER_S = 120.0  # no activity for this long is shown as "quiet"


class PlainView:
    """One line per event, for logs and pipes. A ``supervisor.view.SupervisorView``."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def _line(self, text: str) -> None:
        self.out.write(f"{datetime.now():%H:%M:%S} {text}\n")
        self.out.flush()

    def start(self, run: RunState) -> None:
        opts = run.settings
        self._line(f"supervisor {run.owner}: up to {opts.max_agents} agent(s) on {opts.project_dir}")

    def started(self, state: AgentState) -> None:
        c = state.claim
        self._line(f"#{c.id} {c.name}: started ({state.model}, attempt {state.attempt})")

    def activity(self, state: AgentState, event: ActivityEvent) -> None:
        if event.kind in ("waiting_lock", "rate_limit", "verify", "api_retry"):
            why = f": {event.detail}" if event.kind == "waiting_lock" and event.detail else ""
            self._line(f"#{state.claim.id} {state.claim.name}: {state.doing}{why}")

    def finished(self, state: AgentState, status: str, notes: str) -> None:
        c = state.claim
        took = time.monotonic() - state.started
        first = (notes or "").strip().splitlines()[0][:160] if (notes or "").strip() else ""
        self._line(
            f"#{c.id} {c.name}: {status} after {took:.1f} s, {state.turns} turns, ${state.cost_usd:.4f}"
            + (f" - {first}" if first else "")
        )

    def paused(self, seconds: float, reason: str) -> None:
        self._line(f"pausing new claims for {seconds:.0f} s: {reason}")

    def note(self, text: str) -> None:
        self._line(text)

    def stop(self, summary: RunSummary) -> None:
        for line in summary_lines(summary):
            self.out.write(line + "\n")
        self.out.flush()


class LiveView(PlainView):
    """A live table of running agents and an overall progress bar (TTY only)."""

    def __init__(self) -> None:
        super().__init__()
        self.console = console()
        self.run: RunState | None = None
        self.live: Live | None = None
        self.done = 0
        self.total = 0
        self.notes: list[str] = []
        self.pause_text = ""

    def _line(self, text: str) -> None:
        self.notes = ([*self.notes, f"{datetime.now():%H:%M:%S} {text}"])[-6:]

    def start(self, run: RunState) -> None:
        self.run = run
        report = run.status_report()
        self.total = len(report.features)
        self.done = sum(1 for f in report.features if f.status.finished)
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def finished(self, state: AgentState, status: str, notes: str) -> None:
        if status in (Status.PASSING, Status.FAILED):
            self.done += 1
        super().finished(state, status, notes)

    def paused(self, seconds: float, reason: str) -> None:
        self.pause_text = f"paused until {datetime.fromtimestamp(time.time() + seconds):%H:%M:%S}: {reason}"
        super().paused(seconds, reason)

    def _render(self) -> Group:
        table = Table(expand=True)
        for column in ("feature", "model", "elapsed", "turns", "cost", "doing"):
            table.add_column(column)
        now = time.monotonic()
        run = self.run
        for state in list(run.agents.values()) if run else []:
            quiet = now - state.last_activity > STALE_AFTER_S
            table.add_row(
                f"#{state.claim.id} {state.claim.name}",
                state.model,
                f"{now - state.started:.0f} s",
                str(state.turns),
                cost_cell(state),
                Text("quiet (no message for a while)", style="yellow") if quiet else Text(state.doing),
            )
        bar = ProgressBar(total=max(self.total, 1), completed=self.done, width=40)
        header = Text(f" {self.done}/{self.total} features finished ")
        if run is not None and run.limit < run.settings.max_agents:
            header.append(f"  agents limited to {run.limit}/{run.settings.max_agents} by rate limits", style="yellow")
        parts: list[RenderableType] = [table, Group(header, bar)]
        if self.pause_text and run is not None and run.paused_until > now:
            parts.append(Text(self.pause_text, style="yellow"))
        parts += [Text(n, style="dim") for n in self.notes]
        return Group(*parts)

    def stop(self, summary: RunSummary) -> None:
        if self.live is not None:
            self.live.stop()
        for line in summary_lines(summary):
            style = STATUS_STYLE.get(line.split(":")[0].strip(), None)
            self.console.print(line, style=style, highlight=False)


def cost_cell(state: AgentState) -> str:
    """The session's cost so far; "~" marks an estimate (a turn in flight, priced until the CLI states it)."""
    return f"${state.cost_usd:.4f}" if state.cost_estimate is None else f"~${state.cost_estimate:.4f}"


def make_view() -> PlainView:
    return LiveView() if sys.stdout.isatty() else PlainView()


def summary_lines(summary: RunSummary) -> list[str]:
    counts = summary.counts
    lines = ["", "summary:"]
    always = (Status.PASSING, Status.FAILED, Status.BLOCKED)
    shown = [k for k in (*always, Status.NEEDS_INPUT, Status.PENDING, Status.CLAIMED) if counts.get(k) or k in always]
    lines.append("  " + ", ".join(f"{k}: {counts.get(k, 0)}" for k in shown))
    speedup = summary.agent_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    lines.append(
        f"  wall time {summary.wall_seconds:.1f} s, agent time {summary.agent_seconds:.1f} s "
        f"(parallel speedup {speedup:.2f}x), {summary.sessions} session(s)"
    )
    for model, cost in sorted(summary.cost_by_model.items()):
        tin, tout = summary.tokens_by_model.get(model, (0, 0))
        if not (cost or tin or tout):
            continue  # sessions stopped before the API answered
        lines.append(f"  {model}: ${cost:.4f}, {tin} input / {tout} output tokens")
    total = sum(summary.cost_by_model.values())
    lines.append(f"  cost ${total:.4f}" + (f" of a {usd(summary.budget_usd)} budget" if summary.budget_usd else ""))
    forecast = forecast_text(summary.forecast) if summary.forecast is not None else None
    if forecast is not None:
        lines.append(f"  {forecast}")
    if summary.lock_wait_seconds:
        lines.append(f"  lock waits: {summary.lock_wait_seconds:.1f} agent-seconds refused a file another agent held")
    if counts.get(Status.NEEDS_INPUT):
        lines.append(f"  {counts[Status.NEEDS_INPUT]} feature(s) wait for an answer: agent-manager questions")
    if summary.git:
        lines.append(f"  git: {summary.git}")
    if summary.stop_reason:
        lines.append(f"  stopped: {summary.stop_reason}")
    return lines
