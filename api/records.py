"""Typed records that leave ``api/``: statuses, claims, verdicts, runs, reports.

The supervisor, the MCP server and the CLI speak these, never bare strings or dicts.
"""

from __future__ import annotations

import enum
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
    ``PENDING`` (given back). ``count_attempt=False`` records an infrastructure failure without
    using an attempt; ``give_up=True`` makes a failed attempt final (its budget is spent).
    """

    status: Status
    notes: str = ""
    cost_usd: float = 0.0
    model: str | None = None
    count_attempt: bool = True
    give_up: bool = False

    def __post_init__(self) -> None:
        if self.status not in (Status.PASSING, Status.FAILED, Status.PENDING):
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
        }


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
