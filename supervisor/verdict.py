"""How an attempt ends: a session's outcome, the agent's own report and the verify command's
result become the Verdict the queue releases the feature with.

Everything here is a function of its arguments but ``GiveBacks``, which counts across a run.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from api.records import RunRecord, Status, Verdict
from api.verify import VerifyResult
from supervisor.runner import INFRASTRUCTURE, AgentOutcome, Ending


def judge(outcome: AgentOutcome, record: RunRecord, model: str | None, budget_source: str | None) -> Verdict:
    """The verdict before any verify command runs.

    The agent's own report, once made, is the verdict whatever ended the session after it
    (a Ctrl-C, an API error, a crash): the work it reported on is done and is not redone.
    Without a report, a session stopped by its cap (``budget_source``: the tightest cap it ran
    under) is given back when the run's budget stopped it, and failed for good when the
    feature's did.
    """
    status, notes, count = _reported_or_ended(outcome, record)
    give_up = False
    if stopped_by_run_budget(outcome, record, budget_source):
        status, count = Status.PENDING, False  # not its own failing: back to the queue, no attempt used
    elif outcome.over_budget and record.reported_status is None and budget_source == "feature":
        give_up = True  # its whole budget is gone: another attempt could not start
    return Verdict(status, notes, outcome.cost_usd, model, count_attempt=count, give_up=give_up)


def _reported_or_ended(outcome: AgentOutcome, record: RunRecord) -> tuple[Status, str, bool]:
    notes = record.reported_notes or ""
    if record.reported_status == Status.PASSING:
        return Status.PASSING, notes, True
    if record.reported_status == Status.FAILED:
        return Status.FAILED, notes or "the agent reported failed", True
    if record.reported_status == Status.PENDING:
        return Status.PENDING, notes, False
    if record.reported_status == Status.NEEDS_INPUT:
        return Status.NEEDS_INPUT, notes, False  # a question: the feature waits, no attempt used
    if outcome.ending in INFRASTRUCTURE:
        return Status.PENDING, outcome.message, False
    if outcome.ending is not Ending.COMPLETED:
        return Status.FAILED, outcome.message, True
    return (
        Status.FAILED,
        f"the session ended without feature_release after {outcome.reminders_sent} reminder(s)",
        True,
    )


def stopped(verdict: Verdict, reason: str, requeue: bool) -> Verdict:
    """A person stopped the attempt: failed for good with the reason, or back to the queue unused."""
    notes = f"stopped: {reason}"
    if requeue:
        return dataclasses.replace(verdict, status=Status.PENDING, notes=notes, count_attempt=False)
    return dataclasses.replace(verdict, status=Status.FAILED, notes=notes, count_attempt=True, give_up=True)


def stopped_by_run_budget(outcome: AgentOutcome, record: RunRecord, budget_source: str | None) -> bool:
    """The session ran out of the run's money, not its own: the run must claim nothing more."""
    return outcome.over_budget and record.reported_status is None and budget_source == "run"


def verified(
    verdict: Verdict, outcome: AgentOutcome, command: str, result: VerifyResult
) -> tuple[Verdict, AgentOutcome]:
    """A passing verdict after the feature's verify command ran: a failed command fails the
    attempt, with the command's output in its notes and in the run's error."""
    if result.passed:
        return verdict, outcome
    failed = dataclasses.replace(verdict, status=Status.FAILED, notes=result.failure_notes(command, verdict.notes))
    return failed, dataclasses.replace(outcome, message=result.summary(command))


class GiveBacks:
    """Features this run's agents gave back unfinished: a feature given back ``max_attempts``
    times in one run fails, or agents that keep declining it would keep the run going."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self._counts: Counter[int] = Counter()

    def count(self, feature_id: int, verdict: Verdict, outcome: AgentOutcome) -> Verdict:
        if verdict.status is not Status.PENDING or verdict.count_attempt or outcome.ending is not Ending.COMPLETED:
            return verdict
        self._counts[feature_id] += 1
        times = self._counts[feature_id]
        if times < self.max_attempts:
            return verdict
        notes = f"{verdict.notes}\n(given back {times} times in this run)".strip()
        return dataclasses.replace(verdict, status=Status.FAILED, notes=notes, count_attempt=True)


def run_fields(verdict: Verdict, outcome: AgentOutcome, record: RunRecord) -> dict[str, Any]:
    """The attempt's row as it ends (``FeatureQueue.finish_attempt``): its outcome is the verdict
    when the session completed or the agent reported, else how the session ended."""
    completed = outcome.ending is Ending.COMPLETED or record.reported_status is not None
    return {
        "outcome": verdict.status.value if completed else outcome.ending.value,
        "session_id": outcome.session_id,
        "num_turns": outcome.num_turns,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "cost_usd": outcome.cost_usd,
        "model": verdict.model,
        "error": outcome.message or None,
    }


def shown(verdict: Verdict, final: Status) -> str:
    """What the view shows for an attempt released with ``verdict``, now stored as ``final``."""
    if verdict.status is Status.FAILED and final == Status.PENDING:
        return "failed attempt, will retry"
    if verdict.status is Status.PENDING and not verdict.count_attempt:
        return "given back"
    if final == Status.NEEDS_INPUT:
        return "waiting for an answer"
    return final or verdict.status
