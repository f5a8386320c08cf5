"""Scripted brains for FakeModelServer.

A `ScriptedBrain` plays a list of steps, one reply per agent-loop request, separately for every
session. A step is `(req, state) -> Reply | None`; None skips to the next step for the same
request (a conditional step). Helpers below build the common steps:

    brain = ScriptedBrain([
        use_tool("mcp__agent-manager__feature_get", {}),      # via ToolSearch if deferred
        lambda req, st: Reply.text(req.last_tool_results()[0].content_text),
    ])
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.scripted_model.messages import Reply, Request, ToolResult

# --------------------------------------------------------------------------------------------


@dataclass
class SessionState:
    """Per-session progress of a ScriptedBrain; `data` is free for steps to use."""

    session: str
    step: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    tool_results: list[ToolResult] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    last_digest: str | None = None


Step = Callable[[Request, SessionState], Reply | None]
StepLike = Step | Sequence[Step]


def _flatten(steps: Iterable[StepLike]) -> list[Step]:
    flat: list[Step] = []
    for step in steps:
        if callable(step):
            flat.append(step)
        else:
            flat.extend(_flatten(step))
    return flat


class ScriptedBrain:
    """Plays `steps` for each session; once they run out it ends the turn with `final_text`."""

    def __init__(self, steps: Iterable[StepLike], final_text: str = "Done.") -> None:
        self.steps = _flatten(steps)
        self.final_text = final_text
        self._states: dict[str, SessionState] = {}
        self._lock = threading.Lock()

    def state(self, session: str) -> SessionState:
        with self._lock:
            return self._states.setdefault(session, SessionState(session))

    @property
    def states(self) -> dict[str, SessionState]:
        with self._lock:
            return dict(self._states)

    def tool_results(self, tool_name: str | None = None) -> list[ToolResult]:
        """Every tool result any session sent back, optionally only those of one tool."""
        results = [r for st in self.states.values() for r in st.tool_results]
        return [r for r in results if tool_name is None or r.tool_name == tool_name]

    def __call__(self, req: Request) -> Reply:
        state = self.state(req.session_key)
        digest = req.digest()
        # The server already answers retries from its memo; this keeps a brain used with
        # memoize=False (or called directly) from skipping a step on a retried request.
        if state.last_digest == digest and state.replies:
            return state.replies[-1]
        state.tool_results.extend(req.last_tool_results())
        reply = None
        while reply is None and state.step < len(self.steps):
            reply = self.steps[state.step](req, state)
            state.step += 1
        if reply is None:
            reply = Reply.text(self.final_text)
        state.last_digest = digest
        state.replies.append(reply)
        return reply


# --------------------------------------------------------------------------------------------
# Step helpers

Input = dict[str, Any] | Callable[[Request, SessionState], dict[str, Any]]


def say(text: str) -> Step:
    """End the turn with this text."""
    return lambda req, state: Reply.text(text)


def call(name: str, input: Input) -> Step:
    """Call a tool the request offers (input may be computed from the request and state)."""

    def step(req: Request, state: SessionState) -> Reply:
        args = input(req, state) if callable(input) else input
        return Reply.tool_use(name, args)

    return step


def load_tool(name: str) -> Step:
    """ToolSearch for `name` unless the request already offers it (ENABLE_TOOL_SEARCH=false
    lists MCP tools directly; once loaded, a deferred tool is offered too)."""

    def step(req: Request, state: SessionState) -> Reply | None:
        if name in req.tools:
            return None
        return Reply.tool_use("ToolSearch", {"query": f"select:{name}", "max_results": 5})

    return step


def use_tool(name: str, input: Input) -> list[Step]:
    """Call a tool by name whether or not it is deferred behind ToolSearch."""
    return [load_tool(name), call(name, input)]


def resolve_path(req: Request, path: str) -> str:
    """Make a path absolute against the session's working directory (from the prompt)."""
    if os.path.isabs(path):
        return path
    workdir = req.working_dir()
    if workdir is None:
        raise ValueError("the request names no 'Primary working directory'")
    return os.path.join(workdir, path)


def write_file(path: str, content: str) -> Step:
    """Call the CLI's Write tool (which needs an absolute path) for `path` in the working dir."""
    return call("Write", lambda req, state: {"file_path": resolve_path(req, path), "content": content})


# --------------------------------------------------------------------------------------------
# Ready-made brains


def write_file_brain(path: str, content: str, final_text: str | None = None) -> ScriptedBrain:
    return ScriptedBrain([write_file(path, content)], final_text or f"Wrote {path}.")


def mcp_call_brain(tool: str, input: dict[str, Any] | None = None) -> ScriptedBrain:
    """Call one MCP tool (through ToolSearch when deferred), then end quoting its result."""

    def finish(req: Request, state: SessionState) -> Reply:
        results = [r for r in req.last_tool_results() if r.tool_name == tool]
        return Reply.text(results[0].content_text if results else "no result")

    return ScriptedBrain([use_tool(tool, input or {}), finish])


def turns_brain(turns: int) -> ScriptedBrain:
    """`turns` model calls per session: turns-1 Write calls, then a closing text."""
    return ScriptedBrain([write_file(f"turn_{i}.txt", f"turn {i}\n") for i in range(max(0, turns - 1))])


def echo_brain(req: Request) -> Reply:
    return Reply.text(f"echo: {req.first_user_text()}")


SCRIPTS: dict[str, Callable[[str | None], Callable[[Request], Reply]]] = {
    "echo": lambda arg: echo_brain,
    "hello": lambda arg: ScriptedBrain([], final_text=arg or "Hello."),
    "write-file": lambda arg: write_file_brain(arg or "hello.txt", "hello\n"),
    "turns": lambda arg: turns_brain(int(arg or 6)),
}


def make_script(spec: str) -> Callable[[Request], Reply]:
    """Build a brain from "name" or "name:arg", e.g. "turns:6", "write-file:out.txt"."""
    name, _, arg = spec.partition(":")
    if name not in SCRIPTS:
        raise KeyError(f"unknown script {name!r}; known: {', '.join(sorted(SCRIPTS))}")
    return SCRIPTS[name](arg or None)
