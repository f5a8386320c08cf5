"""People in the loop at the queue level, on SQLite and PostgreSQL: questions park a feature and
an answer resumes its session; permission decisions survive their supervisor; stop and nudge
requests reach the supervisor holding the feature; a finished feature can be resumed."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import update

from api.errors import InputError, NotFoundError
from api.features_file import FeatureSpec
from api.models import Feature
from api.queue import FeatureQueue
from api.records import ClaimedFeature, Decision, Status, Verdict


def running(queue: FeatureQueue, name: str, depends_on: tuple[str, ...] = ()) -> tuple[ClaimedFeature, int]:
    """Import, claim and start an attempt at ``name`` with a known session id; (claim, run id)."""
    queue.import_specs([FeatureSpec(name=name, depends_on=depends_on)])
    (claim,) = [c for c in queue.claim(5, "sup") if c.name == name]
    run = queue.start_run(claim, "sonnet")
    queue.set_run_session(run.id, f"session-{name}")
    return claim, run.id


def status_of(queue: FeatureQueue, name: str) -> Status:
    return next(f.status for f in queue.status_report().features if f.name == name)


def release_asked(queue: FeatureQueue, claim: ClaimedFeature, run_id: int) -> Status:
    """What the supervisor does when a session that asked a question ends."""
    verdict = Verdict(Status.NEEDS_INPUT, "asked", count_attempt=False)
    result = queue.finish_attempt(run_id, {"outcome": "needs_input"}, claim, verdict)
    assert result is not None
    return result.status


def test_a_question_parks_its_feature_and_its_dependents_until_the_answer_resumes_the_session(
    queue: FeatureQueue,
) -> None:
    claim, run_id = running(queue, "api")
    queue.import_specs([FeatureSpec(name="ui", depends_on=("api",)), FeatureSpec(name="docs")])
    asked = queue.ask(claim.agent_id, claim.id, "REST or GraphQL?")
    assert asked.session_id == "session-api"
    assert queue.run(run_id).reported_status == Status.NEEDS_INPUT

    assert release_asked(queue, claim, run_id) == Status.NEEDS_INPUT
    assert queue.feature_context(claim.id).attempts == 0  # a question uses no attempt
    assert [q.question for q in queue.questions()] == ["REST or GraphQL?"]
    # Neither it nor its dependent is claimable; other work is.
    assert [c.name for c in queue.claim(5, "sup")] == ["docs"]

    queue.answer(claim.id, "REST, please", by="ana")
    assert status_of(queue, "api") == Status.PENDING
    assert queue.questions() == []
    (again,) = queue.claim(5, "sup")
    assert again.name == "api"
    assert again.resume_session_id == "session-api"
    assert again.resume_prompt is not None and "REST, please" in again.resume_prompt
    assert "REST or GraphQL?" in again.resume_prompt

    # The resumed attempt passes: the follow-up is spent, the dependent becomes claimable.
    run = queue.start_run(again, "sonnet")
    queue.finish_attempt(run.id, {"outcome": "passing"}, again, Verdict(Status.PASSING, "done"))
    row = queue.db.run(lambda s: s.get(Feature, again.id), read_only=True)
    assert (row.resume_session_id, row.resume_prompt) == (None, None)
    assert [c.name for c in queue.claim(5, "sup")] == ["ui"]


def test_an_answer_that_arrives_while_the_asking_session_ends_is_not_lost(queue: FeatureQueue) -> None:
    claim, run_id = running(queue, "api")
    queue.ask(claim.agent_id, claim.id, "Which port?")
    queue.answer(claim.id, "8080")  # the feature is still claimed: its session is winding down
    assert release_asked(queue, claim, run_id) == Status.NEEDS_INPUT  # what the release stored...
    assert status_of(queue, "api") == Status.PENDING  # ...and the answer then resumed it
    (again,) = queue.claim(1, "sup")
    assert again.resume_session_id == "session-api" and "8080" in (again.resume_prompt or "")


def test_a_reaped_or_given_back_feature_with_an_open_question_still_waits_for_its_answer(
    queue: FeatureQueue,
) -> None:
    claim, _ = running(queue, "api")
    queue.ask(claim.agent_id, claim.id, "Which port?")
    # Its supervisor died before releasing it: the lease expires and the reaper frees it.
    queue.db.run(lambda s: s.execute(update(Feature).values(lease_expires_at=datetime(2000, 1, 1))))
    assert queue.reap_expired() == [claim.id]
    assert status_of(queue, "api") == Status.NEEDS_INPUT
    assert queue.claim(1, "sup") == []

    claim2, _ = running(queue, "db")
    queue.ask(claim2.agent_id, claim2.id, "Postgres 15 or 16?")
    queue.answer(claim2.id, "16")
    assert claim2.id in queue.give_back_all("sup")  # Ctrl-C after the answer came in
    (again,) = queue.claim(1, "sup")
    assert again.name == "db" and again.resume_session_id == "session-db"


def test_asking_needs_the_callers_own_running_attempt_and_a_real_question(queue: FeatureQueue) -> None:
    claim, _ = running(queue, "api")
    with pytest.raises(InputError, match="not assigned to you"):
        queue.ask("someone-else", claim.id, "?")
    with pytest.raises(InputError, match="empty"):
        queue.ask(claim.agent_id, claim.id, "   ")
    with pytest.raises(InputError, match="no open question"):
        queue.answer(claim.id, "nobody asked")
    with pytest.raises(NotFoundError):
        queue.answer(999, "x")
    batch = queue.claim_batch(1, "lead-agent")  # nothing else is ready
    assert batch == []


def test_a_permission_decision_is_reused_when_the_same_call_is_asked_again(queue: FeatureQueue) -> None:
    claim, run_id = running(queue, "api")
    call = {"command": "curl https://example.com"}
    first = queue.request_permission(claim.id, run_id, claim.agent_id, "Bash", call)
    assert first.decision is Decision.OPEN and first.summary == "Bash: curl https://example.com"
    assert [p.id for p in queue.permissions()] == [first.id]
    # The supervisor died while its session waited; the request is still there for a person.
    again = queue.request_permission(claim.id, run_id + 1, claim.agent_id, "Bash", call)
    assert again.id == first.id
    decided = queue.decide_permission(first.id, True, by="ana")
    assert decided.decision is Decision.ALLOW and queue.permissions() == []
    with pytest.raises(InputError, match="already allowed"):
        queue.decide_permission(first.id, False)
    # A new attempt asking the same call gets the decision made meanwhile, once.
    assert queue.request_permission(claim.id, None, claim.agent_id, "Bash", call).decision is Decision.ALLOW
    queue.use_permission(first.id)
    fresh = queue.request_permission(claim.id, None, claim.agent_id, "Bash", call)
    assert fresh.id != first.id and fresh.decision is Decision.OPEN
    other = queue.request_permission(claim.id, None, claim.agent_id, "Bash", {"command": "wget x"})
    assert other.id not in (first.id, fresh.id)


def test_an_unanswered_permission_times_out_and_an_ended_attempt_closes_its_requests(queue: FeatureQueue) -> None:
    claim, run_id = running(queue, "api")
    asked = queue.request_permission(claim.id, run_id, claim.agent_id, "WebFetch", {"url": "https://a.example"})
    expired = queue.expire_permission(asked.id, "nobody answered within 1 s")
    assert expired.decision is Decision.TIMEOUT
    late = queue.request_permission(claim.id, run_id, claim.agent_id, "WebFetch", {"url": "https://b.example"})
    queue.finish_attempt(run_id, {"outcome": "failed"}, claim, Verdict(Status.FAILED, "x"))
    assert queue.permission(late.id).decision is Decision.TIMEOUT
    with pytest.raises(NotFoundError):
        queue.permission(999)


def test_stop_and_nudge_requests_go_to_the_supervisor_holding_the_feature(queue: FeatureQueue) -> None:
    claim, _ = running(queue, "api")
    queue.import_specs([FeatureSpec(name="idle")])
    stop = queue.request_control(claim.id, "stop", "wrong approach", by="ana")
    nudge = queue.request_control(claim.id, "nudge", "use the v2 endpoint")
    assert [r.id for r in queue.open_controls("sup")] == [stop.id, nudge.id]
    assert queue.open_controls("another-supervisor") == []
    queue.handled_control(nudge.id, "queued for its next turn", "sup")
    assert [r.id for r in queue.open_controls("sup")] == [stop.id]
    assert queue.control(nudge.id).result == "queued for its next turn"
    idle = next(f.id for f in queue.status_report().features if f.name == "idle")
    with pytest.raises(InputError, match="not running"):
        queue.request_control(idle, "nudge", "hello")
    with pytest.raises(InputError, match="empty"):
        queue.request_control(claim.id, "nudge", " ")


def test_stopping_a_feature_that_waits_for_an_answer_needs_no_supervisor(queue: FeatureQueue) -> None:
    claim, run_id = running(queue, "api")
    queue.ask(claim.agent_id, claim.id, "?")
    release_asked(queue, claim, run_id)
    done = queue.request_control(claim.id, "stop", "not needed any more")
    assert done.handled_at is not None and done.result == Status.FAILED
    assert status_of(queue, "api") == Status.FAILED
    assert queue.questions() == []


def test_a_finished_feature_resumes_its_last_session_with_a_follow_up(queue: FeatureQueue) -> None:
    claim, run_id = running(queue, "api")
    queue.import_specs([FeatureSpec(name="ui", depends_on=("api",))])
    queue.finish_attempt(run_id, {"outcome": "passing"}, claim, Verdict(Status.PASSING, "built"))
    with pytest.raises(InputError, match="only a finished feature"):
        queue.resume_feature(next(f.id for f in queue.status_report().features if f.name == "ui"), "x")
    assert queue.resume_feature(claim.id, "Add pagination too.") == "session-api"
    assert status_of(queue, "api") == Status.PENDING
    # A dependent not yet started waits for the follow-up to pass again.
    (again,) = queue.claim(5, "sup")
    assert again.name == "api"
    assert (again.resume_session_id, again.resume_prompt) == ("session-api", "Add pagination too.")
    run = queue.start_run(again, "sonnet")
    queue.finish_attempt(run.id, {"outcome": "passing"}, again, Verdict(Status.PASSING, "paginated"))
    # Passing twice does not count its dependents' unmet dependencies twice.
    (ui,) = queue.claim(5, "sup")
    assert ui.name == "ui"
    assert queue.db.run(lambda s: s.get(Feature, ui.id).unmet_deps, read_only=True) == 0
