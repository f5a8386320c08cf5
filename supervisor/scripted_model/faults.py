"""Faults a test can inject into the scripted model's answers: HTTP errors, cut streams, delays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
