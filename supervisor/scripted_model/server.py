"""A scripted stand-in for the Anthropic Messages API, good enough for the bundled `claude` CLI.

The CLI (through the real Python SDK) is pointed at it with ANTHROPIC_BASE_URL. Every agent-loop
request is answered by a *brain*: a callable taking a `Request` and returning a `Reply`. Side
requests the CLI makes on its own (title generation and the like) are answered with a short text
and never reach the brain. See NOTES.md for what the CLI sends and why things are done this way.

This module keeps the server's state: the brain, injected faults, the request log and the
sessions in flight. The request and reply types live in `messages`, the faults in `faults`, the
HTTP and SSE plumbing in `protocol`; the package re-exports what callers use.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from supervisor.scripted_model.faults import Fault, HttpError, rate_limit_headers
from supervisor.scripted_model.messages import (
    Brain,
    Reply,
    Request,
    Usage,
)
from supervisor.scripted_model.protocol import _Handler

__all__ = ["FakeModelServer", "LoggedRequest", "RawRequest"]

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
        # Extra headers on every response to a POST /v1/messages the brain or a fault answers (side
        # requests included), e.g. `rate_limit_headers(...)`; may be replaced at any time.
        self.response_headers: dict[str, str] = {}
        self._limited: tuple[float, str] | None = None  # limit_until(): (resets_at, window)
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
        host = str(self._server.server_address[0])  # an AF_INET address: always text
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

    def limit_until(self, resets_at: float, window: str = "five_hour") -> None:
        """A subscription's hard rate limit: until ``resets_at`` (Unix time) every agent-loop request
        is answered 429 with the rate-limit headers of a used-up ``window`` (status "rejected",
        utilization 1); from then on as before. Faults queued meanwhile wait for a request after it."""
        self._limited = (resets_at, window)

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

    def _record_raw(self, method: str, path: str, headers: dict[str, str], body: Any, *, side: bool = False) -> None:
        raw = RawRequest(time.time(), method, path, headers, body)
        self._record(lambda: (self.side_requests if side else self.raw_requests).append(raw))

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
            if self._limited is not None and time.time() < self._limited[0]:
                resets_at, window = self._limited
                return HttpError(429, headers=rate_limit_headers("rejected", resets_at, utilization=1.0, window=window))
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
