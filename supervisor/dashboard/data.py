"""What the dashboard shows, read through FeatureQueue's verbs into frozen snapshots.

Every function here blocks on the database: the app calls them from worker threads. Nothing
here escapes text; the templates do (rendering.py), so a snapshot holds agent text as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from api.estimates import CostForecast, forecast_cost
from api.queue import FeatureQueue
from api.records import (
    FeatureContext,
    FeatureView,
    PermissionRecord,
    QuestionRecord,
    RunRecord,
    Status,
)
from supervisor.display import transcript_line
from supervisor.transcripts import last_entries, read_entries

MAX_TRANSCRIPT_ENTRIES = 2_000  # the newest ones; `agent-manager logs ID` prints them all
MAX_ENTRY_CHARS = 20_000
MAX_TRANSCRIPT_BYTES = 4 * 2**20


@dataclass(frozen=True)
class LiveRun:
    """What only a supervisor in this process knows: each session's activity, by feature id,
    and what this run has spent."""

    doing: dict[int, str]
    spent_usd: float


class RunLink(Protocol):
    """A supervisor running beside the dashboard (serve --dashboard); None when it is elsewhere."""

    budget_usd: float | None

    def snapshot(self) -> LiveRun | None: ...


@dataclass(frozen=True)
class Row:
    """One feature in the table."""

    feature: FeatureView
    seconds: float  # its finished attempts' wall time
    running_since: float | None  # Unix time the attempt in flight started, if one is
    activity: str


@dataclass(frozen=True)
class Board:
    """The whole queue at one moment: the table, the counts, the money and the open requests."""

    rows: tuple[Row, ...]
    counts: dict[str, int]
    cost_by_model: dict[str, float]
    spent_usd: float
    spend_scope: str  # what ``spent_usd`` covers: this run, or every attempt in the queue
    budget_usd: float | None
    questions: tuple[QuestionRecord, ...]
    permissions: tuple[PermissionRecord, ...]
    graph_key: str  # changes when features or dependencies do, not when statuses do
    forecast: CostForecast | None = None  # what the unfinished features should still cost (an estimate)

    @property
    def total(self) -> int:
        return len(self.rows)

    @property
    def finished(self) -> int:
        return self.counts.get(Status.PASSING, 0) + self.counts.get(Status.FAILED, 0)

    @property
    def running(self) -> int:
        return self.counts.get(Status.CLAIMED, 0)

    @property
    def people_key(self) -> str:
        """Changes when a question or a permission request opens or closes: the page keeps a
        half-typed answer until then."""
        return ",".join(f"q{q.id}" for q in self.questions) + "|" + ",".join(f"p{p.id}" for p in self.permissions)


@dataclass(frozen=True)
class TranscriptLine:
    kind: str  # prompt, assistant, tool, result, end, note, raw: the page styles each
    text: str


@dataclass(frozen=True)
class FeaturePage:
    """One feature with its attempts, its people's requests and one attempt's transcript."""

    feature: FeatureView
    context: FeatureContext
    runs: tuple[RunRecord, ...]
    questions: tuple[QuestionRecord, ...]
    permissions: tuple[PermissionRecord, ...]
    attempt: RunRecord | None  # the one whose transcript is shown
    transcript: tuple[TranscriptLine, ...] = ()
    transcript_note: str = ""  # why it is missing or cut
    activity: str = ""
    running_since: float | None = None

    @property
    def open_question(self) -> QuestionRecord | None:
        return next((q for q in reversed(self.questions) if q.answered_at is None), None)

    @property
    def open_permissions(self) -> tuple[PermissionRecord, ...]:
        return tuple(p for p in self.permissions if p.decision == "open")

    @property
    def people_key(self) -> str:
        """Changes when a request opens or closes, or the feature starts or stops running (its
        nudge box comes and goes): the page keeps a half-typed answer or message until then."""
        q = self.open_question
        running = "r" if self.feature.status == Status.CLAIMED else ""
        return f"{running}q{q.id if q else ''}|" + ",".join(f"p{p.id}" for p in self.open_permissions)


def read_board(queue: FeatureQueue, link: RunLink | None = None, budget_usd: float | None = None) -> Board:
    """The queue now. ``link``: the supervisor of this process, for live activity and its spend."""
    report = queue.status_report()
    totals = queue.run_totals()
    live = link.snapshot() if link is not None else None
    questions = tuple(queue.questions())
    permissions = tuple(queue.permissions())
    waiting = {p.feature_id: p for p in permissions}
    rows = []
    for f in report.features:
        t = totals.by_feature.get(f.id)
        running = f.status == Status.CLAIMED and t is not None and t.running_since is not None
        activity = _activity(f, t.transcript_path if t else None, live, waiting.get(f.id)) if running else ""
        if not running:
            activity = _settled(f, waiting.get(f.id))
        rows.append(
            Row(
                feature=f,
                seconds=t.seconds if t else 0.0,
                running_since=_unix(t.running_since) if running and t and t.running_since else None,
                activity=activity,
            )
        )
    spent = sum(totals.cost_by_model.values())
    scope = "all attempts in the queue"
    if live is not None:
        spent, scope = live.spent_usd, "this run"
    budget = link.budget_usd if link is not None else budget_usd
    graph_key = str(hash(tuple((f.id, f.depends_on) for f in report.features)))
    return Board(
        rows=tuple(rows),
        counts=report.counts,
        cost_by_model=dict(sorted(totals.cost_by_model.items())),
        spent_usd=spent,
        spend_scope=scope,
        budget_usd=budget,
        questions=questions,
        permissions=permissions,
        graph_key=graph_key,
        forecast=forecast_cost(report.features),
    )


def read_feature(
    queue: FeatureQueue, feature_id: int, attempt: int | None = None, link: RunLink | None = None
) -> FeaturePage:
    """One feature's page. Raises NotFoundError for an unknown id, InputError for an unknown attempt."""
    from api.errors import InputError

    context = queue.feature_context(feature_id)
    view = next(f for f in queue.status_report().features if f.id == feature_id)
    runs = tuple(queue.runs(feature_id))
    questions = tuple(queue.questions(open_only=False, feature_id=feature_id))
    permissions = tuple(queue.permissions(open_only=False, feature_id=feature_id))
    chosen = runs[-1] if runs and attempt is None else next((r for r in runs if r.attempt == attempt), None)
    if attempt is not None and chosen is None:
        raise InputError(f"feature #{feature_id} has no attempt {attempt}; it has {len(runs)}")
    lines, note = _transcript(chosen)
    running = runs[-1] if runs and runs[-1].ended_at is None and view.status == Status.CLAIMED else None
    waiting = next((p for p in permissions if p.decision == "open"), None)
    activity = _settled(view, waiting)
    if running is not None:
        live = link.snapshot() if link is not None else None
        activity = _activity(view, running.transcript_path, live, waiting)
    return FeaturePage(
        feature=view,
        context=context,
        runs=runs,
        questions=questions,
        permissions=permissions,
        attempt=chosen,
        transcript=lines,
        transcript_note=note,
        activity=activity,
        running_since=_unix(running.started_at) if running is not None else None,
    )


def _unix(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


def _activity(
    feature: FeatureView, transcript: str | None, live: LiveRun | None, waiting: PermissionRecord | None
) -> str:
    """What a running feature's agent is doing: the supervisor's own word when it runs here,
    else the last entry of its transcript (readable on the supervisor's host only)."""
    if waiting is not None:
        return f"waiting for permission: {waiting.summary}"
    if live is not None and feature.id in live.doing:
        return live.doing[feature.id]
    if transcript:
        return transcript_activity(Path(transcript))
    return "running"


def _settled(feature: FeatureView, waiting: PermissionRecord | None) -> str:
    if feature.status == Status.NEEDS_INPUT:
        return "waiting for an answer"
    if waiting is not None:
        return f"waiting for permission: {waiting.summary}"
    if feature.status in (Status.FAILED, Status.BLOCKED) and feature.notes:
        return feature.notes.strip().splitlines()[0][:200]
    return ""


def transcript_activity(path: Path) -> str:
    """A running session's activity as its transcript's newest entries show it."""
    for entry in reversed(last_entries(path)):
        kind, data = entry.get("type"), entry.get("data")
        if kind == "AssistantMessage" and isinstance(data, dict):
            blocks = [b for b in data.get("content") or [] if isinstance(b, dict)]
            tools = [str(b["name"]) for b in blocks if "name" in b]
            return f"running {tools[-1]}" if tools else "thinking"
        if kind == "UserMessage":
            return "thinking"
        if kind == "ResultMessage":
            return "turn finished"
        if kind in ("prompt", "reminder", "nudge"):
            return "starting a turn"
    return "starting"


def _transcript(run: RunRecord | None) -> tuple[tuple[TranscriptLine, ...], str]:
    if run is None:
        return (), "no agent has run on it yet"
    if not run.transcript_path:
        return (), f"attempt {run.attempt} has no transcript"
    path = Path(run.transcript_path)
    whole = f"agent-manager logs {run.feature_id} --attempt {run.attempt}"
    try:
        # A long session's file can run to many megabytes: a page refreshed while it runs reads its end only.
        large = path.stat().st_size > MAX_TRANSCRIPT_BYTES
        entries = last_entries(path, MAX_TRANSCRIPT_BYTES) if large else list(read_entries(path))
    except OSError as exc:
        # A supervisor on another host keeps its transcripts there.
        return (), f"the transcript {path} cannot be read here ({exc.strerror or exc})"
    lines = [line for line in map(_line, entries) if line is not None]
    shown = tuple(lines[-MAX_TRANSCRIPT_ENTRIES:])
    if large:
        return shown, f"only its last {len(shown)} entries are shown: {whole}"
    if len(shown) < len(lines):
        return shown, f"the first {len(lines) - len(shown)} entries are not shown: {whole}"
    return shown, ""


_KINDS = {
    "prompt": "prompt",
    "reminder": "prompt",
    "nudge": "prompt",
    "permission": "note",
    "UserMessage": "result",
    "ResultMessage": "end",
}


def _line(entry: dict[str, Any] | str) -> TranscriptLine | None:
    if isinstance(entry, str):
        return TranscriptLine("raw", entry[:MAX_ENTRY_CHARS]) if entry.strip() else None
    try:
        text = transcript_line(entry)
    except (AttributeError, TypeError, ValueError):  # an entry of an unexpected shape: show it raw
        text = str(entry)
    if not text:
        return None
    kind = str(entry.get("type"))
    if kind == "AssistantMessage":
        kind = "assistant" if text.startswith("assistant:") else "tool"
    return TranscriptLine(_KINDS.get(kind, kind if kind in ("assistant", "tool") else "note"), text[:MAX_ENTRY_CHARS])
