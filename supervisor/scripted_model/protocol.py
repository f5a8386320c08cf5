"""The wire side of the scripted model: HTTP/1.1 request handling and Anthropic's SSE events.

A handler parses a POST /v1/messages, lets the FakeModelServer decide (side request, fault, the
brain's reply) and writes the answer as one JSON message or as a chunked SSE stream, cutting it
short when a fault says so.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from supervisor.scripted_model.faults import Delay, DropMidStream, HttpError
from supervisor.scripted_model.messages import Reply, Request, is_side_request, session_key_of, side_reply

if TYPE_CHECKING:
    from supervisor.scripted_model.server import FakeModelServer


def sse_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events the real API streams for `message`: text in two text_delta pieces, tool
    input as three input_json_delta fragments, the final usage in message_delta."""
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": start})]
    for index, block in enumerate(message["content"]):
        first: dict[str, Any]
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
        self.fake._record_raw(self.command, self.path, dict(self.headers.items()), body)

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
            self.fake._record_raw("POST", self.path, req.headers, body, side=True)
            self._respond(req, side_reply(req, self.fake.side_reply), None)
            return
        fault = self.fake._begin(req)
        if isinstance(fault, Delay):
            time.sleep(fault.seconds)
            fault = None
        if isinstance(fault, HttpError):
            self.fake._log(req, f"http_error:{fault.status}")
            self._send_json(fault.status, fault.payload(), self.fake.response_headers | fault.headers)
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
            self._send_json(200, message, self.fake.response_headers)
            return True
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_fake_{uuid.uuid4().hex[:16]}")
        for name, value in self.fake.response_headers.items():
            self.send_header(name, value)
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
