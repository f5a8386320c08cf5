"""People in the loop: an agent's questions, permission requests, and stop/nudge requests.

Part of the queue (``FeatureQueue`` inherits these verbs): every verb is one transaction, and a
feature's status changes only here and in api/queue.py. Everything a person or an agent says is
stored before anyone acts on it, so a supervisor or lead server killed in between loses nothing:
an open question keeps its feature in ``needs_input``, an answer given meanwhile becomes the
next attempt's resume prompt, and a permission decision is reused when the same call is asked again.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session

from api import statements
from api.errors import InputError, NotFoundError
from api.models import AgentRun, Feature, FeatureRequest, PermissionRequest, Question, utcnow
from api.records import ControlRequest, Decision, PermissionRecord, QuestionRecord, Status

if TYPE_CHECKING:
    from api.database import Database

MAX_QUESTION = 4_000
MAX_ANSWER = 20_000
CONTROL_KINDS = ("stop", "nudge")


def answer_prompt(question: str, answer: str) -> str:
    """What a resumed session is told when its question has been answered."""
    return (
        f"A person answered the question you asked.\n\nYour question: {question}\n\nTheir answer: {answer}\n\n"
        "Carry on with your feature using this answer, and finish with feature_release as before."
    )


def fingerprint(tool_name: str, tool_input: dict[str, Any]) -> str:
    canonical = json.dumps([tool_name, tool_input], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class PeopleVerbs:
    """Questions, permissions and control requests; mixed into api.queue.FeatureQueue."""

    db: Database

    # -- questions ------------------------------------------------------------------------

    def ask(self, agent_id: str, feature_id: int, question: str) -> QuestionRecord:
        """An agent's question about the feature it is assigned (the MCP tool ask_question).

        Stored with the session to resume, and recorded on the running attempt as its report
        (``needs_input``): when the session ends, the supervisor parks the feature, no attempt used.
        Raises InputError for an empty or overlong question, or a feature not assigned to ``agent_id``.
        """
        question = question.strip()
        if not question:
            raise InputError("the question is empty: ask something a person can answer")
        if len(question) > MAX_QUESTION:
            raise InputError(f"the question is {len(question)} characters; keep it under {MAX_QUESTION}")

        def work(session: Session) -> QuestionRecord:
            row = session.get(Feature, feature_id)
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            if row.status != Status.CLAIMED or row.agent_id != agent_id:
                raise InputError(f"feature #{feature_id} is not assigned to you (it is {row.status})")
            run = session.scalars(
                select(AgentRun)
                .where(AgentRun.agent_id == agent_id, AgentRun.feature_id == feature_id, AgentRun.ended_at.is_(None))
                .order_by(AgentRun.id.desc())
                .limit(1)
            ).first()
            if run is None:
                raise InputError(
                    f"feature #{feature_id} was claimed by this session itself: ask your user directly instead"
                )
            asked = Question(
                feature_id=feature_id, run_id=run.id, session_id=run.session_id, question=question, asked_at=utcnow()
            )
            session.add(asked)
            run.reported_status = Status.NEEDS_INPUT
            run.reported_notes = f"asked: {question}"
            session.flush()
            statements.log(session, [("asked", feature_id, agent_id, {"question": asked.id})])
            return _question(asked, row.name)

        return self.db.run(work)

    def questions(self, *, open_only: bool = True, feature_id: int | None = None) -> list[QuestionRecord]:
        """Questions, oldest first: by default the unanswered ones."""

        def work(session: Session) -> list[QuestionRecord]:
            query = select(Question, Feature.name).join(Feature, Feature.id == Question.feature_id)
            if open_only:
                query = query.where(Question.answered_at.is_(None))
            if feature_id is not None:
                query = query.where(Question.feature_id == feature_id)
            return [_question(q, name) for q, name in session.execute(query.order_by(Question.id))]

        return self.db.run(work, read_only=True)

    def answer(self, feature_id: int, text: str, by: str | None = None) -> QuestionRecord:
        """Answer the open question of a feature; the feature becomes claimable again and its next
        attempt resumes the asking session with the answer. Raises NotFoundError / InputError."""
        text = text.strip()
        if not text:
            raise InputError("the answer is empty")
        if len(text) > MAX_ANSWER:
            raise InputError(f"the answer is {len(text)} characters; keep it under {MAX_ANSWER}")

        def work(session: Session) -> QuestionRecord:
            row = session.get(Feature, feature_id)
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}; see `status` for ids")
            asked = session.scalars(
                select(Question)
                .where(Question.feature_id == feature_id, Question.answered_at.is_(None))
                .order_by(Question.id.desc())
                .limit(1)
            ).first()
            if asked is None:
                raise InputError(f"feature #{feature_id} ({row.name}) has no open question; see `questions`")
            asked.answer, asked.answered_at, asked.answered_by = text, utcnow(), by
            statements.log(session, [("answered", feature_id, by, {"question": asked.id})])
            session.flush()
            # Still claimed: the asking session is ending; its release (or a reap) resumes it.
            if row.status == Status.NEEDS_INPUT:
                resume_answered(session, [feature_id])
            return _question(asked, row.name)

        return self.db.run(work)

    # -- permissions ------------------------------------------------------------------------

    def request_permission(
        self, feature_id: int, run_id: int | None, agent_id: str, tool_name: str, tool_input: dict[str, Any]
    ) -> PermissionRecord:
        """Store a tool call that needs a person's decision, or return the same feature's earlier
        request for the same call if its decision has not been used yet (open or decided)."""
        mark = fingerprint(tool_name, tool_input)

        def work(session: Session) -> PermissionRecord:
            name = session.scalar(select(Feature.name).where(Feature.id == feature_id))
            if name is None:
                raise NotFoundError(f"no feature with id {feature_id}")
            earlier = session.scalars(
                select(PermissionRequest)
                .where(
                    PermissionRequest.feature_id == feature_id,
                    PermissionRequest.fingerprint == mark,
                    PermissionRequest.used_at.is_(None),
                    PermissionRequest.decision.is_distinct_from(Decision.TIMEOUT),
                )
                .order_by(PermissionRequest.id)
                .limit(1)
            ).first()
            if earlier is not None:
                earlier.run_id, earlier.agent_id = run_id, agent_id
                return _permission(earlier, name)
            request = PermissionRequest(
                feature_id=feature_id,
                run_id=run_id,
                agent_id=agent_id,
                tool_name=tool_name,
                tool_input=tool_input,
                fingerprint=mark,
                requested_at=utcnow(),
            )
            session.add(request)
            session.flush()
            statements.log(session, [("permission_asked", feature_id, agent_id, {"request": request.id})])
            return _permission(request, name)

        return self.db.run(work)

    def permission(self, request_id: int) -> PermissionRecord:
        """One request. Raises NotFoundError."""

        return self.db.run(lambda session: _permission(*_find_permission(session, request_id)), read_only=True)

    def permissions(self, *, open_only: bool = True, feature_id: int | None = None) -> list[PermissionRecord]:
        """Permission requests, oldest first: by default those waiting for a decision."""

        def work(session: Session) -> list[PermissionRecord]:
            query = select(PermissionRequest, Feature.name).join(Feature, Feature.id == PermissionRequest.feature_id)
            if open_only:
                query = query.where(PermissionRequest.decision.is_(None))
            if feature_id is not None:
                query = query.where(PermissionRequest.feature_id == feature_id)
            return [_permission(p, name) for p, name in session.execute(query.order_by(PermissionRequest.id))]

        return self.db.run(work, read_only=True)

    def decide_permission(
        self, request_id: int, allow: bool, reason: str | None = None, by: str | None = None
    ) -> PermissionRecord:
        """A person's decision on an open request. Raises NotFoundError, or InputError when it was
        already decided or timed out."""
        return self._decide(request_id, Decision.ALLOW if allow else Decision.DENY, reason, by)

    def expire_permission(self, request_id: int, reason: str) -> PermissionRecord:
        """Nobody answered in time: the request is denied as timed out (unless a decision just landed)."""
        try:
            return self._decide(request_id, Decision.TIMEOUT, reason, None)
        except InputError:
            return self.permission(request_id)

    def _decide(self, request_id: int, decision: Decision, reason: str | None, by: str | None) -> PermissionRecord:
        def work(session: Session) -> PermissionRecord:
            request, name = _find_permission(session, request_id)
            if request.decision is not None:
                was = {"allow": "allowed", "deny": "denied", "timeout": "timed out"}[request.decision]
                raise InputError(f"permission request #{request_id} was already {was}")
            request.decision, request.reason, request.decided_at, request.decided_by = decision, reason, utcnow(), by
            statements.log(session, [(f"permission_{decision}", request.feature_id, by, {"request": request_id})])
            return _permission(request, name)

        return self.db.run(work)

    def use_permission(self, request_id: int) -> None:
        """The session acted on the decision: a later identical call asks afresh."""
        mark = update(PermissionRequest).where(PermissionRequest.id == request_id).values(used_at=utcnow())
        self.db.run(lambda session: session.execute(mark))

    # -- stop and nudge -------------------------------------------------------------------

    def request_control(
        self, feature_id: int, kind: str, text: str = "", *, requeue: bool = False, by: str | None = None
    ) -> ControlRequest:
        """Ask whichever supervisor runs the feature to stop it or to pass on ``text``.

        A stop of a feature waiting in needs_input needs no supervisor and happens at once
        (failed, or pending with ``requeue``). Raises NotFoundError / InputError when there is
        nothing to act on.
        """
        if kind not in CONTROL_KINDS:
            raise InputError(f"unknown request {kind!r}: use stop or nudge")
        text = text.strip()
        if kind == "nudge" and not text:
            raise InputError("the message is empty")

        def work(session: Session) -> ControlRequest:
            row = session.get(Feature, feature_id)
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}; see `status` for ids")
            now = utcnow()
            request = FeatureRequest(
                feature_id=feature_id, kind=kind, text=text, requeue=requeue, created_at=now, created_by=by
            )
            if kind == "stop" and row.status == Status.NEEDS_INPUT:
                row.status = Status.PENDING if requeue else Status.FAILED
                row.notes = f"stopped while waiting for an answer: {text}" if text else "stopped by a person"
                row.finished_at = None if requeue else now
                row.resume_session_id = row.resume_prompt = None
                session.execute(
                    update(Question)
                    .where(Question.feature_id == feature_id, Question.answered_at.is_(None))
                    .values(answered_at=now, answered_by=by, answer="(withdrawn: the feature was stopped)")
                )
                request.handled_at, request.handled_by, request.result = now, by, row.status
            elif row.status != Status.CLAIMED:
                raise InputError(f"feature #{feature_id} ({row.name}) is {row.status}, not running: nothing to {kind}")
            session.add(request)
            session.flush()
            statements.log(session, [(f"{kind}_requested", feature_id, by, {"request": request.id})])
            return _control(request)

        return self.db.run(work)

    def open_controls(self, owner: str) -> list[ControlRequest]:
        """Unhandled stop/nudge requests for features ``owner`` holds, oldest first."""
        query = (
            select(FeatureRequest)
            .join(Feature, Feature.id == FeatureRequest.feature_id)
            .where(FeatureRequest.handled_at.is_(None), Feature.owner == owner, Feature.status == Status.CLAIMED)
            .order_by(FeatureRequest.id)
        )
        return self.db.run(lambda session: [_control(r) for r in session.scalars(query)], read_only=True)

    def handled_control(self, request_id: int, result: str, by: str | None = None) -> None:
        mark = (
            update(FeatureRequest)
            .where(FeatureRequest.id == request_id, FeatureRequest.handled_at.is_(None))
            .values(handled_at=utcnow(), handled_by=by, result=result)
        )
        self.db.run(lambda session: session.execute(mark))

    def control(self, request_id: int) -> ControlRequest:
        def work(session: Session) -> ControlRequest:
            row = session.get(FeatureRequest, request_id)
            if row is None:
                raise NotFoundError(f"no request with id {request_id}")
            return _control(row)

        return self.db.run(work, read_only=True)

    def wait_control(self, request_id: int, within: float, poll: float = 0.2) -> ControlRequest | None:
        """The stop/nudge request once a supervisor acted on it, or None after ``within`` seconds
        (it still will, at its next check). Polled: the supervisor is another process."""
        deadline = time.monotonic() + within
        while True:
            current = self.control(request_id)
            if current.handled_at is not None:
                return current
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)

    # -- follow-ups ---------------------------------------------------------------------------

    def resume_feature(self, feature_id: int, prompt: str, by: str | None = None) -> str | None:
        """A finished feature gets a follow-up: pending again, its next attempt resuming its last
        session with ``prompt`` (a fresh session when none was recorded). A failed feature gets a
        fresh attempt budget. Returns the session id to resume. Raises NotFoundError / InputError."""
        prompt = prompt.strip()
        if not prompt:
            raise InputError("the follow-up prompt is empty")

        def work(session: Session) -> str | None:
            row = session.get(Feature, feature_id)
            if row is None:
                raise NotFoundError(f"no feature with id {feature_id}; see `status` for ids")
            if row.status not in (Status.PASSING, Status.FAILED):
                hint = " (answer its question instead)" if row.status == Status.NEEDS_INPUT else ""
                raise InputError(
                    f"feature #{feature_id} ({row.name}) is {row.status}; only a finished feature can be resumed{hint}"
                )
            session_id = session.scalar(
                select(AgentRun.session_id)
                .where(AgentRun.feature_id == feature_id, AgentRun.session_id.is_not(None))
                .order_by(AgentRun.id.desc())
                .limit(1)
            )
            if row.status == Status.FAILED:
                row.attempts = 0
            row.status, row.finished_at = Status.PENDING, None
            row.resume_session_id, row.resume_prompt = session_id, prompt
            statements.log(session, [("resumed", feature_id, by, {"session": session_id})])
            return session_id

        return self.db.run(work)


# -- helpers (inside the caller's transaction) ---------------------------------------------------


def park_or_resume(session: Session, feature_ids: list[int]) -> None:
    """Features just released or given back by a session that asked a question: those whose
    question is still open wait in needs_input; those already answered resume with the answer."""
    if not feature_ids:
        return
    open_question = exists().where(Question.feature_id == Feature.id, Question.answered_at.is_(None))
    session.execute(
        update(Feature)
        .where(Feature.id.in_(feature_ids), Feature.status == Status.PENDING, open_question)
        .values(status=Status.NEEDS_INPUT, resume_session_id=None, resume_prompt=None)
        .execution_options(synchronize_session=False)
    )
    resume_answered(session, feature_ids)


def resume_answered(session: Session, feature_ids: list[int]) -> None:
    """Answered questions not yet turned into a follow-up become their feature's resume prompt."""
    waiting = and_(
        Question.feature_id.in_(feature_ids), Question.answered_at.is_not(None), Question.resumed_at.is_(None)
    )
    now = utcnow()
    for asked in session.scalars(select(Question).where(waiting).order_by(Question.id)):
        if _has_open_question(session, asked.feature_id):
            continue
        # Asked before the session id was recorded: the attempt's row has it by the time it ended.
        resume = asked.session_id or (
            session.scalar(select(AgentRun.session_id).where(AgentRun.id == asked.run_id)) if asked.run_id else None
        )
        session.execute(
            update(Feature)
            .where(Feature.id == asked.feature_id, Feature.status.in_((Status.NEEDS_INPUT, Status.PENDING)))
            .values(
                status=Status.PENDING,
                resume_session_id=resume,
                resume_prompt=answer_prompt(asked.question, asked.answer or ""),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        asked.resumed_at = now


def _find_permission(session: Session, request_id: int) -> tuple[PermissionRequest, str]:
    """A permission request and its feature's name. Raises NotFoundError."""
    found = session.execute(
        select(PermissionRequest, Feature.name)
        .join(Feature, Feature.id == PermissionRequest.feature_id)
        .where(PermissionRequest.id == request_id)
    ).first()
    if found is None:
        raise NotFoundError(f"no permission request with id {request_id}; see `permissions`")
    return found[0], found[1]


def _has_open_question(session: Session, feature_id: int) -> bool:
    query = select(Question.id).where(Question.feature_id == feature_id, Question.answered_at.is_(None)).limit(1)
    return session.scalar(query) is not None


def _question(row: Question, name: str) -> QuestionRecord:
    return QuestionRecord(
        id=row.id,
        feature_id=row.feature_id,
        feature_name=name,
        question=row.question,
        session_id=row.session_id,
        asked_at=row.asked_at,
        answer=row.answer,
        answered_at=row.answered_at,
        answered_by=row.answered_by,
    )


def _permission(row: PermissionRequest, name: str) -> PermissionRecord:
    return PermissionRecord(
        id=row.id,
        feature_id=row.feature_id,
        feature_name=name,
        run_id=row.run_id,
        tool_name=row.tool_name,
        tool_input=dict(row.tool_input or {}),
        requested_at=row.requested_at,
        decision=Decision(row.decision) if row.decision else Decision.OPEN,
        reason=row.reason,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        used=row.used_at is not None,
    )


def _control(row: FeatureRequest) -> ControlRequest:
    return ControlRequest(
        id=row.id,
        feature_id=row.feature_id,
        kind=row.kind,
        text=row.text,
        requeue=row.requeue,
        created_at=row.created_at,
        handled_at=row.handled_at,
        result=row.result,
    )
