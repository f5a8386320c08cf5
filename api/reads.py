"""Reads for FeatureQueue: rows to typed records, inside the caller's transaction.

Nothing here writes; FeatureQueue (api/queue.py) owns every change of status, lease and lock.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Row, Select, bindparam, func, select
from sqlalchemy.orm import Session, aliased

from api import dag
from api.driver import json_list
from api.errors import NotFoundError
from api.models import AgentRun, Event, Feature, FeatureDependency, FileLock, MergeLock
from api.records import (
    AttemptTotals,
    ClaimedFeature,
    DependencyNote,
    FeatureContext,
    FeatureView,
    RunRecord,
    RunTotals,
    Status,
    StatusReport,
)


@functools.cache
def _dependencies_query() -> Select[int, str, str, str | None]:
    dep = aliased(Feature)
    return (
        select(dep.id, dep.name, dep.status, dep.notes)
        .join(FeatureDependency, FeatureDependency.depends_on_id == dep.id)
        .where(FeatureDependency.feature_id == bindparam("feature_id"))
        .order_by(dep.id)
    )


def claimed(row: Any, expires: datetime) -> ClaimedFeature:
    """A row of statements.claim_statement, read through the driver (api.driver): the lease
    expiry is the one just written, and steps come as JSON text from sqlite3."""
    return ClaimedFeature(
        id=row.id,
        name=row.name,
        description=row.description,
        category=row.category,
        priority=row.priority,
        steps=tuple(json_list(row.steps)),
        verify=row.verify,
        model=row.model,
        max_attempts=row.max_attempts,
        attempts=row.attempts,
        notes=row.notes,
        owner=row.owner or "",
        agent_id=row.agent_id or "",
        lease_token=row.lease_token,
        lease_expires_at=expires,
        max_cost_usd=row.max_cost_usd,
        cost_usd=row.cost_usd,
        resume_session_id=row.resume_session_id,
        resume_prompt=row.resume_prompt,
    )


def run_record(run: AgentRun) -> RunRecord:
    return RunRecord(
        id=run.id,
        feature_id=run.feature_id,
        attempt=run.attempt,
        agent_id=run.agent_id,
        model=run.model,
        session_id=run.session_id,
        outcome=run.outcome,
        reported_status=Status(run.reported_status) if run.reported_status else None,
        reported_notes=run.reported_notes,
        num_turns=run.num_turns,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost_usd=run.cost_usd,
        transcript_path=run.transcript_path,
        error=run.error,
        started_at=run.started_at,
        ended_at=run.ended_at,
        commit_sha=run.commit_sha,
        lock_wait_seconds=run.lock_wait_seconds,
    )


def holds(session: Session, claim: ClaimedFeature) -> bool:
    """Whether ``claim`` is still its owner's: same lease token, still claimed."""
    held = select(Feature.id).where(
        Feature.id == claim.id,
        Feature.owner == claim.owner,
        Feature.lease_token == claim.lease_token,
        Feature.status == Status.CLAIMED,
    )
    return session.execute(held).first() is not None


def attempt_count(session: Session, feature_id: int) -> int:
    return session.scalar(select(func.count()).where(AgentRun.feature_id == feature_id)) or 0


@functools.cache
def lease_query() -> Select[str, str | None, str | None, int, int, str | None]:
    """(status, owner, agent_id, lease_token, attempts, verify) of ``b_feature_id``; one statement
    for the ORM's reads and the driver's (api.driver)."""
    columns = (Feature.status, Feature.owner, Feature.agent_id, Feature.lease_token, Feature.attempts, Feature.verify)
    return select(*columns).where(Feature.id == bindparam("b_feature_id", type_=Integer))


def lease(session: Session, feature_id: int) -> Row[str, str | None, str | None, int, int, str | None] | None:
    """(status, owner, agent_id, lease_token, attempts, verify) of a feature, or None."""
    return session.execute(lease_query(), {"b_feature_id": feature_id}).first()


def open_run_id(session: Session, agent_id: str, feature_id: int) -> int | None:
    """The newest unfinished attempt of ``agent_id`` at the feature."""
    return session.scalar(
        select(AgentRun.id)
        .where(AgentRun.agent_id == agent_id, AgentRun.feature_id == feature_id, AgentRun.ended_at.is_(None))
        .order_by(AgentRun.id.desc())
        .limit(1)
    )


def run(session: Session, run_id: int) -> RunRecord:
    """Raises NotFoundError for an unknown id."""
    row = session.get(AgentRun, run_id)
    if row is None:
        raise NotFoundError(f"no agent run with id {run_id}")
    return run_record(row)


def runs(session: Session, feature_id: int) -> list[RunRecord]:
    query = select(AgentRun).where(AgentRun.feature_id == feature_id).order_by(AgentRun.id)
    return [run_record(r) for r in session.scalars(query)]


def feature_context(session: Session, feature_id: int) -> FeatureContext:
    """Raises NotFoundError for an unknown id."""
    row = session.get(Feature, feature_id)
    if row is None:
        raise NotFoundError(f"no feature with id {feature_id}")
    deps = session.execute(_dependencies_query(), {"feature_id": feature_id}).all()
    return FeatureContext(
        id=row.id,
        name=row.name,
        description=row.description,
        category=row.category,
        steps=tuple(row.steps or ()),
        verify=row.verify,
        status=Status(row.status),
        attempts=row.attempts,
        notes=row.notes or "",
        dependencies=tuple(DependencyNote(d.id, d.name, Status(d.status), d.notes or "") for d in deps),
    )


_STATUS_COLUMNS = (
    Feature.id, Feature.name, Feature.category, Feature.status, Feature.attempts, Feature.last_model, Feature.model,
    Feature.cost_usd, Feature.notes, Feature.priority, Feature.critical_path, Feature.owner, Feature.estimate_seconds,
    Feature.path_seconds,
)  # fmt: skip


def status_report(session: Session) -> StatusReport:
    # The columns it shows, unpacked, not Feature objects: loading 1,000 of those (JSON columns
    # decoded, identity map filled) and reading Row attributes by name took four fifths of its
    # 50 ms, and a dashboard asks twice a second.
    rows = [tuple(r) for r in session.execute(select(*_STATUS_COLUMNS).order_by(Feature.id))]
    names = {r[0]: r[1] for r in rows}
    deps: dict[int, list[int]] = {r[0]: [] for r in rows}
    for fid, dep_id in session.execute(select(FeatureDependency.feature_id, FeatureDependency.depends_on_id)):
        deps[fid].append(dep_id)
    blocked = dag.blocked_set(deps, {r[0]: r[3] for r in rows})
    views = []
    for fid, name, category, stored, attempts, last_model, model, cost, notes, priority, path, owner, est, left in rows:
        status = Status(stored)
        views.append(
            FeatureView(
                id=fid,
                name=name,
                category=category,
                status=Status.BLOCKED if fid in blocked and status == Status.PENDING else status,
                attempts=attempts,
                model=last_model or model,
                cost_usd=cost,
                depends_on=tuple(names[d] for d in sorted(deps[fid])),
                notes=notes,
                priority=priority,
                critical_path=path,
                owner=owner if status == Status.CLAIMED else None,
                estimate_seconds=est,
                path_seconds=left if not status.finished else None,
            )
        )
    return StatusReport(tuple(views))


def lock_holder(session: Session, path: str) -> Row[str, int | None, str | None] | None:
    """(owner, feature_id, name of the feature) of the lock on ``path``, or None."""
    return session.execute(
        select(FileLock.owner, FileLock.feature_id, Feature.name)
        .outerjoin(Feature, Feature.id == FileLock.feature_id)
        .where(FileLock.path == path)
    ).first()


def file_locks(session: Session) -> list[tuple[str, str, int | None]]:
    query = select(FileLock.path, FileLock.owner, FileLock.feature_id).order_by(FileLock.path)
    return [(r.path, r.owner, r.feature_id) for r in session.execute(query)]


def merge_lock_holder(session: Session, branch: str, now: datetime) -> tuple[str, datetime] | None:
    """(owner, acquired_at) of ``branch``'s merge lock, or None when it is free or has expired."""
    row = session.execute(
        select(MergeLock.owner, MergeLock.acquired_at).where(MergeLock.branch == branch, MergeLock.expires_at >= now)
    ).first()
    return None if row is None else (row.owner, row.acquired_at)


def written_paths(session: Session, run_id: int) -> list[str]:
    """The paths the run's agent locked for the run's feature since the run started, sorted.

    Raises NotFoundError for an unknown run id.
    """
    row = session.get(AgentRun, run_id)
    if row is None:
        raise NotFoundError(f"no agent run with id {run_id}")
    # file_locked events, as FeatureQueue.claim_file logs them: the lock table forgets a path once
    # it is released, the event log does not. The detail is filtered here, not in JSON SQL, which
    # is spelled differently on each backend; one agent's events for one feature are few.
    query = select(Event.detail).where(
        Event.feature_id == row.feature_id,
        Event.kind == "file_locked",
        Event.owner == row.agent_id,
        Event.ts >= row.started_at,
    )
    paths = {d["path"] for d in session.scalars(query) if isinstance(d, dict) and isinstance(d.get("path"), str)}
    return sorted(paths)


def lock_activity(session: Session, run_id: int, now: datetime) -> tuple[float, list[str]]:
    """(seconds the run's agent spent refused a file lock someone else held, the paths it locked).

    A wait on a path runs from its first refusal to the agent's lock on it (or ``now``); waits on
    several paths at once count once.
    """
    row = session.get(AgentRun, run_id)
    if row is None:
        raise NotFoundError(f"no agent run with id {run_id}")
    query = (
        select(Event.ts, Event.kind, Event.detail)
        .where(
            Event.owner == row.agent_id,
            Event.kind.in_(("lock_refused", "file_locked")),
            Event.ts >= row.started_at,
        )
        .order_by(Event.id)
    )
    waiting: dict[str, datetime] = {}
    spans: list[tuple[datetime, datetime]] = []
    locked: set[str] = set()
    for ts, kind, detail in session.execute(query):
        path = detail.get("path") if isinstance(detail, dict) else None
        if not isinstance(path, str):
            continue
        if kind == "lock_refused":
            waiting.setdefault(path, ts)
        else:
            locked.add(path)
            if path in waiting:
                spans.append((waiting.pop(path), ts))
    spans += [(since, max(since, now)) for since in waiting.values()]
    total, end = 0.0, None
    for start, stop in sorted(spans):
        if end is not None and start < end:
            start = end
        if stop > start:
            total += (stop - start).total_seconds()
            end = stop if end is None else max(end, stop)
    return total, sorted(locked)


def events(session: Session, feature_id: int | None) -> list[tuple[int, str, int | None, str | None]]:
    query = select(Event.id, Event.kind, Event.feature_id, Event.owner).order_by(Event.id)
    if feature_id is not None:
        query = query.where(Event.feature_id == feature_id)
    return [(r.id, r.kind, r.feature_id, r.owner) for r in session.execute(query)]


_RUN_TOTALS = select(
    AgentRun.feature_id, AgentRun.model, AgentRun.started_at, AgentRun.ended_at, AgentRun.cost_usd,
    AgentRun.transcript_path,
).order_by(AgentRun.id)  # fmt: skip


def run_totals(session: Session) -> RunTotals:
    """Per feature: its finished attempts' summed time, the start of the one in flight and the
    newest transcript; and the cost of every attempt by model (a run without one is "unknown").

    One scan of agent_runs (one row per attempt): durations are summed here rather than in SQL,
    where date arithmetic is spelled differently on each backend.
    """
    seconds: dict[int, float] = {}
    since: dict[int, datetime | None] = {}
    transcript: dict[int, str | None] = {}
    cost: dict[str, float] = {}
    for fid, model, started, ended, cost_usd, path in session.execute(_RUN_TOTALS):
        took = (ended - started).total_seconds() if ended is not None else 0.0
        seconds[fid] = seconds.get(fid, 0.0) + max(0.0, took)
        since[fid] = started if ended is None else None  # the newest attempt decides
        transcript[fid] = path
        if cost_usd:
            cost[model or "unknown"] = cost.get(model or "unknown", 0.0) + cost_usd
    totals = {fid: AttemptTotals(seconds[fid], since[fid], transcript[fid]) for fid in seconds}
    return RunTotals(totals, cost)
