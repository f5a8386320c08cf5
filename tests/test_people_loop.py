"""The supervisor's side of people in the loop, with a scripted runner: a question parks its
feature and the answer resumes the same session; permission requests wait for a decision or
time out; a stop request reaches the session through the database; roles reach the prompt."""

from __future__ import annotations

import asyncio
import threading

from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from api.records import Decision, Status
from supervisor.runner import AgentOutcome, AgentTask, Ending
from tests.support.runners import ScriptedRunner, passes
from tests.support.supervise import supervise


def status_of(queue: FeatureQueue, name: str) -> Status:
    return next(f.status for f in queue.status_report().features if f.name == name)


async def asks(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
    """Ask a question on the first session; on the resumed one, pass."""
    if task.resume_session_id is None:
        await asyncio.to_thread(runner.queue.ask, task.agent_id, task.feature_id, "Which port?")
        return AgentOutcome(Ending.COMPLETED, session_id="s-ask", num_turns=2, cost_usd=0.01, model=task.model)
    return await passes(task, runner)


def test_a_question_parks_the_feature_the_batch_run_ends_and_the_answer_resumes_the_session(
    queue: FeatureQueue,
) -> None:
    queue.import_specs([FeatureSpec(name="server"), FeatureSpec(name="client", depends_on=("server",))])
    runner = ScriptedRunner(queue, by_feature={"server": asks})
    summary, _ = supervise(queue, runner)
    assert status_of(queue, "server") == Status.NEEDS_INPUT
    assert summary.exit_code == 1  # not everything passed: one waits for a person
    assert [t.feature_name for t in runner.tasks] == ["server"]  # the dependent never started

    queue.answer(next(f.id for f in queue.status_report().features if f.name == "server"), "8080")
    summary, _ = supervise(queue, runner)
    assert summary.exit_code == 0
    resumed = runner.tasks[1]
    assert resumed.feature_name == "server"
    assert resumed.resume_session_id == "s-ask"
    assert "Their answer: 8080" in resumed.prompt
    assert [r.outcome for r in queue.runs(resumed.feature_id)] == ["needs_input", "passing"]
    assert queue.feature_context(resumed.feature_id).attempts == 1  # the question used none


def test_an_unanswered_permission_request_is_denied_at_the_timeout_with_a_message_the_agent_can_use(
    queue: FeatureQueue,
) -> None:
    queue.import_specs([FeatureSpec(name="fetch")])
    answers = []

    async def wants_the_web(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        assert task.ask_permission is not None and task.ask_tools == ("WebFetch",)
        answers.append(await task.ask_permission("WebFetch", {"url": "https://example.com"}))
        return await passes(task, runner)

    supervise(queue, ScriptedRunner(queue, wants_the_web), ask_tools=("WebFetch",), permission_timeout_seconds=0.5)
    (answer,) = answers
    assert not answer.allowed
    assert "Nobody answered the request to use WebFetch within 0.5 s" in answer.reason
    (request,) = queue.permissions(open_only=False)
    assert request.decision is Decision.TIMEOUT and request.used
    assert status_of(queue, "fetch") == Status.PASSING


def test_a_person_approves_a_waiting_request_and_the_session_goes_on(queue: FeatureQueue) -> None:
    queue.import_specs([FeatureSpec(name="deploy")])
    answers = []

    def approve_when_asked() -> None:
        for _ in range(400):
            open_requests = queue.permissions()
            if open_requests:
                queue.decide_permission(open_requests[0].id, True, by="test")
                return
            threading.Event().wait(0.05)  # polled: the request appears when the session asks

    async def deploys(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        assert task.ask_permission is not None
        answers.append(await task.ask_permission("Bash", {"command": "npm publish"}))
        return await passes(task, runner)

    person = threading.Thread(target=approve_when_asked)
    person.start()
    supervise(queue, ScriptedRunner(queue, deploys), permission_timeout_seconds=60)
    person.join()
    assert [a.allowed for a in answers] == [True]
    assert status_of(queue, "deploy") == Status.PASSING


def test_a_stop_request_in_the_database_stops_the_session_and_fails_the_feature(queue: FeatureQueue) -> None:
    queue.import_specs([FeatureSpec(name="endless"), FeatureSpec(name="requeued")])
    seen: dict[str, str | None] = {}

    async def runs_until_stopped(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        assert task.steering is not None
        if task.feature_name in seen:
            return await passes(task, runner)  # the requeued feature's next attempt
        requeue = task.feature_name == "requeued"
        await asyncio.to_thread(
            queue.request_control, task.feature_id, "stop", f"stop {task.feature_name}", requeue=requeue
        )
        await asyncio.wait_for(task.steering.stopped.wait(), 10)  # delivered by the supervisor's control job
        seen[task.feature_name] = task.steering.stop_reason
        return AgentOutcome(Ending.STOPPED, task.steering.stop_reason or "", cost_usd=0.02, model=task.model)

    summary, _ = supervise(queue, ScriptedRunner(queue, runs_until_stopped))
    assert seen == {"endless": "stop endless", "requeued": "stop requeued"}
    report = {f.name: f for f in queue.status_report().features}
    assert (report["endless"].status, report["endless"].notes) == (Status.FAILED, "stopped: stop endless")
    assert report["endless"].cost_usd == 0.02  # what the stopped session spent is kept
    assert report["requeued"].status == Status.PASSING
    assert [r.outcome for r in queue.runs(report["requeued"].id)] == ["stopped", "passing"]
    assert report["requeued"].attempts == 1  # the stopped attempt was given back, not counted
    assert summary.exit_code == 1
    handled = [queue.control(i) for i in (1, 2)]
    assert sorted(r.result or "" for r in handled) == ["failed", "pending"]


def test_each_session_is_briefed_for_its_categorys_role(queue: FeatureQueue) -> None:
    queue.import_specs([FeatureSpec(name="tables", category="Database"), FeatureSpec(name="misc", category="")])
    runner = ScriptedRunner(queue)
    supervise(queue, runner, roles={"database": "Migrations must be reversible."})
    prompts = {t.feature_name: t.system_append or "" for t in runner.tasks}
    assert "Your role (database):\nMigrations must be reversible." in prompts["tables"]
    assert "Your role" not in prompts["misc"]
    assert "ask_question" in prompts["misc"]  # the protocol itself is always there
