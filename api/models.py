"""SQLAlchemy models: the schema that alembic/versions builds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from api.records import Status

# Stable constraint names so SQLite batch migrations and autogenerate agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Naive UTC now; every timestamp in the database is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


BLOCKED = Status.BLOCKED  # derived, never stored


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Feature(Base):
    __tablename__ = "features"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    category: Mapped[str] = mapped_column(String(100), default="", server_default="")
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    steps: Mapped[list[str]] = mapped_column(JSON, default=list)
    verify: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(100))
    max_attempts: Mapped[int | None] = mapped_column(Integer)
    max_cost_usd: Mapped[float | None] = mapped_column(Float)

    status: Mapped[str] = mapped_column(String(20), default=Status.PENDING, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Dependencies not yet passing; kept in step by api.queue so the ready set is an index range scan.
    unmet_deps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Length of the longest chain of work starting here (api.dag); claims take the longest chains first.
    critical_path: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Claim order, ascending: longest chain first, then the user's priority (see api.dag.claim_order).
    # One ascending column keeps the ready index usable for ORDER BY on every backend.
    claim_order: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    owner: Mapped[str | None] = mapped_column(String(200))
    agent_id: Mapped[str | None] = mapped_column(String(200))
    # Fencing token: bumped on every claim; a release must present the current one.
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    last_model: Mapped[str | None] = mapped_column(String(100))
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # A follow-up for the next attempt: resume this session with this prompt (an answered question,
    # or a lead's resume_feature). Cleared when an attempt that used it ends.
    resume_session_id: Mapped[str | None] = mapped_column(String(100))
    resume_prompt: Mapped[str | None] = mapped_column(Text)
    # Scheduling (api.estimates): the user's estimate, the one in use (from it, or from the history
    # of finished attempts), and the estimated time of the longest chain of work starting here.
    estimate_minutes: Mapped[float | None] = mapped_column(Float)
    estimate_seconds: Mapped[float | None] = mapped_column(Float)
    path_seconds: Mapped[float | None] = mapped_column(Float)
    # Globs of the files it will touch (features.json), and the paths its attempts locked: features
    # whose files overlap are not run at once while other work is ready.
    files: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    touched_files: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_features_ready", "status", "unmet_deps", "claim_order", "id"),
        Index("ix_features_owner", "owner", "status"),
        Index("ix_features_lease", "status", "lease_expires_at"),
    )


class FeatureDependency(Base):
    __tablename__ = "feature_dependencies"

    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"), primary_key=True)

    __table_args__ = (Index("ix_feature_dependencies_depends_on_id", "depends_on_id"),)


class FileLock(Base):
    __tablename__ = "file_locks"

    # Project-relative POSIX path, normalised by api.queue.
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    feature_id: Mapped[int | None] = mapped_column(ForeignKey("features.id", ondelete="SET NULL"))
    acquired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index("ix_file_locks_owner", "owner"),
        Index("ix_file_locks_feature_id", "feature_id"),
    )


class AgentRun(Base):
    """One agent attempt at a feature."""

    __tablename__ = "agent_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(200))
    agent_id: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(100))
    session_id: Mapped[str | None] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    outcome: Mapped[str | None] = mapped_column(String(40))
    num_turns: Mapped[int | None] = mapped_column(Integer)
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    transcript_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # What the agent said through feature_release; the supervisor turns it into the outcome.
    reported_status: Mapped[str | None] = mapped_column(String(20))
    reported_notes: Mapped[str | None] = mapped_column(Text)
    # The commit a passing attempt landed (or is about to land) on the integration branch. Stored
    # before the branch moves, so a supervisor killed in between finds the feature already merged.
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    # Seconds its agent spent refused a file lock another agent held (claim_file or the write hook).
    lock_wait_seconds: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_agent_runs_feature_id", "feature_id", "attempt"),
        Index("ix_agent_runs_agent_id", "agent_id"),
    )


class MergeLock(Base):
    """One merge at a time per integration branch, across every supervisor sharing the database.

    A lease like a claim's: a holder that stops renewing it loses it at ``expires_at``.
    """

    __tablename__ = "merge_locks"

    branch: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Question(Base):
    """A question an agent asked (ask_question): its feature waits in needs_input until answered."""

    __tablename__ = "questions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(Integer)
    session_id: Mapped[str | None] = mapped_column(String(100))  # the session the answer resumes
    question: Mapped[str] = mapped_column(Text)
    asked_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    answer: Mapped[str | None] = mapped_column(Text)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime)
    answered_by: Mapped[str | None] = mapped_column(String(200))
    # When the answer became the feature's resume prompt (it is then claimable again).
    resumed_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_questions_feature_id", "feature_id", "answered_at"),)


class PermissionRequest(Base):
    """A tool call outside an agent's allow-list, waiting for a person's decision.

    ``decision`` is NULL while open, then allow, deny or timeout. A decision not yet ``used_at``
    by a session is reused when the same feature asks for the same call again (its supervisor
    died while waiting), so an answer given meanwhile is not lost.
    """

    __tablename__ = "permission_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(Integer)
    agent_id: Mapped[str] = mapped_column(String(200))
    tool_name: Mapped[str] = mapped_column(String(200))
    tool_input: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the tool and its input
    requested_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    decision: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    used_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_permission_requests_feature_id", "feature_id", "fingerprint"),
        Index("ix_permission_requests_open", "decision"),
    )


class FeatureRequest(Base):
    """A person's stop or nudge for a running feature; the supervisor running it acts on it."""

    __tablename__ = "feature_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # "stop" or "nudge"
    text: Mapped[str] = mapped_column(Text, default="", server_default="")
    requeue: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    handled_at: Mapped[datetime | None] = mapped_column(DateTime)
    handled_by: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_feature_requests_open", "handled_at", "feature_id"),)


class Event(Base):
    """Append-only log of everything that changed a feature or a lock."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    feature_id: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_events_feature_id", "feature_id"),)
