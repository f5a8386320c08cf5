"""Telling a person when the run needs them: ``notify_command`` (config) runs once when an agent
asks a question, once when it asks for a permission, and once when the run ends.

The command runs with a shell in the project directory, in the background (the run never waits
for it, except at its end, for at most NOTIFY_TIMEOUT_S), with what happened in its environment:
``AGENT_MANAGER_EVENT`` (question, permission or run_end), ``AGENT_MANAGER_MESSAGE`` (one line
for a person), ``AGENT_MANAGER_EVENT_JSON`` (the same as a JSON object, for a webhook's body) and,
for a feature's event, ``AGENT_MANAGER_FEATURE_ID`` and ``AGENT_MANAGER_FEATURE_NAME``. A command
that fails is named on screen; the run goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.identity import ENV_FEATURE_ID, ENV_FEATURE_NAME
from api.verify import run_verify

NOTIFY_TIMEOUT_S = 30.0
ENV_EVENT = "AGENT_MANAGER_EVENT"
ENV_MESSAGE = "AGENT_MANAGER_MESSAGE"
ENV_EVENT_JSON = "AGENT_MANAGER_EVENT_JSON"


class Notifier:
    """Runs ``command`` per event; ``note`` shows a command that failed."""

    def __init__(self, command: str | None, project_dir: Path, note: Callable[[str], None]) -> None:
        self.command = command
        self.project_dir = project_dir
        self._note = note
        self._running: set[asyncio.Task[None]] = set()

    def send(self, event: str, message: str, feature: tuple[int, str] | None = None, **detail: Any) -> None:
        """Run the command for ``event`` in the background (call from the event loop)."""
        if not self.command:
            return
        # "text" too: what a Slack or Mattermost incoming webhook shows.
        body: dict[str, Any] = {"event": event, "message": message, "text": message, **detail}
        env = {ENV_EVENT: event, ENV_MESSAGE: message}
        if feature is not None:
            body |= {"feature_id": feature[0], "feature": feature[1]}
            env |= {ENV_FEATURE_ID: str(feature[0]), ENV_FEATURE_NAME: feature[1]}
        env[ENV_EVENT_JSON] = json.dumps(body)
        task = asyncio.create_task(self._run(self.command, env), name=f"notify-{event}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, command: str, env: dict[str, str]) -> None:
        try:
            result = await run_verify(command, self.project_dir, NOTIFY_TIMEOUT_S, env)
        except OSError as exc:
            self._note(f"notify_command could not run: {exc}")
            return
        if not result.passed:
            tail = result.output_tail.strip().splitlines()
            self._note(f"notify_command `{command}` {result.ended}" + (f": {tail[-1]}" if tail else ""))

    async def drain(self) -> None:
        """Wait for the commands still running (each ends at its timeout at the latest)."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=NOTIFY_TIMEOUT_S + 5)
