"""A scripted stand-in for the Anthropic Messages API, good enough for the bundled `claude` CLI.

The CLI (through the real Python SDK) is pointed at it with ANTHROPIC_BASE_URL. Every agent-loop
request is answered by a *brain*: a callable taking a `Request` and returning a `Reply`. Side
requests the CLI makes on its own (title generation and the like) are answered with a short text
and never reach the brain. See NOTES.md for what the CLI sends and why things are done this way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

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
        return cls(blocks + [tool_use_block(name, input)], usage=usage)

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
# Faults


@dataclass(frozen=True)
class HttpError:
    """Answer with this HTTP status instead of a message (the brain is not called)."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        if self.body is not None:
            return self.body
        kind, message = _ERROR_KINDS.get(self.status, ("api_error", "Internal server error"))
        return {"type": "error", "error": {"type": kind, "message": message}}


_ERROR_KINDS = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Permission denied"),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request too large"),
    429: ("rate_limit_error", "Rate limited"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(frozen=True)
class DropMidStream:
    """Stream the first `after_events` SSE events of the real reply, then cut it short:
    how="reset" aborts the TCP connection, "close" ends the HTTP body cleanly without
    message_stop, "error_event" sends an SSE `error` event (overloaded_error) and ends.
    On a non-streaming request the connection is reset before any response is written."""

    after_events: int = 3
    how: str = "reset"


@dataclass(frozen=True)
class Delay:
    """Sleep this long, then answer normally."""

    seconds: float


Fault = HttpError | DropMidStream | Delay

# ---------------------------------------------------------------------------------------------
# Logging


@dataclass(frozen=True)
class LoggedRequest:
    ts: float
    model: str
    session: str
    tools: tuple[str, ...]
    kind: str  # "text", "tool_use:<names>", "http_error:<status>" or "drop"
    stream: bool
    path: str
    stop_reason: str | None = None
    subagent: bool = False


@dataclass(frozen=True)
class RawRequest:
    """Any request the server saw, main loop or not (for debugging and discovery)."""

    ts: float
    method: str
    path: str
    headers: dict[str, str]
    body: Any


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


# ---------------------------------------------------------------------------------------------
# The server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


class FakeModelServer:
    """`with FakeModelServer(brain) as srv:` serves on srv.base_url until the block ends."""

    def __init__(
        self,
        brain: Brain | None = None,
        *,
        usage: Usage | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        memoize: bool = True,
        side_reply: str = "Untitled",
    ) -> None:
        self.brain: Brain = brain or (lambda req: Reply.text("ok"))
        self.usage = usage or Usage()
        self.side_reply = side_reply
        # A retried request (after an HTTP error or a dropped stream, or the non-streaming
        # fallback) carries the same conversation: answer it with the same reply, without
        # asking the brain again, so stateful brains stay in step.
        self.memoize = memoize
        self.faults: deque[Fault] = deque()
        self.requests: list[LoggedRequest] = []
        self.side_requests: list[RawRequest] = []
        self.raw_requests: list[RawRequest] = []
        self.brain_errors: list[BaseException] = []
        self.models_by_session: dict[str, list[str]] = {}
        self.peak_concurrency = 0
        self._active: set[str] = set()
        self._persistent: HttpError | None = None
        self._persistent_everywhere = False
        self._memo: dict[tuple[str, str], Reply] = {}
        # Reentrant: a wait_until predicate may call requests_for() and the like, which take it too.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified whenever a request is logged
        self._ids = itertools.count(1)
        self._server = _HTTPServer((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def start(self) -> FakeModelServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-model", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault control ------------------------------------------------------------------------

    def fail_all(
        self,
        status: int,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        agent_loop_only: bool = False,
    ) -> None:
        """Answer requests with this error until recover(): every POST /v1/messages, as a real API
        does for a wrong key or an outage (side requests and request probes included), or with
        ``agent_loop_only`` only the agent-loop requests (an endpoint whose probes still pass)."""
        self._persistent = HttpError(status, body, headers or {})
        self._persistent_everywhere = not agent_loop_only

    def recover(self) -> None:
        self._persistent = None

    # -- observation --------------------------------------------------------------------------

    @property
    def active_sessions(self) -> set[str]:
        with self._lock:
            return set(self._active)

    @property
    def sessions(self) -> list[str]:
        with self._lock:
            return list(self.models_by_session)

    def wait_until(self, predicate: Callable[[], object], timeout: float) -> bool:
        """Block until predicate() is true (checked after every request the server records);
        False on timeout. Safe to call from a brain, which runs in a handler thread."""
        with self._changed:
            return bool(self._changed.wait_for(predicate, timeout))

    def _record(self, update: Callable[[], None]) -> None:
        with self._changed:
            update()
            self._changed.notify_all()

    def requests_for(self, session: str) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if r.session == session]

    # -- request handling ---------------------------------------------------------------------

    def _begin(self, req: Request) -> Fault | None:
        with self._changed:
            self._changed.notify_all()
            self._active.add(req.session_key)
            self.peak_concurrency = max(self.peak_concurrency, len(self._active))
            models = self.models_by_session.setdefault(req.session_key, [])
            if not models or models[-1] != req.model:
                models.append(req.model)
            if self._persistent is not None:
                return self._persistent
            return self.faults.popleft() if self.faults else None

    def _log(self, req: Request, kind: str, stop_reason: str | None = None) -> None:
        entry = LoggedRequest(
            ts=time.time(),
            model=req.model,
            session=req.session_key,
            tools=tuple(req.tools),
            kind=kind,
            stream=req.stream,
            path=req.path,
            stop_reason=stop_reason,
            subagent=req.is_subagent,
        )
        self._record(lambda: self.requests.append(entry))

    def _finished(self, req: Request, reply: Reply) -> None:
        # A subagent ending its own turn does not end the parent session's.
        if reply.stop_reason == "end_turn" and not req.is_subagent:
            self._record(lambda: self._active.discard(req.session_key))

    def _reply_for(self, req: Request) -> Reply:
        key = (req.session_key, req.digest())
        if self.memoize:
            with self._lock:
                cached = self._memo.get(key)
            if cached is not None:
                return cached
        try:
            reply = self.brain(req)
        except Exception as exc:  # noqa: BLE001 - surfaced to the test through brain_errors
            with self._lock:
                self.brain_errors.append(exc)
            reply = Reply.text(f"fake model brain error: {exc!r}")
        if not isinstance(reply, Reply):
            reply = Reply.text(str(reply))
        if self.memoize:
            with self._lock:
                self._memo[key] = reply
        return reply

    def _message(self, req: Request, reply: Reply) -> dict[str, Any]:
        return {
            "id": f"msg_fake_{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": reply.content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": (reply.usage or self.usage).as_dict(),
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(_Handler):
            fake = server

        return Handler


def sse_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events the real API streams for `message`: text in two text_delta pieces, tool
    input as three input_json_delta fragments, the final usage in message_delta."""
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    events = [("message_start", {"message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            first = {"type": "text", "text": ""}
            half = len(block["text"]) // 2
            pieces = [block["text"][:half], block["text"][half:]]
            deltas = [{"type": "text_delta", "text": p} for p in pieces if p]
        elif block["type"] == "tool_use":
            first = dict(block, input={})
            raw = json.dumps(block["input"])
            step = max(1, -(-len(raw) // 3))
            deltas = [{"type": "input_json_delta", "partial_json": raw[i : i + step]} for i in range(0, len(raw), step)]
        else:
            first, deltas = block, []
        events.append(("content_block_start", {"index": index, "content_block": first}))
        events += [("content_block_delta", {"index": index, "delta": d}) for d in deltas]
        events.append(("content_block_stop", {"index": index}))
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events.append(("message_delta", {"delta": stop, "usage": usage}))
    events.append(("message_stop", {}))
    return [(name, {"type": name, **data}) for name, data in events]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeModelServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # -- plumbing -------------------------------------------------------------------------------

    def _record_raw(self, body: Any) -> None:
        raw = RawRequest(time.time(), self.command, self.path, dict(self.headers.items()), body)
        self.fake._record(lambda: self.fake.raw_requests.append(raw))

    def _read_json(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return raw.decode(errors="replace")

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_fake_{uuid.uuid4().hex[:16]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _reset(self) -> None:
        """Abort the connection (RST) so the client sees an error, not a clean end of stream."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _cut(self, fault: DropMidStream) -> None:
        if fault.how == "reset":
            self._reset()
            return
        if fault.how == "error_event":
            error = HttpError(529).payload()
            self._chunk(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- verbs ----------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._record_raw(None)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._record_raw(None)
        self._send_json(200, {})

    def do_POST(self) -> None:
        body = self._read_json()
        self._record_raw(body)
        path = urlsplit(self.path).path.rstrip("/")
        if path.endswith("/count_tokens"):
            self._send_json(200, {"input_tokens": self.fake.usage.input_tokens})
            return
        if path != "/v1/messages" or not isinstance(body, dict):
            self._send_json(404, HttpError(404).payload())
            return
        headers = dict(self.headers.items())
        req = Request(body=body, headers=headers, path=self.path, session_key=session_key_of(headers, body))
        malformed = not isinstance(body.get("messages"), list) or not body.get("model")
        persistent = self.fake._persistent
        if persistent is not None and self.fake._persistent_everywhere and (malformed or is_side_request(req)):
            self._send_json(persistent.status, persistent.payload(), persistent.headers)
            return
        if malformed:
            # What the real API says to a request without them (after checking the credentials).
            error = {"type": "invalid_request_error", "message": "model: Field required; messages: Field required"}
            self._send_json(400, {"type": "error", "error": error})
            return
        if is_side_request(req):
            side = RawRequest(time.time(), "POST", self.path, req.headers, body)
            self.fake._record(lambda: self.fake.side_requests.append(side))
            self._respond(req, side_reply(req, self.fake.side_reply), None)
            return
        fault = self.fake._begin(req)
        if isinstance(fault, Delay):
            time.sleep(fault.seconds)
            fault = None
        if isinstance(fault, HttpError):
            self.fake._log(req, f"http_error:{fault.status}")
            self._send_json(fault.status, fault.payload(), fault.headers)
            return
        reply = self.fake._reply_for(req)
        if isinstance(fault, DropMidStream):
            self.fake._log(req, "drop")
        else:
            self.fake._log(req, reply.kind, reply.stop_reason)
        if self._respond(req, reply, fault):
            self.fake._finished(req, reply)

    def _respond(self, req: Request, reply: Reply, fault: DropMidStream | None) -> bool:
        """Write the reply; False if it was (deliberately or not) cut short."""
        message = self.fake._message(req, reply)
        if not req.stream:
            if fault is not None:
                self._reset()
                return False
            self._send_json(200, message)
            return True
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_fake_{uuid.uuid4().hex[:16]}")
        self.end_headers()
        try:
            for n, (event, data) in enumerate(sse_events(message)):
                if fault is not None and n >= fault.after_events:
                    self._cut(fault)
                    return False
                self._chunk(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return False
        return True
