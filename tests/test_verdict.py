"""How an attempt ends: a session's outcome, the agent's report and the verify result as a Verdict."""

from __future__ import annotations

from datetime import UTC, datetime

from api.records import RunRecord, Status, Verdict
from api.verify import VerifyResult
from supervisor.runner import AgentOutcome, Ending
from supervisor.verdict import GiveBacks, judge, run_fields, shown, stopped_by_run_budget, verified


def record(reported: Status | None = None, notes: str | None = None) -> RunRecord:
    return RunRecord(
        id=1,
        feature_id=7,
        attempt=1,
        agent_id="agent-7",
        model="sonnet",
        session_id="s-1",
        outcome=None,
        reported_status=reported,
        reported_notes=notes,
        num_turns=None,
        input_tokens=None,
        output_tokens=None,
        cost_usd=None,
        transcript_path=None,
        error=None,
        started_at=datetime.now(UTC),
        ended_at=None,
    )


def test_the_agents_report_is_the_verdict_whatever_ended_the_session_after_it() -> None:
    stopped = AgentOutcome(Ending.INTERRUPTED, "stopped by the supervisor", cost_usd=0.5)
    verdict = judge(stopped, record(Status.PASSING, "built it"), "sonnet", None)
    assert verdict == Verdict(Status.PASSING, "built it", 0.5, "sonnet")


def test_a_failed_report_without_notes_says_the_agent_reported_it() -> None:
    verdict = judge(AgentOutcome(Ending.COMPLETED), record(Status.FAILED), "haiku", None)
    assert (verdict.status, verdict.notes, verdict.count_attempt) == (Status.FAILED, "the agent reported failed", True)


def test_an_agent_that_gives_its_feature_back_uses_no_attempt() -> None:
    verdict = judge(AgentOutcome(Ending.COMPLETED), record(Status.PENDING, "needs a key"), "haiku", None)
    assert (verdict.status, verdict.notes, verdict.count_attempt) == (Status.PENDING, "needs a key", False)


def test_an_infrastructure_failure_gives_the_feature_back_without_using_an_attempt() -> None:
    for ending in (Ending.API_UNAVAILABLE, Ending.AUTH_ERROR, Ending.SETUP_ERROR, Ending.INTERRUPTED):
        verdict = judge(AgentOutcome(ending, "API unavailable (529)"), record(), "sonnet", None)
        assert (verdict.status, verdict.notes, verdict.count_attempt) == (
            Status.PENDING,
            "API unavailable (529)",
            False,
        )


def test_a_session_that_fails_on_its_own_uses_an_attempt_with_its_error() -> None:
    verdict = judge(AgentOutcome(Ending.TIMEOUT, "timed out after 60 s"), record(), "sonnet", None)
    assert (verdict.status, verdict.notes, verdict.count_attempt) == (Status.FAILED, "timed out after 60 s", True)


def test_a_session_that_never_released_its_feature_fails_naming_the_reminders() -> None:
    verdict = judge(AgentOutcome(Ending.COMPLETED, reminders_sent=2), record(), "sonnet", None)
    assert verdict.status is Status.FAILED
    assert verdict.notes == "the session ended without feature_release after 2 reminder(s)"


def test_a_session_stopped_by_the_run_budget_is_given_back_unused() -> None:
    over = AgentOutcome(Ending.AGENT_ERROR, "budget exceeded", cost_usd=1.0, over_budget=True)
    assert stopped_by_run_budget(over, record(), "run")
    verdict = judge(over, record(), "sonnet", "run")
    assert (verdict.status, verdict.count_attempt, verdict.give_up) == (Status.PENDING, False, False)


def test_a_session_stopped_by_its_features_budget_fails_the_feature_for_good() -> None:
    over = AgentOutcome(Ending.AGENT_ERROR, "budget exceeded", cost_usd=1.0, over_budget=True)
    assert not stopped_by_run_budget(over, record(), "feature")
    verdict = judge(over, record(), "sonnet", "feature")
    assert (verdict.status, verdict.count_attempt, verdict.give_up) == (Status.FAILED, True, True)


def test_a_report_made_before_the_budget_ran_out_still_stands() -> None:
    over = AgentOutcome(Ending.AGENT_ERROR, "budget exceeded", over_budget=True)
    assert not stopped_by_run_budget(over, record(Status.PASSING, "done"), "run")
    assert judge(over, record(Status.PASSING, "done"), "sonnet", "run").status is Status.PASSING


def test_a_failing_verify_command_fails_a_passing_attempt_with_its_output() -> None:
    passing = Verdict(Status.PASSING, "built it", 0.2, "sonnet")
    outcome = AgentOutcome(Ending.COMPLETED)
    check = VerifyResult(passed=False, exit_code=1, output_tail="1 failed", seconds=0.1)
    verdict, after = verified(passing, outcome, "pytest -q", check)
    assert verdict.status is Status.FAILED and verdict.count_attempt
    assert verdict.notes == "verify command `pytest -q` exited 1; output tail:\n1 failed\n\nThe agent's notes: built it"
    assert after.message == "verify command `pytest -q` exited 1; output tail:\n1 failed"
    assert run_fields(verdict, after, record(Status.PASSING))["error"] == after.message


def test_a_passing_verify_command_leaves_the_verdict_as_it_was() -> None:
    passing = Verdict(Status.PASSING, "built it")
    outcome = AgentOutcome(Ending.COMPLETED)
    check = VerifyResult(passed=True, exit_code=0, output_tail="ok", seconds=0.1)
    assert verified(passing, outcome, "true", check) == (passing, outcome)


def test_a_feature_given_back_as_often_as_its_attempt_limit_in_one_run_fails() -> None:
    give_backs = GiveBacks(max_attempts=2)
    given = Verdict(Status.PENDING, "not mine", count_attempt=False)
    completed = AgentOutcome(Ending.COMPLETED)
    assert give_backs.count(7, given, completed) == given
    assert give_backs.count(8, given, completed) == given  # counted by feature
    failed = give_backs.count(7, given, completed)
    assert (failed.status, failed.count_attempt) == (Status.FAILED, True)
    assert failed.notes == "not mine\n(given back 2 times in this run)"


def test_only_a_completed_session_that_gave_its_feature_back_counts_as_a_give_back() -> None:
    give_backs = GiveBacks(max_attempts=1)
    given = Verdict(Status.PENDING, "API unavailable", count_attempt=False)
    assert give_backs.count(7, given, AgentOutcome(Ending.API_UNAVAILABLE)) == given
    failed = Verdict(Status.FAILED, "broken")
    assert give_backs.count(7, failed, AgentOutcome(Ending.COMPLETED)) == failed


def test_the_attempts_row_records_the_ending_unless_the_session_completed_or_reported() -> None:
    verdict = Verdict(Status.PENDING, "", 0.1, "sonnet", count_attempt=False)
    ended = AgentOutcome(Ending.API_UNAVAILABLE, "API unavailable", input_tokens=3, output_tokens=4)
    fields = run_fields(verdict, ended, record())
    assert (
        fields["outcome"] == "api_unavailable" and fields["model"] == "sonnet" and fields["error"] == "API unavailable"
    )
    assert run_fields(verdict, ended, record(Status.PENDING))["outcome"] == "pending"
    assert run_fields(verdict, AgentOutcome(Ending.COMPLETED), record())["outcome"] == "pending"


def test_the_view_is_told_whether_a_failed_attempt_will_be_retried_or_a_feature_was_given_back() -> None:
    assert shown(Verdict(Status.FAILED, "x"), Status.PENDING) == "failed attempt, will retry"
    assert shown(Verdict(Status.FAILED, "x"), Status.FAILED) == "failed"
    assert shown(Verdict(Status.PENDING, count_attempt=False), Status.PENDING) == "given back"
    assert shown(Verdict(Status.PASSING), Status.PASSING) == "passing"
