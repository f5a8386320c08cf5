"""A brain that plays well-behaved coding agents against agent-manager's MCP tools.

Every reply is decided from the conversation in the request (so a resumed session carries on
where it was): feature_get, then Write the feature's file with the CLI's own tool, then
feature_release passing. Hooks per feature name change what one agent does, and so do
directives in the feature's description (see `parse_directives` and NOTES.md): ask a question,
use a tool that needs a person's permission, take many turns. Messages from the operator
(hook context or a prompt) cut the turns short and are written into the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.scripted_model.messages import Reply, Request, _blocks, _content_text, _is_reminder

TOOL = "mcp__agent-manager__"
ASK = TOOL + "ask_question"
OPERATOR = "Message from your operator: "
MAX_TURNS = 500
WAITING = "Waiting for an answer."
# The results a call gets when its session ends under it (a killed supervisor), depending on which
# goes first: the CLI fills one in on resume, or the permission stream it waited on closes.
INTERRUPTED_CALL = ("[Tool call interrupted", "Tool permission request failed")

# [kind: argument], the argument may hold one level of brackets (a JSON array, "[red] or blue").
_DIRECTIVE_RE = re.compile(r"\[(ask|bash|tool|turns|sleep):\s*((?:[^\[\]]|\[[^\[\]]*\])*)\]", re.IGNORECASE)
# An operator's message runs to the next one, a blank line (the CLI may append its own paragraphs
# to a hook's context), the end of a <system-reminder> or the end of its text block.
_OPERATOR_RE = re.compile(
    r"Message from your operator: (.*?)(?=Message from your operator: |\n\s*\n|</system-reminder>|\Z)", re.DOTALL
)


@dataclass
class Call:
    name: str
    input: dict[str, Any]
    prompt_index: int  # which user prompt (task, reminder, retry) this call answers
    result: str | None = None
    is_error: bool = False
    operator_before: int = 0  # how many operator messages the agent had seen when it made this call


@dataclass
class Convo:
    """What a session has done so far, read from the request's messages (so resumes see it too)."""

    prompts: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    operator: list[str] = field(default_factory=list)  # distinct operator messages, in order of arrival
    replies: list[str] = field(default_factory=list)  # the agent's own text blocks

    @property
    def feature(self) -> dict[str, Any] | None:
        got = [c for c in self.calls if c.name == TOOL + "feature_get" and c.result and not c.is_error]
        result = got[-1].result if got else None
        return json.loads(result) if result else None

    def current(self) -> list[Call]:
        """Calls made since the last prompt."""
        return [c for c in self.calls if c.prompt_index == len(self.prompts) - 1]

    def succeeded(self, name: str, *, now: bool = False) -> list[Call]:
        calls = self.current() if now else self.calls
        return [c for c in calls if c.name == name and c.result is not None and not c.is_error]


def operator_messages(text: str) -> list[str]:
    """The operator's messages in a text, each on one line."""
    return [m.strip().replace("\n", " ") for m in _OPERATOR_RE.findall(text) if m.strip()]


def read(req: Request) -> Convo:
    convo = Convo()
    by_id: dict[str, Call] = {}
    for message in req.messages:
        blocks = _blocks(message.get("content"))
        if message.get("role") == "assistant":
            for block in blocks:
                if block.get("type") == "tool_use":
                    call = Call(block["name"], block.get("input") or {}, len(convo.prompts) - 1)
                    call.operator_before = len(convo.operator)
                    by_id[block["id"]] = call
                    convo.calls.append(call)
                elif block.get("type") == "text":
                    convo.replies.append(block.get("text", ""))
            continue
        # Operator messages come as hook context (a role=system message after a tool result) or
        # as a prompt; anything the agent is shown counts.
        for text in (_content_text([b]) for b in blocks):
            convo.operator += [m for m in operator_messages(text) if m not in convo.operator]
        results = [b for b in blocks if b.get("type") == "tool_result"]
        for block in results:
            answered = by_id.get(block.get("tool_use_id", ""))
            if answered is not None:
                answered.result = _content_text(block.get("content"))
                answered.is_error = bool(block.get("is_error"))
        if not results and message.get("role") == "user":  # not the CLI's own system messages
            text = "\n".join(b.get("text", "") for b in blocks if b.get("type") == "text" and not _is_reminder(b))
            if text.strip():
                convo.prompts.append(text)
    return convo


@dataclass
class Directives:
    """What a feature's description asks of its agent (see `parse_directives`)."""

    ask: str | None = None
    calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # (tool, input, file-line label)
    turns: int = 0
    sleep: float = 0.5

    def sleep_call(self) -> dict[str, Any]:
        return {"command": f"sleep {self.sleep:g}", "description": "working"}


def parse_directives(description: str) -> Directives:
    """`[ask: QUESTION]`, `[bash: COMMAND]`, `[tool: NAME {JSON}]`, `[turns: N]`, `[sleep: S]`,
    anywhere in the text. The first ask counts; the last turns and sleep; anything unparsable
    (or any other bracketed text) is ignored."""
    found = Directives()
    for kind, arg in _DIRECTIVE_RE.findall(description):
        kind, arg = kind.lower(), arg.strip()
        if kind == "ask" and arg and found.ask is None:
            found.ask = arg
        elif kind == "bash" and arg:
            found.calls.append(("Bash", {"command": arg, "description": "directive"}, "bash"))
        elif kind == "tool" and arg:
            name, *raw = arg.split(None, 1)
            try:
                args = json.loads(raw[0]) if raw else {}
            except ValueError:
                continue
            if isinstance(args, dict):
                found.calls.append((name, args, f"tool {name}"))
        elif kind == "turns" and arg.isdigit():
            found.turns = min(int(arg), MAX_TURNS)
        elif kind == "sleep":
            try:
                seconds = float(arg)
            except ValueError:
                continue
            if math.isfinite(seconds) and seconds >= 0:
                found.sleep = seconds
    return found


def get_feature() -> Reply:
    return Reply.tool_use(TOOL + "feature_get", {})


def write(req: Request, relative: str, content: str) -> Reply:
    return Reply.tool_use("Write", {"file_path": os.path.join(req.working_dir() or "", relative), "content": content})


def release(feature: dict[str, Any], status: str = "passing", notes: str | None = None) -> Reply:
    notes = notes if notes is not None else f"built {feature['name']}"
    return Reply.tool_use(TOOL + "feature_release", {"feature_id": feature["id"], "status": status, "notes": notes})


def _one_line(text: str | None) -> str:
    return (text or "").strip().replace("\n", " ")


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


class Agents:
    """A brain that plays well-behaved agents: feature_get, Write a file, feature_release passing.

    ``hooks[name](req, convo, feature)`` may return a reply to change what the agent of one
    feature does; returning None falls through to the default behaviour, which follows the
    directives in the feature's description (NOTES.md, "Directives"). The brain records, per
    feature, when its agent first saw its assignment, when its release was confirmed and which
    sessions played it.
    """

    def __init__(
        self,
        hooks: dict[str, Callable[[Request, Convo, dict], Reply | None]] | None = None,
        *,
        think_seconds: float = 0.0,
        file_for: Callable[[dict], tuple[str, str]] | None = None,
    ) -> None:
        self.hooks = hooks or {}
        self.think_seconds = think_seconds  # the demo slows down so that the live view has something to show
        self.file_for = file_for or (lambda feature: (f"{feature['name']}.txt", f"{feature['name']}\n"))
        self.lock = threading.Lock()
        self.assigned_at: dict[str, float] = {}
        self.released_at: dict[str, float] = {}
        self.session_feature: dict[str, str] = {}
        self.sessions_by_feature: dict[str, list[str]] = {}  # feature -> session keys, in order of first sight
        self.prompts: dict[str, list[str]] = {}  # feature -> every prompt its sessions were given
        self.system_prompts: dict[str, str] = {}  # feature -> the system prompt of its latest request

    def __call__(self, req: Request) -> Reply:
        if self.think_seconds:
            time.sleep(self.think_seconds)
        convo = read(req)
        feature = convo.feature
        if feature is None:
            return get_feature()
        name = feature["name"]
        with self.lock:
            self.assigned_at.setdefault(name, time.monotonic())
            self.session_feature[req.session_key] = name
            self.system_prompts[name] = req.system_text()
            sessions = self.sessions_by_feature.setdefault(name, [])
            if req.session_key not in sessions:
                sessions.append(req.session_key)
            if len(convo.prompts) > len(self.prompts.get(name, [])):  # resumed sessions carry the history
                self.prompts[name] = convo.prompts
            if convo.succeeded(TOOL + "feature_release"):
                self.released_at.setdefault(name, time.monotonic())
        hook = self.hooks.get(name)
        reply = hook(req, convo, feature) if hook else None
        if reply is not None:
            return reply
        directives = parse_directives(str(feature.get("description") or ""))
        done = _matched(convo, directives)
        written = [c for c in convo.succeeded("Write") if all(c is not d for d in done)]
        if not written:
            step = self._before_writing(req, convo, directives, done)
            if isinstance(step, Reply):
                return step
            relative, content = self.file_for(feature)
            if step:  # the directives' and the operator's lines, after the usual content
                content += ("\n" if content and not content.endswith("\n") else "") + "".join(f"{s}\n" for s in step)
            return write(req, relative, content)
        # Operator messages that came after the file was written are only acknowledged.
        noted = {line[7:] for reply in convo.replies for line in reply.splitlines() if line.startswith("noted: ")}
        late = [m for m in convo.operator[written[0].operator_before :] if m not in noted]
        follow_up = bool(convo.prompts) and OPERATOR in convo.prompts[-1] and convo.succeeded(TOOL + "feature_release")
        if not convo.succeeded(TOOL + "feature_release", now=True) and not follow_up:
            return release(feature)
        return Reply.text("\n".join(f"noted: {m}" for m in late)) if late else Reply.text(f"{name} is done.")

    def _before_writing(
        self, req: Request, convo: Convo, directives: Directives, done: list[Call | None]
    ) -> Reply | list[str]:
        """The next step before the file is written, or the lines the file gets."""
        lines: list[str] = []
        if directives.ask is not None:
            asked = [c for c in convo.calls if c.name == ASK]
            if not asked and ASK not in req.tools:
                lines.append(f"question refused: {ASK} is not offered")
            elif not asked:
                return Reply.tool_use(ASK, {"question": directives.ask})
            elif asked[0].is_error or asked[0].result is None:
                lines.append(f"question refused: {_one_line(asked[0].result)}")
            else:
                # The first prompt after the question that is not just a message from the operator
                # (the supervisor sends a nudge that found no tool result to ride on as a prompt).
                later = convo.prompts[asked[0].prompt_index + 1 :]
                answers = [p for p in later if not p.lstrip().startswith(OPERATOR)]
                if not answers:
                    return Reply.text(WAITING)
                lines.append("answer: " + answers[0].replace("\n", " "))
        for (tool, args, label), call in zip(directives.calls, done, strict=True):
            if call is None and tool not in req.tools:
                lines.append(f"{label}: denied: {tool} is not offered")
            elif call is None:
                return Reply.tool_use(tool, args)
            else:
                lines.append(f"{label}: {'denied' if call.is_error else 'allowed'}: {_first_line(call.result)}")
        sleeps = [c for c in convo.calls if c.name == "Bash" and c.input == directives.sleep_call()]
        if len(sleeps) < directives.turns and not convo.operator and "Bash" in req.tools:
            return Reply.tool_use("Bash", directives.sleep_call())
        lines += [f"operator: {m}" for m in convo.operator]
        return lines


def _matched(convo: Convo, directives: Directives) -> list[Call | None]:
    """The call made for each of the directives' tool calls (None: not made yet), in order. A
    call its session ended during (resumed afterwards) is not made: a careful agent makes it again."""
    unused = [c for c in convo.calls if c.result is not None and not _interrupted(c)]
    matched: list[Call | None] = []
    for tool, args, _label in directives.calls:
        call = next((c for c in unused if c.name == tool and c.input == args), None)
        if call is not None:
            unused.remove(call)
        matched.append(call)
    return matched


def _interrupted(call: Call) -> bool:
    return call.is_error and (call.result or "").startswith(INTERRUPTED_CALL)
