"""Faults a test can inject into the scripted model's answers: HTTP errors, cut streams, delays,
and the unified rate-limit headers of a subscription's responses."""

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

# The CLI's names for the windows, and the short forms in the header names.
_WINDOWS = {"five_hour": "5h", "seven_day": "7d", "seven_day_overage_included": "7d_oi", "overage": "overage"}


def rate_limit_headers(
    status: str = "allowed",
    resets_at: float | None = None,
    *,
    utilization: float | None = None,
    window: str = "five_hour",
    surpassed_threshold: float | None = None,
) -> dict[str, str]:
    """The `anthropic-ratelimit-unified-*` headers a subscription's response carries, which the CLI
    turns into a RateLimitEvent (only when it runs on subscription credentials: see NOTES.md).

    ``status``: "allowed" or "rejected" (a hard limit; sent with a 429 in the real API). The CLI
    reports "allowed_warning" only for a window whose ``surpassed_threshold`` is given (or by its own
    time-based thresholds); the header's "allowed_warning" it reads as "allowed". ``resets_at``: Unix
    time (the CLI rounds it to whole seconds); ``window``: one of five_hour, seven_day,
    seven_day_overage_included, overage; ``utilization``: that window's share used, 0-1.
    """
    short = _WINDOWS[window]
    prefix = "anthropic-ratelimit-unified"
    headers = {
        f"{prefix}-status": status,
        f"{prefix}-representative-claim": window,
        f"{prefix}-{short}-status": status,
    }
    if resets_at is not None:
        headers[f"{prefix}-reset"] = headers[f"{prefix}-{short}-reset"] = str(round(resets_at))
    if utilization is not None:
        headers[f"{prefix}-{short}-utilization"] = f"{utilization:g}"
    if surpassed_threshold is not None:
        headers[f"{prefix}-{short}-surpassed-threshold"] = f"{surpassed_threshold:g}"
    return headers
