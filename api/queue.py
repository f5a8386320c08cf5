"""The feature queue: the only code that changes a feature's status, lease, file lock or merge lock.

Every verb is one database transaction. Claims are atomic on both backends: PostgreSQL
locks candidate rows with ``FOR UPDATE SKIP LOCKED``; SQLite takes the write lock up front
(``BEGIN IMMEDIATE``, see api.database) and guards the update on the status it read.
The SQL lives in api.statements, the features.json import in api.importer, the lock paths
in api.paths; the verbs here decide and write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from api import defaults, estimates, files, importer, reads, statements
from api.database import Database
from api.driver import Tx, json_list
from api.errors import InputError, LeaseLostError, NotFoundError
from api.features_file import FeatureSpec
from api.models import AgentRun, Feature, FileLock, MergeLock, utcnow
from api.paths import resolve_project_path
from api.people import PeopleVerbs, park_or_resume, resume_answered
from api.records import (
    ClaimedFeature,
    FeatureContext,
    HeartbeatResult,
    ImportReport,
    LockResult,
    ReleaseResult,
    RunRecord,
    RunTotals,
    Status,
    StatusReport,
    Verdict,
)

if TYPE_CHECKING:
    from api.verify import VerifyResult


LOOKAHEAD = 16  # ready features read past the ``n`` wanted, to find some that share no files with running work


class FeatureQueue(PeopleVerbs):
    """Queue verbs over one database. Safe to share across threads (a session per call).

    The verbs of questions, permissions and stop/nudge requests are in api.people.PeopleVerbs.
    """

    def __init__(
        self,
        db: Database,
        *,
        project_dir: Path | None = None,
        lease_seconds: float = defaults.LEASE_SECONDS,
        default_max_attempts: int = defaults.MAX_ATTEMPTS,
    ) -> None:
        self.db = db
        self.project_dir = project_dir
        self.lease_seconds = lease_seconds
        self.default_max_attempts = default_max_attempts

    # -- claims -----------------------------------------------------------------
    # The claim and the release run on the driver's connection with statements compiled once
    # (api.driver): they are the verbs every agent slot runs, and through the ORM each cost ~2 ms
    # of Python around microseconds of SQL (bench/claims.py).

    def claim(self, n: int, owner: str) -> list[ClaimedFeature]:
        """Atomically claim up to ``n`` ready features for ``owner``, best first.

        A feature whose files (declared or touched before) overlap a running feature's, or one
        claimed just before it, waits: it would wait on file locks or head for a merge conflict.
        """
        if n <= 0:
            return []
        expires, rows = self.db.run_on_driver(lambda tx: self._claim_on(tx, n, owner))
        # Typed records after the commit: on SQLite the write lock is held for the SQL alone.
        return [reads.claimed(row, expires) for row in sorted(rows, key=lambda r: (r.claim_order, r.id))]

    def _claim_on(self, tx: Tx, n: int, owner: str) -> tuple[datetime, list[Any]]:
        sqlite = tx.is_sqlite
        # The usual case in one statement: the n best ready features, none with known files (on
        # PostgreSQL with their events).
        claim = (
            statements.claim_ready_statement(n, skip_locked=False)
            if sqlite
            else statements.claim_ready_logged_statement(n)
        )
        # The time is read at the last moment: after opening a connection or compiling the
        # statement for a new n (tens of ms each), the claim's event would predate a change its
        # statement saw.
        tx.driver.prepared(claim)
        now = utcnow()
        expires = now + timedelta(seconds=self.lease_seconds)
        params = statements.claim_params((), owner, now, expires)
        rows = tx.rows(claim, params)
        if not rows:
            ready = tx.rows(statements.ready_query(n, skip_locked=not sqlite))
            if not any(r.has_files for r in ready):
                return expires, []  # nothing ready
            # Some may share files with running work: look further for ones that do not. Only
            # then are more rows locked (SKIP LOCKED), so file-less queues claim as before.
            more = tx.rows(statements.ready_query(n + LOOKAHEAD, skip_locked=not sqlite))
            ids = _apart(tx, [r.id for r in more], n)
            if not ids:
                return expires, []
            params["b_ids"] = ids
            if not sqlite:
                return expires, tx.rows(statements.claim_logged_statement(), params)
            rows = tx.rows(statements.claim_statement(), params)
        if sqlite:  # logged after the statement, as the ORM verbs log
            statements.log(tx, [("claimed", r.id, owner, {"token": r.lease_token}) for r in rows])
        return expires, rows

    def release(
        self, feature_id: int, owner: str, token: int, status: str | Verdict, notes: str = "", **verdict: Any
    ) -> ReleaseResult:
        """End ``owner``'s claim with a Verdict (or its fields: ``status``, ``notes``, ...).

        Repeating a release that was already applied is a no-op. Raises LeaseLostError when
        the claim is no longer the caller's (expired and reaped, or claimed again since: the
        token moved on).
        """
        ending = status if isinstance(status, Verdict) else Verdict(_status(status), notes, **verdict)
        if ending.status is Status.NEEDS_INPUT:  # may resume at once from an answer: ORM work
            return self.db.run(
                lambda session: self._release_on(self.db.tx_in(session), session, feature_id, owner, token, ending)
            )
        return self.db.run_on_driver(lambda tx: self._release_on(tx, None, feature_id, owner, token, ending))

    def finish_attempt(
        self,
        run_id: int,
        run_fields: Mapping[str, Any],
        claim: ClaimedFeature,
        verdict: Verdict,
        *,
        release: bool = True,
    ) -> ReleaseResult | None:
        """End an attempt in one transaction: store its run fields (see finish_run), release the
        feature with ``verdict`` as ``release()`` would, and drop the agent's file locks.

        Returns None when the claim is no longer the caller's, or with ``release=False`` (the
        supervisor already knows its lease was lost); the run and the locks are settled anyway.
        """
        statements.check_run_fields(run_fields)

        def work(session: Session) -> ReleaseResult | None:
            now = utcnow()
            waited, locked = reads.lock_activity(session, run_id, now)
            session.execute(
                statements.update_run_statement(run_id, ended_at=now, lock_wait_seconds=waited, **run_fields)
            )
            if locked:  # what this feature touches, for keeping conflicting features apart later
                _remember_files(session, claim.id, locked)
            session.execute(delete(FileLock).where(FileLock.owner == claim.agent_id))
            # Requests its session no longer waits for; a supervisor killed mid-wait leaves them
            # open instead, for the next attempt to reuse their decision.
            session.execute(statements.close_permissions_statement(run_id, utcnow()))
            if not release:
                return None
            try:
                tx = self.db.tx_in(session)
                return self._release_on(tx, session, claim.id, claim.owner, claim.lease_token, verdict)
            except LeaseLostError:
                return None

        return self.db.run(work)

    def _release_on(
        self, tx: Tx, session: Session | None, feature_id: int, owner: str, token: int, verdict: Verdict
    ) -> ReleaseResult:
        """The release, in the caller's transaction; ``session`` (the same transaction) is needed
        for a needs_input verdict only."""
        now = utcnow()
        params = statements.release_params(feature_id, owner, token, verdict, self.default_max_attempts, now)
        if tx.is_sqlite:
            found = tx.rows(statements.release_statement(verdict), params)
        else:  # the release and its event in one statement
            found = tx.rows(statements.release_logged_statement(verdict), params)
        if not found:
            current = tx.rows(reads.lease_query(), {"b_feature_id": feature_id})
            if not current:
                raise NotFoundError(f"no feature with id {feature_id}")
            if current[0].owner == owner and current[0].lease_token == token:
                return ReleaseResult(feature_id, Status(current[0].status), current[0].attempts, applied=False)
            raise LeaseLostError(
                f"feature #{feature_id} is no longer held by {owner} (lease token {token}); "
                "it expired or was claimed again"
            )
        row = found[0]
        if row.status == Status.PASSING and row.has_dependents:
            _unblock_dependents(tx, feature_id)
        elif row.status == Status.NEEDS_INPUT:
            assert session is not None, "a needs_input release runs in an ORM session"
            resume_answered(session, [feature_id])  # answered while its session was ending
        if row.has_locks:
            tx.execute(statements.unlock_feature_statement(), {"b_feature_id": feature_id})
        if tx.is_sqlite:
            entry = {"token": token, "now": row.status}
            statements.log(tx, [(f"released:{verdict.status}", feature_id, owner, entry)])
        return ReleaseResult(feature_id, Status(row.status), row.attempts, applied=True)

    def heartbeat(self, owner: str, held: Mapping[int, int] | None = None) -> HeartbeatResult:
        """Extend every lease ``owner`` holds, in one statement.

        ``held`` maps feature id -> lease token the caller believes it holds; those no
        longer renewed (reaped, or claimed by someone else since) come back in ``lost``.
        """

        def work(session: Session) -> HeartbeatResult:
            expires = utcnow() + timedelta(seconds=self.lease_seconds)
            rows = session.execute(statements.renew_statement(owner, expires)).all()
            current = {r.id: r.lease_token for r in rows}
            lost = {fid for fid, tok in (held or {}).items() if current.get(fid) != tok}
            return HeartbeatResult(frozenset(current), frozenset(lost))

        return self.db.run(work)

    def reap_expired(self) -> list[int]:
        """Return expired claims (their owner stopped heart-beating) to ``pending``.

        Frees their file locks and closes their unfinished attempts (outcome ``expired``); no attempt is used.
        """

        def work(session: Session) -> list[int]:
            now = utcnow()
            victims = session.execute(statements.expired_claims_query(now, skip_locked=not self.db.is_sqlite)).all()
            if not victims:
                return []
            ids = [v.id for v in victims]
            expired = and_(Feature.id.in_(ids), statements.expired_claims(now))
            session.execute(statements.unclaim_statement(expired, now))
            session.execute(delete(FileLock).where(FileLock.feature_id.in_(ids)))
            # Their owner will not finish these attempts (it died): close them, or `logs` shows them running forever.
            why = "the lease expired: its supervisor stopped renewing it"
            session.execute(statements.close_runs_statement([v.agent_id for v in victims], now, "expired", why))
            park_or_resume(session, ids)  # a session that asked a question and died: its feature still waits
            statements.log(session, [("reaped", v.id, v.owner, None) for v in victims])
            return ids

        return self.db.run(work)

    def give_back_all(self, owner: str) -> list[int]:
        """Return every claim of ``owner`` to ``pending`` without using attempts (graceful shutdown).

        Attempts still open on them (their session never reached its end) are closed as ``interrupted``.
        """

        def work(session: Session) -> list[int]:
            now = utcnow()
            held = and_(Feature.owner == owner, Feature.status == Status.CLAIMED)
            agents = session.scalars(select(Feature.agent_id).where(held)).all()
            ids = session.scalars(statements.unclaim_statement(held, now).returning(Feature.id)).all()
            if ids:
                session.execute(delete(FileLock).where(FileLock.feature_id.in_(ids)))
                why = "the supervisor stopped before this attempt ended"
                session.execute(statements.close_runs_statement(agents, now, "interrupted", why))
                park_or_resume(session, list(ids))
                statements.log(session, [("given_back", fid, owner, None) for fid in ids])
            return list(ids)

        return self.db.run(work)

    def retry(self, feature_id: int) -> None:
        """Put a failed feature back to ``pending`` with a fresh attempt budget."""

        def work(session: Session) -> None:
            row = session.get(Feature, feature_id)
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}; see `status` for ids")
            if row.status != Status.FAILED:
                raise InputError(
                    f"feature #{feature_id} ({row.name}) is {row.status}; only failed features can be retried"
                )
            row.status = Status.PENDING
            row.attempts = 0
            row.finished_at = None
            statements.log(session, [("retry", feature_id, None, None)])

        self.db.run(work)

    # -- agent runs and what agents report ------------------------------------------

    def start_run(self, claim: ClaimedFeature, model: str | None, transcript_path: str | None = None) -> RunRecord:
        """Record the start of an agent attempt on a feature the caller holds. Raises LeaseLostError."""
        return self.db.run(lambda session: _start_run(session, claim, model, transcript_path))

    def begin_attempt(
        self, claim: ClaimedFeature, model: str | None, transcript_for: Callable[[int], str]
    ) -> tuple[FeatureContext, list[RunRecord], RunRecord]:
        """Start an attempt in one transaction: the feature as its agent reads it, its earlier
        attempts, and the new attempt's row (``transcript_for(attempt number)`` names its
        transcript). Raises LeaseLostError when the claim is no longer the caller's."""

        def work(session: Session) -> tuple[FeatureContext, list[RunRecord], RunRecord]:
            context = reads.feature_context(session, claim.id)
            previous = reads.runs(session, claim.id)
            return context, previous, _start_run(session, claim, model, transcript_for(len(previous) + 1))

        return self.db.run(work)

    def finish_run(self, run_id: int, **fields: Any) -> None:
        """Store the end of an attempt: outcome, session_id, num_turns, tokens, cost_usd, error, model..."""
        statements.check_run_fields(fields)
        self.db.run(
            lambda session: session.execute(statements.update_run_statement(run_id, ended_at=utcnow(), **fields))
        )

    def set_run_session(self, run_id: int, session_id: str) -> None:
        """Remember the session id as soon as it is known, so a crash can still resume it."""
        self.db.run(lambda session: session.execute(statements.update_run_statement(run_id, session_id=session_id)))

    def set_run_commit(self, run_id: int, sha: str) -> None:
        """Remember the commit a passing attempt lands, before the integration branch moves to it."""
        self.db.run(lambda session: session.execute(statements.update_run_statement(run_id, commit_sha=sha)))

    def reopen_run(self, run_id: int) -> None:
        """Clear the agent's report on an attempt still running, so its session can be resumed
        (a merge conflict sent it back) and must call feature_release again.

        Raises NotFoundError for an unknown id, InputError for an attempt that has ended.
        """

        def work(session: Session) -> None:
            reopened = session.execute(statements.reopen_run_statement(run_id)).first()
            if reopened is None:
                if session.get(AgentRun, run_id) is None:
                    raise NotFoundError(f"no agent run with id {run_id}")
                raise InputError(f"agent run {run_id} has ended; only a running attempt can be reopened")
            statements.log(session, [("reopened", reopened.feature_id, reopened.agent_id, {"run": run_id})])

        self.db.run(work)

    def written_paths(self, run_id: int) -> list[str]:
        """The project-relative paths the run's agent locked for its feature since the run started,
        sorted: the files a feature's agent wrote in shared mode. Raises NotFoundError."""
        return self.db.run(lambda session: reads.written_paths(session, run_id), read_only=True)

    def runs(self, feature_id: int) -> list[RunRecord]:
        """Every attempt at a feature, oldest first."""
        return self.db.run(lambda session: reads.runs(session, feature_id), read_only=True)

    def run(self, run_id: int) -> RunRecord:
        """One attempt. Raises NotFoundError for an unknown id."""
        return self.db.run(lambda session: reads.run(session, run_id), read_only=True)

    def feature_context(self, feature_id: int) -> FeatureContext:
        """A feature's assignment as an agent reads it, with its dependencies' notes."""
        return self.db.run(lambda session: reads.feature_context(session, feature_id), read_only=True)

    def report(
        self,
        agent_id: str,
        feature_id: int,
        status: str,
        notes: str = "",
        *,
        verify: Callable[[str], VerifyResult] | None = None,
    ) -> str:
        """An agent's verdict on its feature (the MCP tool feature_release).

        For a feature the supervisor assigned, the verdict is recorded on the running attempt
        and the supervisor decides the outcome (it may still run ``verify``). A feature the
        agent claimed itself (feature_claim_batch) is released directly; if it has a verify
        command, a passing verdict first calls ``verify(command)`` (between transactions, the
        claim held) and, unless that passed, is a failed attempt with the verify's notes.
        Returns the stored status or "reported". Raises InputError for a bad status, another
        agent's feature, or such a passing verdict without ``verify``.
        """
        status = _status(status)

        def work(session: Session) -> tuple[str, int | None, str | None]:
            # Check and write in one transaction, so a claim that changes hands in between
            # cannot receive the previous agent's verdict.
            row = reads.lease(session, feature_id)
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            if row.status == Status.CLAIMED and row.owner == agent_id:
                return "self-claimed", row.lease_token, row.verify
            if row.status != Status.CLAIMED or row.agent_id != agent_id:
                raise InputError(f"feature #{feature_id} is not assigned to you (it is {row.status})")
            run_id = reads.open_run_id(session, agent_id, feature_id)
            if run_id is None:
                raise InputError(f"feature #{feature_id} has no running attempt for you")
            session.execute(statements.update_run_statement(run_id, reported_status=status, reported_notes=notes))
            statements.log(session, [(f"reported:{status}", feature_id, agent_id, None)])
            return "reported", None, None

        outcome, token, command = self.db.run(work)
        if outcome == "reported":
            return outcome
        assert token is not None  # a claim's lease token, never null on a claimed row
        # A lead agent's own claim: release it directly; the token guard makes a race harmless.
        # Passing means here what it means for the supervisor: the verify command exited 0.
        if status == Status.PASSING and command:
            if verify is None:
                raise InputError(f"feature #{feature_id} has a verify command, and nothing here can run it")
            result = verify(command)
            if not result.passed:
                status, notes = Status.FAILED, result.failure_notes(command, notes)
        return self.release(feature_id, agent_id, token, status, notes).status

    def claim_batch(self, count: int, agent_id: str) -> list[ClaimedFeature]:
        """Claims for a lead agent that works through features itself (it owns the leases)."""
        if not 1 <= count <= 50:
            raise InputError(f"count must be between 1 and 50, got {count}")
        return self.claim(count, agent_id)

    # -- file locks ---------------------------------------------------------------

    def _project(self) -> Path:
        if self.project_dir is None:
            raise InputError("file locks need the project directory (AGENT_MANAGER_PROJECT_DIR)")
        return self.project_dir

    def claim_file(
        self, file_path: str, agent_id: str, feature_id: int | None = None, *, root: Path | None = None
    ) -> LockResult:
        """Lock a project file for ``agent_id``. Another holder is a normal ``success=False``.

        ``root`` is the directory the agent works in when it is not the project (its git worktree):
        the lock is on the path relative to it, so every worktree of a run shares one lock per file.
        Raises PathOutsideProjectError / InputError for a path an agent must not use.
        """
        path = resolve_project_path(root or self._project(), file_path)

        def work(session: Session) -> LockResult:
            lock = statements.lock_file_statement(self.db.is_sqlite, path, agent_id, feature_id, utcnow())
            inserted = session.execute(lock).first()
            if inserted is not None:
                statements.log(session, [("file_locked", feature_id, agent_id, {"path": path})])
                return LockResult(True, f"locked {path}", path)
            holder = reads.lock_holder(session, path)
            if holder is None:  # released between our insert and this read
                return LockResult(False, f"{path} was just released; try again", path)
            if holder.owner == agent_id:
                return LockResult(True, f"you already hold {path}", path)
            statements.log(session, [("lock_refused", feature_id, agent_id, {"path": path})])  # for lock-wait time
            who = f"feature #{holder.feature_id} ({holder.name})" if holder.feature_id else holder.owner
            return LockResult(False, f"{path} is held by {who}; work on other files or try again later", path)

        return self.db.run(work)

    def release_file(self, file_path: str, agent_id: str, *, root: Path | None = None) -> LockResult:
        """Unlock a file ``agent_id`` holds (``root`` as for claim_file); not holding it is ``success=False``."""
        path = resolve_project_path(root or self._project(), file_path)

        def work(session: Session) -> LockResult:
            gone = session.execute(
                delete(FileLock).where(FileLock.path == path, FileLock.owner == agent_id).returning(FileLock.path)
            ).first()
            if gone is None:
                return LockResult(False, f"you do not hold a lock on {path}", path)
            statements.log(session, [("file_released", None, agent_id, {"path": path})])
            return LockResult(True, f"released {path}", path)

        return self.db.run(work)

    def release_all(self, agent_id: str) -> int:
        """Drop every file lock ``agent_id`` holds; returns how many."""
        unlock = delete(FileLock).where(FileLock.owner == agent_id).returning(FileLock.path)
        return self.db.run(lambda session: len(session.execute(unlock).all()))

    def file_locks(self) -> list[tuple[str, str, int | None]]:
        """(path, owner, feature_id) of every lock, by path."""
        return self.db.run(reads.file_locks, read_only=True)

    # -- merge locks ----------------------------------------------------------------

    def take_merge_lock(self, branch: str, owner: str, seconds: float) -> bool:
        """Take ``branch``'s merge lock for ``seconds`` if it is free, expired or already ``owner``'s
        (then renewed). Atomic across processes; False while someone else holds it."""

        def work(session: Session) -> bool:
            now = utcnow()
            take = statements.take_merge_lock_statement(
                self.db.is_sqlite, branch, owner, now, now + timedelta(seconds=seconds)
            )
            acquired_at = session.execute(take).scalar()
            if acquired_at is None:
                return False
            if acquired_at == now:  # changed hands (a renewal keeps the old time): worth a log line
                statements.log(session, [("merge_locked", None, owner, {"branch": branch})])
            return True

        return self.db.run(work)

    def renew_merge_lock(self, branch: str, owner: str, seconds: float) -> bool:
        """Extend ``owner``'s merge lock on ``branch`` to ``seconds`` from now; False when it was lost."""

        def work(session: Session) -> bool:
            expires = utcnow() + timedelta(seconds=seconds)
            return session.execute(statements.renew_merge_lock_statement(branch, owner, expires)).first() is not None

        return self.db.run(work)

    def drop_merge_lock(self, branch: str, owner: str) -> None:
        """Release ``branch``'s merge lock if ``owner`` holds it; a lock it lost is left alone."""
        drop = delete(MergeLock).where(MergeLock.branch == branch, MergeLock.owner == owner)
        self.db.run(lambda session: session.execute(drop))

    def merge_lock_holder(self, branch: str) -> tuple[str, datetime] | None:
        """(owner, acquired_at) of ``branch``'s merge lock, or None when it is free or expired."""
        return self.db.run(lambda session: reads.merge_lock_holder(session, branch, utcnow()), read_only=True)

    # -- import and status ----------------------------------------------------------

    def dependency_map(self) -> dict[str, tuple[str, ...]]:
        """``{name: (dependency names...)}`` for every feature in the database."""
        return self.db.run(importer.dependency_map, read_only=True)

    def import_specs(self, specs: Iterable[FeatureSpec]) -> ImportReport:
        """Add new features and update unclaimed ones, matched by name; all or nothing.

        Features in the database but not in ``specs`` are kept. Raises FeaturesFileError
        for an unknown dependency or a cycle through features already in the database.
        """
        specs = list(specs)

        def work(session: Session) -> ImportReport:
            report = importer.import_specs(session, specs, is_sqlite=self.db.is_sqlite)
            counts = {k: len(getattr(report, k)) for k in ("added", "updated", "unchanged", "skipped", "kept")}
            statements.log(session, [("import", None, None, counts)])
            return report

        return self.db.run(work)

    def reorder(self, model_for: estimates.ModelFor | None = None) -> int:
        """Refresh every unfinished feature's estimate and claim order from the attempts finished so
        far (api.estimates); ``model_for(category, model)`` names the model a feature will run on."""
        return self.db.run(lambda session: estimates.reorder(session, model_for))

    def lock_wait_seconds(self, owner: str) -> float:
        """Seconds the agents of ``owner``'s attempts spent refused a file lock, in all."""
        query = select(func.coalesce(func.sum(AgentRun.lock_wait_seconds), 0.0)).where(AgentRun.owner == owner)
        return float(self.db.run(lambda session: session.scalar(query), read_only=True) or 0.0)

    def status_report(self) -> StatusReport:
        return self.db.run(reads.status_report, read_only=True)

    def run_totals(self) -> RunTotals:
        """Per feature: its attempts' wall time and the attempt in flight; cost by model."""
        return self.db.run(reads.run_totals, read_only=True)

    def events(self, feature_id: int | None = None) -> list[tuple[int, str, int | None, str | None]]:
        """(id, kind, feature_id, owner) of logged events, oldest first."""
        return self.db.run(lambda session: reads.events(session, feature_id), read_only=True)


# -- helpers (all run inside the caller's transaction) ----------------------------------


def _status(status: str) -> Status:
    if status not in (Status.PASSING, Status.FAILED, Status.PENDING):
        raise InputError(f"invalid status {str(status)!r}: use passing, failed or pending")
    return Status(status)


def _start_run(session: Session, claim: ClaimedFeature, model: str | None, transcript_path: str | None) -> RunRecord:
    if not reads.holds(session, claim):
        raise LeaseLostError(f"feature #{claim.id} is no longer held by {claim.owner}")
    row = {
        "feature_id": claim.id,
        "attempt": reads.attempt_count(session, claim.id) + 1,
        "owner": claim.owner,
        "agent_id": claim.agent_id,
        "model": model,
        "transcript_path": transcript_path,
        "started_at": utcnow(),
    }
    run_id = session.execute(statements.insert_run_statement(row)).scalar_one()
    return reads.run_record(AgentRun(id=run_id, **row))  # transient: its other columns read as None


MAX_TOUCHED = 1_000


def _remember_files(session: Session, feature_id: int, paths: list[str]) -> None:
    before = session.scalar(select(Feature.touched_files).where(Feature.id == feature_id)) or []
    merged = sorted({*before, *paths})[:MAX_TOUCHED]
    if merged != sorted(before):
        session.execute(
            update(Feature)
            .where(Feature.id == feature_id)
            .values(touched_files=merged)
            .execution_options(synchronize_session=False)
        )


def _apart(tx: Tx, ids: list[int], n: int) -> list[int]:
    """Up to ``n`` of the ready ``ids`` (best first) whose files overlap no running feature's nor
    each other's; features with no known files never conflict."""
    known = {
        r.id: {*json_list(r.files), *json_list(r.touched_files)}
        for r in tx.rows(statements.files_query(), {"ids": ids})
    }
    if not any(known.values()):  # nothing known about their files: nothing to keep apart
        return ids[:n]
    busy: list[str] = []
    for r in tx.rows(statements.running_files_query()):
        busy += [*json_list(r.files), *json_list(r.touched_files)]
    busy += [r.path for r in tx.rows(statements.locked_paths_query())]
    chosen: list[int] = []
    for fid in ids:
        mine = known.get(fid) or set()
        if mine and files.overlap(mine, busy):
            continue
        chosen.append(fid)
        busy += mine
        if len(chosen) == n:
            break
    return chosen


def _unblock_dependents(tx: Tx, feature_id: int) -> None:
    # On PostgreSQL the dependents are row-locked in id order first, so two releases that share
    # dependents cannot deadlock; the count then sees the other's committed status.
    lock, unblock = statements.unblock_statements(for_update=not tx.is_sqlite)
    dependents = [r.id for r in tx.rows(lock, {"feature_id": feature_id})]
    if dependents:
        tx.execute(unblock, {"b_ids": dependents})
