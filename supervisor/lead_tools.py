"""The lead agent's MCP tools (`agent-manager lead`, stdio, server name `agent-manager-lead`).

A lead Claude Code session hands features to the queue, waits for them, reads their results,
answers their questions and permission requests, and stops, nudges or resumes them. A
serve-mode supervisor in the same process (supervisor.lead) runs the features; any other
supervisor sharing the database may run them too, so every tool reads and writes the database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from api.errors import AgentManagerError
from api.estimates import cost_json
from api.features_file import parse_features
from api.queue import FeatureQueue
from api.records import Decision, RunRecord, Status

SERVER_NAME = "agent-manager-lead"
INSTRUCTIONS = (
    "Run coding work through agent-manager's queue of parallel Claude agents. enqueue_features adds "
    "features (name, description, depends_on...); wait returns when the first (or all) of them finished "
    "or needs a person; feature_result and peek read what happened; answer questions and permission "
    "requests with answer and approve_permission; stop_feature, nudge_feature and resume_feature steer them."
)
WAIT_POLL_S = 0.25
MAX_WAIT_S = 3600.0
MAX_PEEK_LINES = 400

T = TypeVar("T")

FeatureId = Annotated[int, Field(strict=True, ge=1, le=2**31 - 1, description="A feature id from enqueue_features.")]


@dataclass
class LeadContext:
    """What the lead tools share: the queue, where transcripts are, and the features this lead enqueued."""

    queue: FeatureQueue
    lead_id: str
    enqueued: list[int] = field(default_factory=list)
    poke: Callable[[], None] = lambda: None  # wakes the in-process supervisor at once
    stopped: Callable[[], str | None] = lambda: None  # why the supervisor stopped, if it did


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a queue verb on a worker thread; api errors become tool errors with their one line."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except AgentManagerError as exc:
        raise ToolError(exc.message) from None


def build_lead_server(ctx: LeadContext) -> MCPServer:
    """The lead's server with its ten tools registered."""
    server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")
    queue = ctx.queue

    async def enqueue_features(
        features: Annotated[
            list[dict[str, Any]],
            Field(
                description=(
                    "Features in the features.json schema: name (required, unique), description, category, "
                    "priority, depends_on (names, in this list or already in the queue), steps, verify, model, "
                    "max_attempts."
                )
            ),
        ],
    ) -> dict[str, Any]:
        """Add features to the queue, all or nothing (the same checks as `agent-manager import`).

        Returns their ids; agents start on those whose dependencies pass within about a second.
        """
        names = [f.get("name") for f in features if isinstance(f, dict)]
        raw = json.dumps(features).encode()
        known = await _call(queue.dependency_map)
        taken = [n for n in names if isinstance(n, str) and n in known]
        if taken:
            raise ToolError(
                f"already in the queue: {', '.join(map(repr, taken))}; use new names, or resume_feature to continue one"
            )
        specs = await _call(parse_features, raw, source="enqueue_features", known_edges=known)
        report = await _call(queue.import_specs, specs)
        ids = await _call(_ids_of, queue, list(report.added))
        ctx.enqueued.extend(ids[name] for name in report.added)
        ctx.poke()
        return {"ids": [ids[name] for name in report.added], "names": list(report.added)}

    async def wait(
        feature_ids: Annotated[
            list[int] | None, Field(description="Features to wait for; default: every feature this lead enqueued.")
        ] = None,
        mode: Annotated[
            Literal["first", "all"],
            Field(description="first: return when any is done or needs a person; all: when all are."),
        ] = "first",
        timeout_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S, description="Seconds to wait at most.")] = 60,
    ) -> dict[str, Any]:
        """Wait until the first (or all) of the features finished or needs a person, or the timeout.

        Returns finished (every given feature that is passing or failed, with notes, cost,
        transcript, session and commit), needs_input (open questions, for answer),
        permission_requests (for approve_permission) and timed_out.
        """
        ids = list(feature_ids) if feature_ids is not None else list(ctx.enqueued)
        if not ids:
            raise ToolError("no features to wait for: enqueue_features first, or pass feature_ids")
        deadline = time.monotonic() + timeout_s
        while True:
            state = await _call(_wait_state, queue, ids)
            settled = {e["id"] for e in state["finished"]} | {e["feature_id"] for e in state["needs_input"]}
            settled |= {e["feature_id"] for e in state["permission_requests"]}
            done = bool(settled) if mode == "first" else settled >= set(ids)
            if done or time.monotonic() >= deadline:
                return state | {"timed_out": not done}
            stopped = ctx.stopped()
            if stopped:
                raise ToolError(f"the supervisor of this lead server stopped: {stopped}")
            await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    async def feature_result(feature_id: FeatureId) -> dict[str, Any]:
        """A feature's status, notes, every attempt (model, turns, tokens, cost, outcome), transcript
        path and the files its agents wrote."""
        return await _call(_result, queue, feature_id)

    async def peek(
        feature_id: FeatureId,
        lines: Annotated[int, Field(ge=1, le=MAX_PEEK_LINES, description="How many of the latest lines.")] = 40,
    ) -> dict[str, Any]:
        """The latest lines of a running or finished feature's transcript, readable: its text and tool calls."""
        return await _call(_peek, queue, feature_id, lines)

    async def resume_feature(
        feature_id: FeatureId,
        prompt: Annotated[str, Field(min_length=1, max_length=20_000, description="The follow-up request.")],
    ) -> dict[str, Any]:
        """Give a finished feature (passing or failed) a follow-up in the same session: it becomes
        pending as a new attempt that resumes its conversation with ``prompt``."""
        session = await _call(queue.resume_feature, feature_id, prompt, ctx.lead_id)
        if feature_id not in ctx.enqueued:
            ctx.enqueued.append(feature_id)
        ctx.poke()
        return {"feature_id": feature_id, "status": "pending", "resumes_session": session}

    async def answer(
        feature_id: FeatureId,
        text: Annotated[str, Field(min_length=1, max_length=20_000, description="The answer to its question.")],
    ) -> dict[str, Any]:
        """Answer a feature's open question: its next attempt resumes the asking session with the answer."""
        asked = await _call(queue.answer, feature_id, text, ctx.lead_id)
        ctx.poke()
        return {"feature_id": feature_id, "question": asked.question, "resumes_session": asked.session_id}

    async def approve_permission(
        request_id: Annotated[int, Field(strict=True, ge=1, description="The request's id from wait.")],
        allow: Annotated[bool, Field(description="true to allow the tool call, false to deny it.")],
        reason: Annotated[str | None, Field(max_length=2000, description="Told to the agent.")] = None,
    ) -> dict[str, Any]:
        """Allow or deny a tool call an agent is waiting to make."""
        decided = await _call(queue.decide_permission, request_id, allow, reason, ctx.lead_id)
        return {"request_id": request_id, "decision": decided.decision, "tool": decided.summary}

    async def stop_feature(
        feature_id: FeatureId,
        reason: Annotated[str, Field(max_length=2000, description="Why; kept in the feature's notes.")],
        requeue: Annotated[bool, Field(description="true: back to pending instead of failed.")] = False,
    ) -> dict[str, Any]:
        """Stop a running feature's session (whichever supervisor runs it): failed with the reason, or pending."""
        request = await _call(queue.request_control, feature_id, "stop", reason, requeue=requeue, by=ctx.lead_id)
        done = await _handled(queue, request.id) if request.handled_at is None else request
        return {"feature_id": feature_id, "stopped": done is not None, "status": done.result if done else "stopping"}

    async def nudge_feature(
        feature_id: FeatureId,
        text: Annotated[str, Field(min_length=1, max_length=20_000, description="What to tell its agent.")],
    ) -> dict[str, Any]:
        """Tell a running feature's agent something; it arrives at the agent's next turn."""
        request = await _call(queue.request_control, feature_id, "nudge", text, by=ctx.lead_id)
        done = await _handled(queue, request.id)
        return {"feature_id": feature_id, "delivered": done.result if done else "queued"}

    async def queue_status() -> dict[str, Any]:
        """Counts by status, one line per unfinished feature, and the cost so far with a forecast
        (an estimate) for the unfinished."""
        return await _call(_queue_status, queue)

    for tool in (
        enqueue_features,
        wait,
        feature_result,
        peek,
        resume_feature,
        answer,
        approve_permission,
        stop_feature,
        nudge_feature,
        queue_status,
    ):
        server.add_tool(tool)
    return server


# -- reads (on worker threads) ------------------------------------------------------------------


def _ids_of(queue: FeatureQueue, names: list[str]) -> dict[str, int]:
    report = queue.status_report()
    return {f.name: f.id for f in report.features if f.name in names}


def _wait_state(queue: FeatureQueue, ids: list[int]) -> dict[str, Any]:
    report = queue.status_report()
    by_id = {f.id: f for f in report.features}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise AgentManagerError(f"no feature with id {', '.join(map(str, unknown))}")
    finished = []
    for fid in ids:
        view = by_id[fid]
        if not Status(view.status).finished:
            continue
        last = _last_run(queue.runs(fid))
        finished.append(
            {
                "id": fid,
                "name": view.name,
                "status": view.status,
                "notes": view.notes,
                "cost_usd": round(view.cost_usd, 6),
                "transcript_path": last.transcript_path if last else None,
                "session_id": last.session_id if last else None,
                "commit": last.commit_sha if last else None,
            }
        )
    wanted = set(ids)
    questions = [
        {"feature_id": q.feature_id, "name": q.feature_name, "question": q.question, "question_id": q.id}
        for q in queue.questions()
        if q.feature_id in wanted and by_id[q.feature_id].status == Status.NEEDS_INPUT
    ]
    permissions = [
        {"request_id": p.id, "feature_id": p.feature_id, "name": p.feature_name, "tool": p.tool_name, "call": p.summary}
        for p in queue.permissions()
        if p.feature_id in wanted and p.decision is Decision.OPEN
    ]
    return {"finished": finished, "needs_input": questions, "permission_requests": permissions}


def _last_run(runs: list[RunRecord]) -> RunRecord | None:
    return runs[-1] if runs else None


def _result(queue: FeatureQueue, feature_id: int) -> dict[str, Any]:
    feature = queue.feature_context(feature_id)
    runs = queue.runs(feature_id)
    view = next(f for f in queue.status_report().features if f.id == feature_id)
    written: set[str] = set()
    for run in runs:
        written.update(queue.written_paths(run.id))
    last = _last_run(runs)
    return {
        "id": feature_id,
        "name": feature.name,
        "status": view.status,
        "notes": feature.notes,
        "cost_usd": round(view.cost_usd, 6),
        "attempts": [
            {
                "attempt": r.attempt,
                "model": r.model,
                "turns": r.num_turns,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "cost_usd": r.cost_usd,
                "outcome": r.outcome or ("running" if r.ended_at is None else None),
                "error": r.error,
                "session_id": r.session_id,
                "commit": r.commit_sha,
            }
            for r in runs
        ],
        "transcript_path": last.transcript_path if last else None,
        "files_written": sorted(written),
    }


def _peek(queue: FeatureQueue, feature_id: int, lines: int) -> dict[str, Any]:
    from supervisor.display import transcript_line  # the same rendering as `agent-manager logs`

    feature = queue.feature_context(feature_id)
    last = _last_run(queue.runs(feature_id))
    if last is None or not last.transcript_path or not Path(last.transcript_path).exists():
        return {"id": feature_id, "status": feature.status, "lines": [], "note": "no transcript yet"}
    shown: list[str] = []
    with open(last.transcript_path, encoding="utf-8") as transcript:
        for raw in transcript:
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                continue  # the line being written
            text = transcript_line(entry) if isinstance(entry, dict) else ""
            if text:
                shown.append(text)
    return {
        "id": feature_id,
        "status": feature.status,
        "attempt": last.attempt,
        "running": last.ended_at is None,
        "lines": shown[-lines:],
    }


def _queue_status(queue: FeatureQueue) -> dict[str, Any]:
    report = queue.status_report()
    unfinished = [
        f"#{f.id} {f.name}: {f.status}" + (f" ({f.notes.splitlines()[0][:100]})" if f.notes else "")
        for f in report.features
        if not Status(f.status).finished
    ]
    return {"counts": report.counts, "unfinished": unfinished, "cost": cost_json(report.features)}


async def _handled(queue: FeatureQueue, request_id: int, within: float = 10.0) -> Any:
    """The stop/nudge request once its supervisor acted on it, or None after ``within`` seconds."""
    return await _call(queue.wait_control, request_id, within, WAIT_POLL_S)
