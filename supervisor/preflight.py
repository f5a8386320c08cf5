"""Checks before the first claim: is the `claude` CLI runnable, and does the API endpoint answer?

Without them a wrong key, a dead endpoint or a broken CLI shows only after the CLI's own retries
(minutes), with features claimed meanwhile. Both checks take well under a second when all is well.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from supervisor.runner import Ending

DEFAULT_BASE_URL = "https://api.anthropic.com"
PROBE_TIMEOUT_S = 5.0
CLI_CHECK_TIMEOUT_S = 10.0
_CLOUD_PROVIDERS = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")


@dataclass(frozen=True)
class Problem:
    """Why sessions cannot start: an infrastructure ending and a line naming the cause."""

    ending: Ending
    message: str
    status: int | None = None


def check_cli(cli: str | None, configured: str | None, env: Mapping[str, str]) -> Problem | None:
    """``cli --version`` must answer at once; ``cli`` is the resolved executable (None: not found)."""
    if cli is None:
        what = f"the claude CLI {configured!r} (cli_path in config)" if configured else "the claude CLI"
        return Problem(Ending.SETUP_ERROR, f"{what} was not found or is not executable")
    try:
        done = subprocess.run(
            [cli, "--version"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=CLI_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return Problem(
            Ending.SETUP_ERROR, f"the claude CLI at {cli} did not answer --version in {CLI_CHECK_TIMEOUT_S:g} s"
        )
    except OSError as exc:
        return Problem(Ending.SETUP_ERROR, f"cannot run the claude CLI at {cli}: {exc.strerror}")
    if done.returncode != 0:
        said = _last_line(done.stderr) or _last_line(done.stdout)
        return Problem(
            Ending.SETUP_ERROR,
            f"the claude CLI at {cli} failed (exit code {done.returncode})" + (f": {said}" if said else ""),
        )
    return None


def probe_api(env: Mapping[str, str], timeout: float = PROBE_TIMEOUT_S) -> Problem | None:
    """Ask the Messages API endpoint the sessions will use to validate an empty request.

    The API checks credentials before the request body, so a wrong key answers 401 and a good
    one 400 (invalid request): nothing is generated and nothing is billed. Cloud providers
    (Bedrock, Vertex) have their own endpoints and auth: they are not probed.
    """
    if any(env.get(k) not in (None, "", "0", "false") for k in _CLOUD_PROVIDERS):
        return None
    base = (env.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if env.get("ANTHROPIC_API_KEY"):
        headers["x-api-key"] = env["ANTHROPIC_API_KEY"]
    elif env.get("ANTHROPIC_AUTH_TOKEN"):
        headers["authorization"] = f"Bearer {env['ANTHROPIC_AUTH_TOKEN']}"
    sent_credentials = len(headers) > 2
    headers.update(_custom_headers(env.get("ANTHROPIC_CUSTOM_HEADERS", "")))
    request = urllib.request.Request(f"{base}/v1/messages", data=b"{}", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body, kind = response.status, response.read(65536), response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(65536), exc.headers.get_content_type()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout:g} s"
        return Problem(Ending.API_UNAVAILABLE, f"cannot reach the API at {base}: {reason}")
    error = _anthropic_error(body)
    if 200 <= status < 300 and error is None and _is_json(body):
        return None  # a permissive endpoint answered the empty request
    if error is None:
        return Problem(
            Ending.API_UNAVAILABLE,
            f"{base} does not answer like the Anthropic Messages API (HTTP {status}, {kind}): check ANTHROPIC_BASE_URL",
            status,
        )
    if status in (401, 403):
        if not sent_credentials:
            return None  # `claude login` or an apiKeyHelper: the first session shows whether they work
        return Problem(Ending.AUTH_ERROR, f"the API at {base} rejected the credentials ({status}): {error}", status)
    if status == 429 or status >= 500:
        return Problem(Ending.API_UNAVAILABLE, f"API unavailable ({status}): {error}", status)
    if status in (404, 405):
        said = f"no Messages API at {base}/v1/messages ({status}: {error}): check ANTHROPIC_BASE_URL"
        return Problem(Ending.API_UNAVAILABLE, said, status)
    return None  # 400 and friends: the endpoint accepted the credentials and judged the request


def _anthropic_error(body: bytes) -> str | None:
    """The message of an Anthropic error body ``{"type": "error", "error": {...}}``, else None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") != "error" or not isinstance(data.get("error"), dict):
        return None
    return str(data["error"].get("message") or data["error"].get("type") or "error")[:300]


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _custom_headers(raw: str) -> dict[str, str]:
    """ANTHROPIC_CUSTOM_HEADERS, as the CLI reads it: one ``Name: value`` per line."""
    found = {}
    for line in raw.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            found[name.strip()] = value.strip()
    return found


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
