"""Commands for the people in the loop: questions, answers, permissions, stop and nudge.

Each writes to the queue's database, so it reaches a feature run by any supervisor sharing it;
stop and nudge wait briefly for the supervisor running the feature to act and say what it did.
"""

from __future__ import annotations

import json

from api.errors import InputError
from api.queue import FeatureQueue
from api.records import ControlRequest, Decision, PermissionRecord, QuestionRecord
from supervisor.commands import open_queue
from supervisor.config import Settings

CONTROL_WAIT_S = 10.0  # the owning supervisor acts within 2 s; a stop then winds its session down


def _who() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001 - no user name in a bare container: the host is enough
        return socket.gethostname()


def cmd_questions(settings: Settings, as_json: bool) -> int:
    questions = open_queue(settings, must_exist=True).questions()
    if as_json:
        print(json.dumps({"questions": [q.to_json() for q in questions]}, indent=2))
        return 0
    if not questions:
        print("no open questions")
        return 0
    for q in questions:
        print(question_line(q))
    print(f'\nanswer with: agent-manager answer ID "text" --project-dir {settings.project_dir}')
    return 0


def question_line(q: QuestionRecord) -> str:
    return f"#{q.feature_id} {q.feature_name} (asked {q.asked_at:%Y-%m-%d %H:%M} UTC): {q.question}"


def cmd_answer(settings: Settings, feature_id: int, text: str) -> int:
    answered = open_queue(settings, must_exist=True).answer(feature_id, text, by=_who())
    print(f"answered feature #{feature_id} ({answered.feature_name}); its session resumes with the answer")
    return 0


def cmd_permissions(settings: Settings, as_json: bool) -> int:
    requests = open_queue(settings, must_exist=True).permissions()
    if as_json:
        print(json.dumps({"permission_requests": [r.to_json() for r in requests]}, indent=2))
        return 0
    if not requests:
        print("no open permission requests")
        return 0
    for r in requests:
        print(permission_line(r))
    print("\ndecide with: agent-manager approve REQUEST_ID / agent-manager deny REQUEST_ID [--reason TEXT]")
    return 0


def permission_line(r: PermissionRecord) -> str:
    return f"request {r.id}: feature #{r.feature_id} {r.feature_name} asks to run {r.summary}"


def cmd_decide(settings: Settings, request_id: int, allow: bool, reason: str | None) -> int:
    decided = open_queue(settings, must_exist=True).decide_permission(request_id, allow, reason, by=_who())
    verb = "approved" if decided.decision is Decision.ALLOW else "denied"
    print(f"{verb} request {request_id}: {decided.summary} (feature #{decided.feature_id})")
    return 0


def cmd_stop(settings: Settings, feature_id: int, reason: str | None, requeue: bool) -> int:
    queue = open_queue(settings, must_exist=True)
    request = queue.request_control(feature_id, "stop", reason or "", requeue=requeue, by=_who())
    done = request if request.handled_at is not None else _wait_handled(queue, request)
    if done is None:
        print(f"stop of feature #{feature_id} requested; the supervisor running it acts on it within seconds")
        return 0
    print(f"feature #{feature_id}: stopped ({done.result})")
    return 0


def cmd_nudge(settings: Settings, feature_id: int, text: str) -> int:
    queue = open_queue(settings, must_exist=True)
    request = queue.request_control(feature_id, "nudge", text, by=_who())
    done = _wait_handled(queue, request)
    if done is None:
        print(f"message for feature #{feature_id} stored; the supervisor running it passes it on within seconds")
        return 0
    if done.result and done.result.startswith("not delivered"):
        raise InputError(f"feature #{feature_id}: {done.result}")
    print(f"feature #{feature_id}: {done.result}")
    return 0


def _wait_handled(queue: FeatureQueue, request: ControlRequest) -> ControlRequest | None:
    """The request once its supervisor handled it, or None after CONTROL_WAIT_S (it still will)."""
    return queue.wait_control(request.id, CONTROL_WAIT_S)
