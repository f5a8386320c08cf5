"""Typed records that leave ``api/``: statuses, claims, verdicts, runs, reports.

The supervisor, the MCP server and the CLI speak these, never bare strings or dicts.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from api.errors import InputError


class Status(enum.StrEnum):
    """A feature's status. Every one but ``BLOCKED`` is stored; ``BLOCKED`` is derived (pending
    with a dependency that is not passing) and only shown."""

    PENDING = "pending"
    CLAIMED = "claimed"
    PASSING = "passing"
    FAILED = "failed"
    NEEDS_INPUT = "needs_input"
    BLOCKED = "blocked"

    @property
    def finished(self) -> bool:
        return self in (Status.PASSING, Status.FAILED)


@dataclass(frozen=True)
class Verdict:
    """How an attempt ends, as ``FeatureQueue.release`` and ``finish_attempt`` take it.

    ``PASSING``; ``FAILED`` (an attempt: back to pending until the attempt limit, then failed);
    ``PENDING`` (given back); ``NEEDS_INPUT`` (the agent asked a question: no attempt is used,
    the feature waits for an answer). ``count_attempt=False`` records an infrastructure failure without
    using an attempt; ``give_up=True`` makes a failed attempt final (its budget is spent).
    """

    status: Status
    notes: str = ""
    cost_usd: float = 0.0
    model: str | None = None
    count_attempt: bool = True
    give_up: bool = False

    def __post_init__(self) -> None:
        if self.status not in (Status.PASSING, Status.FAILED, Status.PENDING, Status.NEEDS_INPUT):
            raise InputError(f"invalid status {str(self.status)!r}: use passing, failed or pending")
        object.__setattr__(self, "status", Status(self.status))


@dataclass(frozen=True)
class DependencyNote:
    id: int
    name: str
    status: Status
    notes: str


@dataclass(frozen=True)
class FeatureContext:
    """A feature's assignment as an agent reads it, with its dependencies' notes."""

    id: int
    name: str
    description: str
    category: str
    steps: tuple[str, ...]
    verify: str | None
    status: Status
    attempts: int
    notes: str
    dependencies: tuple[DependencyNote, ...] = field(default=())


@dataclass(frozen=True)
class ClaimedFeature:
    """A feature this caller now holds; ``lease_token`` must accompany its release."""

    id: int
    name: str
    description: str
    category: str
    priority: int
    steps: tuple[str, ...]
    verify: str | None
    model: str | None
    max_attempts: int | None
    attempts: int
    notes: str
    owner: str
    agent_id: str
    lease_token: int
    lease_expires_at: datetime
    max_cost_usd: float | None = None
    cost_usd: float = 0.0  # spent on this feature by earlier attempts
    # A follow-up this attempt owes: resume this session with this prompt (an answer, a lead's resume).
    resume_session_id: str | None = None
    resume_prompt: str | None = None


@dataclass(frozen=True)
class ReleaseResult:
    feature_id: int
    status: Status  # the stored status after the release (a failed attempt may be back to pending)
    attempts: int
    applied: bool  # False when this exact release had already been applied


@dataclass(frozen=True)
class HeartbeatResult:
    renewed: frozenset[int]
    lost: frozenset[int]  # features the caller said it held that are no longer its own


@dataclass(frozen=True)
class LockResult:
    success: bool
    message: str
    path: str = ""


@dataclass(frozen=True)
class FeatureView:
    """A feature as `status` shows it; ``status`` includes the derived ``blocked``."""

    id: int
    name: str
    category: str
    status: Status
    attempts: int
    model: str | None
    cost_usd: float
    depends_on: tuple[str, ...]
    notes: str
    priority: int
    critical_path: int
    owner: str | None
    estimate_seconds: float | None = None  # an attempt's estimated time (api.estimates)
    path_seconds: float | None = None  # the estimated time of the longest chain of work left from here

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "status": self.status,
            "attempts": self.attempts,
            "model": self.model,
            "cost_usd": round(self.cost_usd, 6),
            "depends_on": list(self.depends_on),
            "notes": self.notes,
            "estimate_minutes": _minutes(self.estimate_seconds),
            "critical_path_minutes": _minutes(self.path_seconds),
        }


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 2)


@dataclass(frozen=True)
class RunRecord:
    """One agent attempt (a row of agent_runs)."""

    id: int
    feature_id: int
    attempt: int
    agent_id: str
    model: str | None
    session_id: str | None
    outcome: str | None
    reported_status: Status | None
    reported_notes: str | None
    num_turns: int | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    transcript_path: str | None
    error: str | None
    started_at: datetime
    ended_at: datetime | None
    commit_sha: str | None = None  # what a passing attempt landed on the integration branch
    lock_wait_seconds: float | None = None  # refused a file lock another agent held


@dataclass(frozen=True)
class AttemptTotals:
    """What a feature's attempts took so far, as a dashboard shows it."""

    seconds: float  # wall time of its finished attempts, summed
    running_since: datetime | None  # the start of the attempt in flight (naive UTC), if any
    transcript_path: str | None  # the newest attempt's


@dataclass(frozen=True)
class RunTotals:
    """Every feature's attempt totals (by feature id) and the money spent per model."""

    by_feature: dict[int, AttemptTotals]
    cost_by_model: dict[str, float]


@dataclass(frozen=True)
class StatusReport:
    features: tuple[FeatureView, ...]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(f.status for f in self.features))

    def to_json(self) -> dict[str, Any]:
        return {"features": [f.to_json() for f in self.features], "counts": self.counts}


@dataclass(frozen=True)
class ImportReport:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    skipped: tuple[str, ...]  # already claimed or finished: left as they are
    kept: tuple[str, ...]  # in the database but not in the file: kept, never deleted


@dataclass(frozen=True)
class QuestionRecord:
    """A question an agent asked through ask_question, and its answer once given."""

    id: int
    feature_id: int
    feature_name: str
    question: str
    session_id: str | None
    asked_at: datetime
    answer: str | None = None
    answered_at: datetime | None = None
    answered_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "feature_id": self.feature_id,
            "feature": self.feature_name,
            "question": self.question,
            "session_id": self.session_id,
            "asked_at": self.asked_at.isoformat(timespec="seconds") + "Z",
            "answer": self.answer,
        }


class Decision(enum.StrEnum):
    """A permission request's state: open until a person allows or denies it, or it times out."""

    OPEN = "open"
    ALLOW = "allow"
    DENY = "deny"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class PermissionRecord:
    """A tool call outside an agent's allow-list, waiting for (or given) a person's decision."""

    id: int
    feature_id: int
    feature_name: str
    run_id: int | None
    tool_name: str
    tool_input: dict[str, Any]
    requested_at: datetime
    decision: Decision = Decision.OPEN
    reason: str | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    used: bool = False

    @property
    def summary(self) -> str:
        """The call in one line: a Bash command, a URL, a path, or the input as JSON."""
        for key in ("command", "url", "file_path", "path", "pattern", "query"):
            value = self.tool_input.get(key)
            if isinstance(value, str) and value:
                return f"{self.tool_name}: {value}"
        return f"{self.tool_name}: {json.dumps(self.tool_input, sort_keys=True)[:200]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "feature_id": self.feature_id,
            "feature": self.feature_name,
            "tool": self.tool_name,
            "input": self.tool_input,
            "summary": self.summary,
            "requested_at": self.requested_at.isoformat(timespec="seconds") + "Z",
            "decision": self.decision,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ControlRequest:
    """A person's stop or nudge for a running feature, for the supervisor that runs it."""

    id: int
    feature_id: int
    kind: str  # "stop" or "nudge"
    text: str
    requeue: bool
    created_at: datetime
    handled_at: datetime | None = None
    result: str | None = None
