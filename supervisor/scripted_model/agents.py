"""A brain that plays well-behaved coding agents against agent-manager's MCP tools.

Every reply is decided from the conversation in the request (so a resumed session carries on
where it was): feature_get, then Write the feature's file with the CLI's own tool, then
feature_release passing. Hooks per feature name change what one agent does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.scripted_model.messages import Reply, Request, _blocks, _content_text, _is_reminder

TOOL = "mcp__agent-manager__"


@dataclass
class Call:
    name: str
    input: dict[str, Any]
    prompt_index: int  # which user prompt (task, reminder, retry) this call answers
    result: str | None = None
    is_error: bool = False


@dataclass
class Convo:
    """What a session has done so far, read from the request's messages (so resumes see it too)."""

    prompts: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

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


def read(req: Request) -> Convo:
    convo = Convo()
    by_id: dict[str, Call] = {}
    for message in req.messages:
        blocks = _blocks(message.get("content"))
        if message.get("role") == "assistant":
            for block in blocks:
                if block.get("type") == "tool_use":
                    call = Call(block["name"], block.get("input") or {}, len(convo.prompts) - 1)
                    by_id[block["id"]] = call
                    convo.calls.append(call)
            continue
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


def get_feature() -> Reply:
    return Reply.tool_use(TOOL + "feature_get", {})


def write(req: Request, relative: str, content: str) -> Reply:
    return Reply.tool_use("Write", {"file_path": os.path.join(req.working_dir() or "", relative), "content": content})


def release(feature: dict[str, Any], status: str = "passing", notes: str | None = None) -> Reply:
    notes = notes if notes is not None else f"built {feature['name']}"
    return Reply.tool_use(TOOL + "feature_release", {"feature_id": feature["id"], "status": status, "notes": notes})


class Agents:
    """A brain that plays well-behaved agents: feature_get, Write a file, feature_release passing.

    ``hooks[name](req, convo, feature)`` may return a reply to change what the agent of one
    feature does; returning None falls through to the default behaviour. The brain records,
    per feature, when its agent first saw its assignment and when its release was confirmed.
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
        self.prompts: dict[str, list[str]] = {}  # feature -> every prompt its sessions were given

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
            if len(convo.prompts) > len(self.prompts.get(name, [])):  # resumed sessions carry the history
                self.prompts[name] = convo.prompts
            if convo.succeeded(TOOL + "feature_release"):
                self.released_at.setdefault(name, time.monotonic())
        hook = self.hooks.get(name)
        reply = hook(req, convo, feature) if hook else None
        if reply is not None:
            return reply
        if not convo.succeeded("Write"):
            return write(req, *self.file_for(feature))
        if not convo.succeeded(TOOL + "feature_release", now=True):
            return release(feature)
        return Reply.text(f"{name} is done.")
