"""Running the real bundled `claude` CLI (through claude_agent_sdk) against a FakeModelServer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # The SDK takes about a second to import; the demo and the standalone server never need it.
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage

# Subscription (claude.ai OAuth) credentials instead of an API key: only then (or through a
# gateway token) does the CLI read the unified rate-limit headers and emit RateLimitEvents.
# The fake accepts any token; `isolated_cli_env(url, tmp, **SUBSCRIPTION_ENV)`.
SUBSCRIPTION_ENV = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-scripted-model", "ANTHROPIC_API_KEY": ""}


def isolated_cli_env(base_url: str, tmp_path: Path | str, **extra: str) -> dict[str, str]:
    """Environment for one CLI session: talks only to `base_url` and keeps all of its state
    (config, caches, temp files) in fresh directories under `tmp_path`."""
    root = Path(tmp_path)
    dirs = {name: root / name for name in ("home", "claude-config", "tmp")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    env = {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "dummy",
        "HOME": str(dirs["home"]),
        "CLAUDE_CONFIG_DIR": str(dirs["claude-config"]),
        "TMPDIR": str(dirs["tmp"]),
        "XDG_CACHE_HOME": str(dirs["home"] / ".cache"),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    env.update(extra)
    return env


def cli_options(
    base_url: str, tmp_path: Path | str, *, env: dict[str, str] | None = None, **kwargs: Any
) -> ClaudeAgentOptions:
    """Options for an isolated session whose cwd is `tmp_path/project` (created)."""
    from claude_agent_sdk import ClaudeAgentOptions

    project = Path(tmp_path) / "project"
    project.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("cwd", str(project))
    kwargs.setdefault("permission_mode", "acceptEdits")
    kwargs.setdefault("setting_sources", [])
    return ClaudeAgentOptions(env=isolated_cli_env(base_url, tmp_path, **(env or {})), **kwargs)


@dataclass
class QueryRun:
    messages: list[Any] = field(default_factory=list)
    result: ResultMessage | None = None
    error: BaseException | None = None  # what query() raised after the last message, if anything
    elapsed: float = 0.0  # seconds from calling query() to the ResultMessage


async def run_query(prompt: str, options: ClaudeAgentOptions) -> QueryRun:
    """Consume a whole query() (leaving it early makes the SDK log aclose() errors)."""
    from claude_agent_sdk import ResultMessage, query

    run = QueryRun()
    start = time.monotonic()
    try:
        async for message in query(prompt=prompt, options=options):
            run.messages.append(message)
            if isinstance(message, ResultMessage):
                run.result = message
                run.elapsed = time.monotonic() - start
    except Exception as exc:  # noqa: BLE001 - returned to the caller to assert on
        run.error = exc
    if run.result is None:
        run.elapsed = time.monotonic() - start
    return run
