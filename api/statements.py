"""The SQL behind FeatureQueue's verbs: the statements it runs, and the event log.

FeatureQueue executes every statement that changes a status, a lease or a lock; ``log`` only
appends to the event log, inside the caller's transaction (the reads are in api/reads.py).
Statements without values are built once and cached: SQLAlchemy memoises the cache key of a
statement object it has seen, which made a claim ~1 ms cheaper than building it anew.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.dml import Delete, Insert, ReturningInsert, ReturningUpdate, Update

from api.driver import Tx
from api.models import AgentRun, Event, Feature, FeatureDependency, FileLock, MergeLock, PermissionRequest, utcnow
from api.records import (
    Status,
    Verdict,
)

# -- statements (executed by FeatureQueue) -------------------------------------------------


@functools.lru_cache(maxsize=128)
def ready_query(n: int, *, skip_locked: bool) -> Select[int, bool]:
    """The claim's candidate query: up to ``n`` ready features (id, has_files), best first (one per n and dialect).

    Its values are written into the SQL, not bound: psycopg prepares a statement it runs often,
    and PostgreSQL's generic plan for it could not see that few rows are pending and ready.
    """
    dep = aliased(Feature)
    unmet = exists().where(
        FeatureDependency.feature_id == Feature.id,
        FeatureDependency.depends_on_id == dep.id,
        dep.status != _const(Status.PASSING),
    )
    # unmet_deps narrows the index scan; the NOT EXISTS re-checks the truth for the few rows taken.
    # has_files: whether it declared or touched files, so the claim knows to keep it apart from running work.
    has_files = (Feature.files.is_not(None)) | (Feature.touched_files.is_not(None))
    query = (
        select(Feature.id, has_files.label("has_files"))
        .where(Feature.status == _const(Status.PENDING), Feature.unmet_deps == literal_column("0"), ~unmet)
        .order_by(Feature.claim_order, Feature.id)
        .limit(literal_column(str(int(n))))
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True, of=Feature)
    return query


def _const(status: Status) -> ColumnElement[str]:
    return literal_column(f"'{status.value}'", String)  # a Status value: a fixed word, nothing to escape


@functools.lru_cache(maxsize=128)
def claim_ready_statement(n: int, *, skip_locked: bool) -> ReturningUpdate[*tuple[Any, ...]]:
    """Claim the first ``n`` of ready_query in one statement, unless one of them has files (then
    nothing: the caller keeps features with files apart from running work, see api.queue).
    Returns CLAIMED_COLUMNS and claim_order; takes claim_params without ``b_ids``."""
    ready = ready_query(n, skip_locked=skip_locked).cte("ready")
    return (
        update(Feature)
        # No status guard beside the ready rows' own: they are pending under SQLite's write lock
        # and PostgreSQL's row locks, and SQLite would scan the pending index for it instead of
        # looking the ids up.
        .where(Feature.id.in_(select(ready.c.id)), ~exists().where(ready.c.has_files))
        .values(**_claim_values())
        .returning(*CLAIMED_COLUMNS, Feature.claim_order)
        .add_cte(ready)
        .execution_options(synchronize_session=False)
    )


@functools.cache
def files_query() -> Select[int, list[str] | None, list[str] | None]:
    """(id, files, touched_files) of the features among ``ids``."""
    return select(Feature.id, Feature.files, Feature.touched_files).where(
        Feature.id.in_(bindparam("ids", expanding=True))
    )


@functools.cache
def running_files_query() -> Select[list[str] | None, list[str] | None]:
    """(files, touched_files) of the claimed features that have any."""
    return select(Feature.files, Feature.touched_files).where(
        Feature.status == Status.CLAIMED, (Feature.files.is_not(None)) | (Feature.touched_files.is_not(None))
    )


# What a claim returns: the columns of api.records.ClaimedFeature.
CLAIMED_COLUMNS = (
    Feature.id, Feature.name, Feature.description, Feature.category, Feature.priority, Feature.steps,
    Feature.verify, Feature.model, Feature.max_attempts, Feature.attempts, Feature.notes, Feature.owner,
    Feature.agent_id, Feature.lease_token, Feature.max_cost_usd, Feature.cost_usd, Feature.resume_session_id,
    Feature.resume_prompt,
)  # fmt: skip


@functools.cache
def locked_paths_query() -> Select[str]:
    """The paths of every file lock."""
    return select(FileLock.path)


@functools.cache
def claim_statement() -> ReturningUpdate[*tuple[Any, ...]]:
    """Claim the pending features among ``b_ids``: a new lease token, owner and agent id each."""
    return (
        update(Feature)
        .where(Feature.id.in_(bindparam("b_ids", expanding=True)), Feature.status == Status.PENDING)
        .values(**_claim_values())
        .returning(*CLAIMED_COLUMNS, Feature.claim_order)
        .execution_options(synchronize_session=False)
    )


def _claim_values() -> dict[str, Any]:
    """A claim's new values: a new lease token, owner and agent id each."""
    new_token = Feature.lease_token + 1
    return {
        "status": Status.CLAIMED,
        "owner": bindparam("b_owner", type_=String),
        "agent_id": bindparam("b_agent_prefix", type_=String)
        + cast(Feature.id, String)
        + literal("/")
        + cast(new_token, String),
        "lease_token": new_token,
        "lease_expires_at": bindparam("b_expires", type_=DateTime),
        "claimed_at": bindparam("b_now", type_=DateTime),
        "updated_at": bindparam("b_now", type_=DateTime),
    }


def claim_params(ids: Iterable[int], owner: str, now: datetime, expires: datetime) -> dict[str, Any]:
    """The values of claim_statement's parameters (claim_ready_statement's: without ``b_ids``)."""
    params = {"b_owner": owner, "b_agent_prefix": owner + "/", "b_expires": expires, "b_now": now}
    return params | {"b_ids": list(ids)} if ids else params


def release_statement(verdict: Verdict) -> ReturningUpdate[str, int, bool, bool]:
    """The holder's release of a claim with ``verdict``, guarded by owner and lease token.

    Returns the stored status and attempts, and whether the feature has dependents and file
    locks, or no row when the claim is no longer the holder's.
    """
    return _release_statement(*_release_kind(verdict))


def _release_kind(verdict: Verdict) -> tuple[str, bool, bool]:
    if verdict.status is Status.PASSING:
        kind = "passing"
    elif verdict.status is Status.FAILED and verdict.count_attempt:
        kind = "give_up" if verdict.give_up else "failed"
    elif verdict.status is Status.NEEDS_INPUT:
        kind = "needs_input"
    else:
        kind = "pending"
    return kind, bool(verdict.notes), bool(verdict.model)


def release_params(
    feature_id: int, owner: str, token: int, verdict: Verdict, default_max_attempts: int, now: datetime
) -> dict[str, Any]:
    """The values of release_statement's parameters."""
    return {
        "b_feature_id": feature_id,
        "b_owner": owner,
        "b_token": token,
        "b_now": now,
        "b_cost": verdict.cost_usd,
        "b_notes": verdict.notes,
        "b_model": verdict.model,
        "b_default_max_attempts": default_max_attempts,
    }


@functools.lru_cache(maxsize=32)
def _release_statement(verdict: str, with_notes: bool, with_model: bool) -> ReturningUpdate[str, int, bool, bool]:
    """The release for one kind of verdict: passing, failed (an attempt), give_up, needs_input or pending.

    Every kind but pending (a give-back: the attempt did not really happen) ends a follow-up the
    attempt owed, so the next attempt does not resume the same session with the same prompt.
    """
    now = bindparam("b_now", type_=DateTime)
    values: dict[str, Any] = {
        "lease_expires_at": None,
        "updated_at": now,
        "cost_usd": Feature.cost_usd + bindparam("b_cost", type_=Float),
    }
    if with_notes:
        values["notes"] = bindparam("b_notes", type_=Text)
    if with_model:
        values["last_model"] = bindparam("b_model", type_=String)
    if verdict == "passing":
        # attempts counts the agent sessions that counted, the passing one included.
        values.update(status=Status.PASSING, finished_at=now, attempts=Feature.attempts + 1)
    elif verdict in ("failed", "give_up"):
        limit = func.coalesce(Feature.max_attempts, bindparam("b_default_max_attempts", type_=Integer))
        values["attempts"] = Feature.attempts + 1
        values["status"] = (
            Status.FAILED
            if verdict == "give_up"
            else case((Feature.attempts + 1 >= limit, Status.FAILED), else_=Status.PENDING)
        )
        values["finished_at"] = now
    elif verdict == "needs_input":
        values["status"] = Status.NEEDS_INPUT
    else:
        values["status"] = Status.PENDING
    if verdict != "pending":
        values.update(resume_session_id=None, resume_prompt=None)
    return (
        update(Feature)
        .where(
            Feature.id == bindparam("b_feature_id", type_=Integer),
            Feature.owner == bindparam("b_owner", type_=String),
            Feature.lease_token == bindparam("b_token", type_=Integer),
            Feature.status == Status.CLAIMED,
        )
        .values(**values)
        .returning(
            Feature.status,
            Feature.attempts,
            # Whether the dependents' unblock and the file-lock delete have anything to do.
            exists().where(FeatureDependency.depends_on_id == Feature.id).label("has_dependents"),
            exists().where(FileLock.feature_id == Feature.id).label("has_locks"),
        )
        .execution_options(synchronize_session=False)
    )


@functools.cache
def unblock_statements(*, for_update: bool) -> tuple[Select[int], Update]:
    """(lock, unblock) for the dependents of a released feature: ``lock`` reads their ids
    (``feature_id``: the released one), row-locked in id order on PostgreSQL (``for_update``);
    ``unblock`` counts the unmet dependencies of ``b_ids`` afresh (not decremented: a feature
    resumed after passing passes twice).

    Both are written so that every step is a primary-key or index lookup whatever the planner
    knows: right after a large import PostgreSQL has no statistics yet, and planned the obvious
    forms as scans of the whole table (12 ms a release with 10,000 features).
    """
    dependents = select(FeatureDependency.feature_id).where(FeatureDependency.depends_on_id == bindparam("feature_id"))
    if for_update:  # PostgreSQL: the ids first (an InitPlan), then primary-key lookups
        lock = select(Feature.id).where(Feature.id == func.any(func.array(dependents.scalar_subquery())))
        lock = lock.order_by(Feature.id).with_for_update()
    else:
        lock = select(Feature.id).where(Feature.id.in_(dependents)).order_by(Feature.id)
    link, dep = aliased(FeatureDependency), aliased(Feature)
    status_of = select(dep.status).where(dep.id == link.depends_on_id).scalar_subquery()
    unmet = (
        select(func.count())
        .select_from(link)
        .where(link.feature_id == Feature.id, status_of != Status.PASSING)
        .scalar_subquery()
    )
    unblock = (
        update(Feature)
        .where(Feature.id.in_(bindparam("b_ids", expanding=True)))
        .values(unmet_deps=unmet)
        .execution_options(synchronize_session=False)
    )
    return lock, unblock


def renew_statement(owner: str, expires: datetime) -> ReturningUpdate[int, int]:
    """Extend every lease ``owner`` holds; returns (id, lease_token) of each."""
    return (
        update(Feature)
        .where(Feature.owner == owner, Feature.status == Status.CLAIMED)
        .values(lease_expires_at=expires)
        .returning(Feature.id, Feature.lease_token)
        .execution_options(synchronize_session=False)
    )


def expired_claims(now: datetime) -> ColumnElement[bool]:
    """Claims whose lease ran out before ``now`` (their owner stopped heart-beating)."""
    return and_(Feature.status == Status.CLAIMED, Feature.lease_expires_at < now)


def expired_claims_query(now: datetime, *, skip_locked: bool) -> Select[int, str | None, str | None]:
    """(id, owner, agent_id) of the expired claims, by id."""
    query = select(Feature.id, Feature.owner, Feature.agent_id).where(expired_claims(now)).order_by(Feature.id)
    return query.with_for_update(skip_locked=True) if skip_locked else query


def unclaim_statement(where: ColumnElement[bool], now: datetime) -> Update:
    """Return the claims ``where`` selects to pending, owner and lease cleared, no attempt used."""
    return (
        update(Feature)
        .where(where)
        .values(status=Status.PENDING, owner=None, agent_id=None, lease_expires_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )


RUN_FIELDS = frozenset({
    "outcome", "session_id", "num_turns", "input_tokens", "output_tokens", "cost_usd", "error", "model",
    "transcript_path",
})  # fmt: skip


def check_run_fields(fields: Mapping[str, Any]) -> None:
    """Raises TypeError for a field of ``fields`` that is not one of RUN_FIELDS."""
    unknown = set(fields) - RUN_FIELDS
    if unknown:
        raise TypeError(f"unknown run fields {sorted(unknown)}")


def update_run_statement(run_id: int, **values: Any) -> Update:
    return update(AgentRun).where(AgentRun.id == run_id).values(**values)


def insert_run_statement(row: Mapping[str, Any]) -> ReturningInsert[int]:
    """Insert an attempt; returns its id."""
    # Core, not session.add + flush: the unit of work cost about a millisecond per attempt.
    return insert(AgentRun).values(row).returning(AgentRun.id)


def reopen_run_statement(run_id: int) -> ReturningUpdate[int, str]:
    """Clear the report of an attempt that has not ended; returns (feature_id, agent_id), or no row."""
    return (
        update(AgentRun)
        .where(AgentRun.id == run_id, AgentRun.ended_at.is_(None))
        .values(reported_status=None, reported_notes=None)
        .returning(AgentRun.feature_id, AgentRun.agent_id)
        .execution_options(synchronize_session=False)
    )


def close_runs_statement(agent_ids: Iterable[str | None], now: datetime, outcome: str, error: str) -> Update:
    """End the still-open attempts of these agents (claims that ended without their session's verdict)."""
    return (
        update(AgentRun)
        .where(AgentRun.agent_id.in_([a for a in agent_ids if a]), AgentRun.ended_at.is_(None))
        .values(ended_at=now, outcome=outcome, error=error)
        .execution_options(synchronize_session=False)
    )


def close_permissions_statement(run_id: int, now: datetime) -> Update:
    """Time out the undecided permission requests of an attempt that has ended."""
    return (
        update(PermissionRequest)
        .where(PermissionRequest.run_id == run_id, PermissionRequest.decision.is_(None))
        .values(decision="timeout", reason="the session ended before anyone answered", decided_at=now)
        .execution_options(synchronize_session=False)
    )


def lock_file_statement(
    is_sqlite: bool, path: str, owner: str, feature_id: int | None, now: datetime
) -> ReturningInsert[str]:
    """Insert a file lock unless the path is already locked; returns the path when it inserted."""
    # Imported here: the PostgreSQL dialect's import alone is 60 ms of every command's start-up.
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert = sqlite.insert if is_sqlite else postgresql.insert
    return (
        dialect_insert(FileLock)
        .values(path=path, owner=owner, feature_id=feature_id, acquired_at=now)
        .on_conflict_do_nothing(index_elements=["path"])
        .returning(FileLock.path)
    )


def take_merge_lock_statement(
    is_sqlite: bool, branch: str, owner: str, now: datetime, expires: datetime
) -> ReturningInsert[datetime]:
    """Take ``branch``'s merge lock if it is free, expired or already ``owner``'s (then renew it).

    One upsert, so two takers cannot both win: SQLite runs it under BEGIN IMMEDIATE, and
    PostgreSQL's ON CONFLICT DO UPDATE locks the existing row and re-checks the WHERE on its
    newest version. Returns the lock's acquired_at when taken (``now`` when it changed hands,
    the original time on a renewal), no row when someone else holds it.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert = sqlite.insert if is_sqlite else postgresql.insert
    upsert = dialect_insert(MergeLock).values(branch=branch, owner=owner, acquired_at=now, expires_at=expires)
    return upsert.on_conflict_do_update(
        index_elements=["branch"],
        set_={
            "owner": owner,
            # Kept on a renewal: acquired_at is when the holder took the lock, not when it last renewed.
            "acquired_at": case((MergeLock.owner == owner, MergeLock.acquired_at), else_=now),
            "expires_at": expires,
        },
        where=(MergeLock.expires_at < now) | (MergeLock.owner == owner),
    ).returning(MergeLock.acquired_at)


def renew_merge_lock_statement(branch: str, owner: str, expires: datetime) -> ReturningUpdate[str]:
    """Extend ``branch``'s merge lock while ``owner`` holds it; no row when it was lost.

    An expired lock nobody took over is still ``owner``'s: taking it changes the owner.
    """
    return (
        update(MergeLock)
        .where(MergeLock.branch == branch, MergeLock.owner == owner)
        .values(expires_at=expires)
        .returning(MergeLock.branch)
        .execution_options(synchronize_session=False)
    )


@functools.cache
def unlock_feature_statement() -> Delete:
    """Drop the file locks held for ``b_feature_id``."""
    return delete(FileLock).where(FileLock.feature_id == bindparam("b_feature_id", type_=Integer))


# PostgreSQL runs a data-modifying statement in a CTE: a claim or a release and its event row
# go in one statement, a round trip less per verb than the statement and log() (SQLite runs both
# in-process, where a round trip costs nothing).
_EVENT_COLUMNS = ["ts", "kind", "feature_id", "owner", "detail"]


@functools.cache
def claim_logged_statement() -> Select[*tuple[Any, ...]]:
    """claim_statement with a ``claimed`` event per claimed feature (PostgreSQL)."""
    return _logged_claim(claim_statement())


@functools.lru_cache(maxsize=128)
def claim_ready_logged_statement(n: int) -> Select[*tuple[Any, ...]]:
    """claim_ready_statement with a ``claimed`` event per claimed feature (PostgreSQL)."""
    return _logged_claim(claim_ready_statement(n, skip_locked=True))


def _logged_claim(claim: ReturningUpdate[*tuple[Any, ...]]) -> Select[*tuple[Any, ...]]:
    claimed = claim.cte("claimed")
    event = select(
        bindparam("b_now", type_=DateTime),
        literal("claimed", String),
        claimed.c.id,
        claimed.c.owner,
        func.json_build_object(literal("token", String), claimed.c.lease_token),
    )
    return select(*claimed.c).add_cte(insert(Event).from_select(_EVENT_COLUMNS, event).cte("logged"))


def release_logged_statement(verdict: Verdict) -> Select[*tuple[Any, ...]]:
    """release_statement with its ``released:<status>`` event (PostgreSQL); same parameters."""
    return _release_logged_statement(*_release_kind(verdict), str(verdict.status))


@functools.lru_cache(maxsize=64)
def _release_logged_statement(kind: str, with_notes: bool, with_model: bool, status: str) -> Select[*tuple[Any, ...]]:
    released = _release_statement(kind, with_notes, with_model).cte("released")
    event = select(
        bindparam("b_now", type_=DateTime),
        literal(f"released:{status}", String),
        bindparam("b_feature_id", type_=Integer),
        bindparam("b_owner", type_=String),
        func.json_build_object(
            literal("token", String), bindparam("b_token", type_=Integer), literal("now", String), released.c.status
        ),
    ).select_from(released)
    return select(*released.c).add_cte(insert(Event).from_select(_EVENT_COLUMNS, event).cte("logged"))


# -- the event log ---------------------------------------------------------------------------


@functools.cache
def event_insert() -> Insert:
    """One event: ``ts``, ``kind``, ``feature_id``, ``owner``, ``detail``."""
    return insert(Event).values(
        ts=bindparam("ts", type_=DateTime),
        kind=bindparam("kind", type_=String),
        feature_id=bindparam("feature_id", type_=Integer),
        owner=bindparam("owner", type_=String),
        detail=bindparam("detail", type_=Event.__table__.c.detail.type),
    )


def log(
    session: Session | Tx,
    entries: list[tuple[str, int | None, str | None, dict[str, Any] | None]],
    now: datetime | None = None,
) -> None:
    """Append ``(kind, feature_id, owner, detail)`` entries to the event log, in the caller's
    transaction (an ORM session, or compiled statements on a driver connection).

    On PostgreSQL a trigger on the table notifies the ChangeWatchers (api/changes.py) that the
    queue changed, once per transaction however many rows it adds (migration 0006).
    """
    if entries:
        now = now or utcnow()
        rows = [{"ts": now, "kind": k, "feature_id": f, "owner": o, "detail": d} for k, f, o, d in entries]
        if isinstance(session, Tx):
            session.execute_many(event_insert(), rows)
        else:
            session.execute(event_insert(), rows)
