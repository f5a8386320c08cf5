"""Feature tools: read the assignment, report a verdict, claim a batch (lead agents)."""

from __future__ import annotations

import functools
from typing import Annotated, Literal

import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from api.identity import ENV_FEATURE_ID
from api.records import Status
from api.verify import VerifyResult, run_verify
from mcp_server import AppContext, tool_errors

MAX_NOTES = 20_000
MAX_BATCH = 50  # api.queue.FeatureQueue.claim_batch refuses more

FeatureId = Annotated[
    int,
    Field(
        strict=True, ge=1, le=2**31 - 1, description="The feature's id, as feature_get or feature_claim_batch gave it."
    ),
]
Verdict = Annotated[
    Literal["passing", "failed", "pending"],
    Field(
        description="passing: done and working; failed: you could not make it work; pending: give it back unfinished"
    ),
]
Notes = Annotated[
    str,
    Field(
        max_length=MAX_NOTES,
        description=(
            "What you did, what is left, and what the next agent should know. Plain text, at most 20000 "
            "characters; optional."
        ),
    ),
]
BatchCount = Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH, description="How many features to claim, 1 to 50.")]


class DependencyNote(TypedDict):
    id: int
    name: str
    status: str
    notes: str


class Assignment(TypedDict):
    id: int
    name: str
    description: str
    category: str
    steps: list[str]
    verify: str | None
    status: str
    attempts: int
    notes: str
    dependencies: list[DependencyNote]


class ReleaseAnswer(TypedDict):
    success: bool
    status: str
    message: str


class BatchFeature(TypedDict):
    id: int
    name: str
    description: str
    category: str
    steps: list[str]
    verify: str | None


def feature_get(ctx: Context[AppContext]) -> Assignment:
    """Get the feature you are assigned to build.

    Returns its id, name, description, category, acceptance steps, verify command, status,
    attempts so far, notes left by earlier attempts, and the notes of the features it
    depends on (read them: they say what is already built). Call this first.
    """
    app = ctx.request_context.lifespan_context
    if app.identity.feature_id is None:
        raise ToolError("no feature is assigned to this session: claim work with feature_claim_batch instead")
    with tool_errors():
        found = app.queue.feature_context(app.identity.feature_id)
    return Assignment(
        id=found.id,
        name=found.name,
        description=found.description,
        category=found.category,
        steps=list(found.steps),
        verify=found.verify,
        status=found.status,
        attempts=found.attempts,
        notes=found.notes,
        dependencies=[DependencyNote(id=d.id, name=d.name, status=d.status, notes=d.notes) for d in found.dependencies],
    )


async def feature_release(
    feature_id: FeatureId, status: Verdict, ctx: Context[AppContext], notes: Notes = ""
) -> ReleaseAnswer:
    """Report your verdict on a feature you hold and stop working on it.

    status "passing": you built it and checked its steps; it counts only if the feature's
    verify command, if it has one, then exits 0. For a feature you claimed with
    feature_claim_batch this server runs that command in the project directory before
    answering: if it fails, the answer has success false with the command's output, and the
    release is a failed attempt (the feature is retried until its attempts run out). For a
    feature you were assigned, the supervisor runs it after your session. status "failed":
    you could not make it work (it may be retried by another attempt). status "pending": give
    it back unfinished, for example when it is blocked on something outside your control.
    Put what you did and what remains in notes: the next agent and the dependent features
    read them. Your file locks on the feature are released with it. You can only release
    your own features: who you are comes from this session (an agent_id argument is ignored).
    """
    app = ctx.request_context.lifespan_context
    checked: list[tuple[str, VerifyResult]] = []

    def verify(command: str) -> VerifyResult:
        # Called by report on its worker thread; the command runs on this server's event loop
        # while the lease keeper goes on renewing the agent's claims.
        env = {ENV_FEATURE_ID: str(feature_id)}  # as the supervisor's verify has it
        result = anyio.from_thread.run(
            run_verify, command, app.identity.files_root, app.identity.verify_timeout_seconds, env
        )
        checked.append((command, result))
        return result

    with tool_errors():
        stored = await anyio.to_thread.run_sync(
            functools.partial(app.queue.report, app.identity.agent_id, feature_id, status, notes, verify=verify)
        )
    if stored == "reported":
        follow_up = {
            Status.PASSING: "the supervisor checks it (it may run the verify command) and records the outcome",
            Status.FAILED: "the supervisor records the failed attempt; the feature may be retried",
            Status.PENDING: "the supervisor puts the feature back in the queue unfinished",
        }[Status(status)]
        message = f"recorded {status!r} for feature #{feature_id}: {follow_up}. Stop working on it now."
        return ReleaseAnswer(success=True, status=stored, message=message)
    if checked and not checked[0][1].passed:
        command, result = checked[0]
        after = (
            "the failed attempt was counted; it is back to pending and will be retried"
            if stored == Status.PENDING
            else f"no attempts left: it is now {stored}"
        )
        message = f"feature #{feature_id} is not passing ({after}): its {result.summary(command)}"
        return ReleaseAnswer(success=False, status=stored, message=message)
    message = f"feature #{feature_id} is now {stored}."
    if checked:
        message = f"verify command `{checked[0][0]}` passed; {message}"
    elif Status(status) is Status.FAILED and stored == Status.PENDING:
        message += " The failed attempt was counted; it will be retried."
    return ReleaseAnswer(success=True, status=stored, message=message)


def feature_claim_batch(count: BatchCount, ctx: Context[AppContext]) -> list[BatchFeature]:
    """Claim up to `count` features that are ready to build (their dependencies pass), best first.

    For a lead agent without an assigned feature that works through features itself. Each
    comes with its acceptance steps and its verify command (null when it has none): passing
    requires that command to exit 0 in the project directory, so run it yourself before you
    report. The claims are yours: they stay yours while this session runs; finish each one
    with feature_release (passing, failed, or pending to give it back). An empty list means
    no feature is ready right now.
    """
    app = ctx.request_context.lifespan_context
    if app.identity.feature_id is not None:
        raise ToolError(
            f"this session is assigned feature #{app.identity.feature_id}: work on it (feature_get) "
            "instead of claiming more"
        )
    with tool_errors():
        claimed = app.queue.claim_batch(count, app.identity.agent_id)
    if claimed:
        app.leases.start()
    return [
        BatchFeature(
            id=c.id, name=c.name, description=c.description, category=c.category, steps=list(c.steps), verify=c.verify
        )
        for c in claimed
    ]


class QuestionAnswer(TypedDict):
    success: bool
    question_id: int
    message: str


Question = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4000,
        description="One question a person can answer, with the options you see and what each implies.",
    ),
]


def ask_question(question: Question, ctx: Context[AppContext]) -> QuestionAnswer:
    """Ask a person a question you cannot answer yourself, and pause your feature until they do.

    For decisions only a person can make (a product choice, a credential, an ambiguous
    requirement), not for things you can find out by reading the code or running it. The
    question is stored, your feature waits for the answer, and this session ends: do not call
    feature_release, just end your turn. Your session is resumed later with the answer, in this
    same conversation, and you carry on from there. Asking uses none of the feature's attempts.
    """
    app = ctx.request_context.lifespan_context
    if app.identity.feature_id is None:
        raise ToolError("ask_question is for agents assigned a feature: a lead agent asks its user directly")
    with tool_errors():
        asked = app.queue.ask(app.identity.agent_id, app.identity.feature_id, question)
    message = (
        f"Question #{asked.id} is recorded and your feature now waits for a person's answer. End your turn now "
        "without calling feature_release: this session will be resumed with the answer."
    )
    return QuestionAnswer(success=True, question_id=asked.id, message=message)


TOOLS = (feature_get, feature_release, feature_claim_batch, ask_question)
