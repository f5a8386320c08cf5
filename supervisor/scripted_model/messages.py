"""What the scripted model sees and says: a parsed Messages API request, the reply a brain gives.

Also how agent-loop requests are told from the CLI's own side requests (titles and the like), and
which session a request belongs to. See NOTES.md for what the CLI sends.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------------------------
# Replies


@dataclass(frozen=True)
class Usage:
    """Token counts reported for one reply; the CLI turns them into total_cost_usd at list prices."""

    input_tokens: int = 100
    output_tokens: int = 50
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(name: str, input: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": input}


@dataclass
class Reply:
    """One assistant message. `stop_reason` defaults to tool_use if any block is a tool_use,
    else end_turn; `usage` defaults to the server's."""

    content: list[dict[str, Any]]
    stop_reason: str | None = None
    usage: Usage | None = None

    def __post_init__(self) -> None:
        if self.stop_reason is None:
            self.stop_reason = "tool_use" if self.tool_uses else "end_turn"

    @classmethod
    def text(cls, text: str, usage: Usage | None = None) -> Reply:
        return cls([text_block(text)], usage=usage)

    @classmethod
    def tool_use(cls, name: str, input: dict[str, Any], text: str | None = None, usage: Usage | None = None) -> Reply:
        blocks = [text_block(text)] if text else []
        return cls([*blocks, tool_use_block(name, input)], usage=usage)

    @classmethod
    def of(cls, *blocks: dict[str, Any], usage: Usage | None = None) -> Reply:
        return cls(list(blocks), usage=usage)

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.content if b.get("type") == "tool_use"]

    @property
    def kind(self) -> str:
        return "tool_use:" + ",".join(b["name"] for b in self.tool_uses) if self.tool_uses else "text"


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class ToolResult:
    tool_name: str | None  # None when the matching tool_use is not in the conversation
    tool_use_id: str
    content_text: str
    is_error: bool


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Message content as a list of blocks (a plain string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _content_text(content: Any) -> str:
    """Flatten message/tool_result content to its text."""
    parts = []
    for block in _blocks(content):
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            parts.append(_content_text(block.get("content")))
        elif block.get("type") == "tool_reference":
            parts.append(f"<tool_reference {block.get('tool_name')}>")
    return "\n".join(parts)


def _is_reminder(block: dict[str, Any]) -> bool:
    return block.get("type") == "text" and block.get("text", "").lstrip().startswith("<system-reminder>")


_WORKDIR_RE = re.compile(r"Primary working directory: (.+)")
_TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_DEFERRED_RE = re.compile(r"deferred tools are now available via ToolSearch.*?:\n((?:[^\n]+\n?)+)", re.DOTALL)


@dataclass
class Request:
    """A parsed POST /v1/messages body as seen by a brain."""

    body: dict[str, Any]
    headers: dict[str, str]
    path: str
    session_key: str

    @property
    def model(self) -> str:
        return self.body.get("model", "")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for m in self.body.get("messages") or [] if isinstance(m, dict)]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def tool_defs(self) -> list[dict[str, Any]]:
        return [t for t in self.body.get("tools") or [] if isinstance(t, dict) and "name" in t]

    @property
    def tools(self) -> list[str]:
        """Names of the tools the model may call now. A tool deferred behind ToolSearch is sent
        with defer_loading=true only once loaded (a tool_reference to it is in the conversation);
        defer_loading tools never referenced (the CLI's DeferredToolPlaceholder) are left out."""
        referenced = self.referenced_tools()
        return [t["name"] for t in self.tool_defs if not t.get("defer_loading") or t["name"] in referenced]

    def blocks(self, role: str) -> list[dict[str, Any]]:
        """All content blocks of the messages with this role, in order."""
        return [b for m in self.messages if m.get("role") == role for b in _blocks(m.get("content"))]

    def referenced_tools(self) -> set[str]:
        """Tools named by tool_reference blocks (what ToolSearch returns) in the conversation."""
        results = [b for b in self.blocks("user") if b.get("type") == "tool_result"]
        refs = [r for b in results for r in _blocks(b.get("content")) if r.get("type") == "tool_reference"]
        return {r.get("tool_name", "") for r in refs}

    def system_text(self) -> str:
        """Everything the CLI tells the model besides the conversation: the system prompt, any
        `role: system` messages and the <system-reminder> blocks of user messages. Where the
        environment block, deferred-tool list and skills go depends on the model: newer models
        get `role: system` messages, older ones (e.g. claude-sonnet-4-5) system reminders."""
        parts = [_content_text(self.body.get("system")), _content_text(self.blocks("system"))]
        parts += [b["text"] for b in self.blocks("user") if _is_reminder(b)]
        return "\n".join(p for p in parts if p)

    @property
    def is_subagent(self) -> bool:
        """A request of a subagent (Agent tool); it shares the parent's session id."""
        return "cc_is_subagent=true" in _content_text(self.body.get("system"))

    def working_dir(self) -> str | None:
        match = _WORKDIR_RE.search(self.system_text())
        return match.group(1).strip() if match else None

    def deferred_tools(self) -> list[str]:
        """Tools announced as loadable through ToolSearch ("select:<name>") and not loaded yet."""
        names: list[str] = []
        for match in _DEFERRED_RE.finditer(self.system_text()):
            for line in match.group(1).splitlines():
                if not _TOOL_NAME_RE.fullmatch(line.strip()):
                    break
                names.append(line.strip())
        loaded = set(self.tools)
        return [n for n in names if n not in loaded]

    def user_texts(self) -> list[str]:
        """Texts the user typed: user messages that carry no tool results (the CLI appends notes
        such as "Tool loaded." to those), without the CLI's <system-reminder> blocks."""
        out = []
        for m in self.messages:
            blocks = _blocks(m.get("content"))
            if m.get("role") != "user" or any(b.get("type") == "tool_result" for b in blocks):
                continue
            out += [b.get("text", "") for b in blocks if b.get("type") == "text" and not _is_reminder(b)]
        return out

    def first_user_text(self) -> str:
        texts = self.user_texts()
        return texts[0] if texts else ""

    def last_user_text(self) -> str:
        texts = self.user_texts()
        return texts[-1] if texts else ""

    def tool_names_by_id(self) -> dict[str, str]:
        return {b["id"]: b["name"] for b in self.blocks("assistant") if b.get("type") == "tool_use"}

    def last_tool_results(self) -> list[ToolResult]:
        """tool_result blocks of the last user message, each with the name of the tool it answers."""
        users = [m for m in self.messages if m.get("role") == "user"]
        if not users:
            return []
        names = self.tool_names_by_id()
        return [
            ToolResult(
                tool_name=names.get(b.get("tool_use_id", "")),
                tool_use_id=b.get("tool_use_id", ""),
                content_text=_content_text(b.get("content")),
                is_error=bool(b.get("is_error")),
            )
            for b in _blocks(users[-1].get("content"))
            if b.get("type") == "tool_result"
        ]

    def assistant_turns(self) -> int:
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    def digest(self) -> str:
        """Identifies the conversation state, so a retried request can be recognised."""
        raw = json.dumps(self.messages, sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()


Brain = Callable[[Request], Reply]

# ---------------------------------------------------------------------------------------------
# Side requests and sessions


# Side requests: the CLI's own utility calls (session titles, and with nonessential traffic
# allowed, possibly others). They share the agent's system-prompt preamble and session id, so
# neither identifies them; what does is that they offer no tools and lack the environment block
# ("Primary working directory: ...") every agent-loop request carries, even with tools=[].
def is_side_request(req: Request) -> bool:
    if req.body.get("max_tokens") == 1:  # quota / reachability probe
        return True
    return not req.tool_defs and req.working_dir() is None


def side_reply(req: Request, text: str) -> Reply:
    """A short answer; JSON matching the schema when the request asks for structured output."""
    fmt = (req.body.get("output_config") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return Reply.text(json.dumps(_schema_example(fmt.get("schema") or {}, text)))
    return Reply.text(text)


def _schema_example(schema: dict[str, Any], text: str) -> Any:
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _schema_example(sub, text) for name, sub in props.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return text


def session_key_of(headers: dict[str, str], body: dict[str, Any]) -> str:
    """The CLI sends its session id in a header and, JSON-encoded, in metadata.user_id."""
    for name, value in headers.items():
        if name.lower() == "x-claude-code-session-id" and value:
            return value
    user_id = (body.get("metadata") or {}).get("user_id")
    if isinstance(user_id, str):
        try:
            session = json.loads(user_id).get("session_id")
        except (ValueError, AttributeError):
            match = re.search(r"session_([0-9a-f-]{36})", user_id)
            session = match.group(1) if match else None
        if session:
            return session
    return "default"
