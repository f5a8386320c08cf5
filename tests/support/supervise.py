"""The supervisor in process: a queue, a runner and the settings a test cares about."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from api.queue import FeatureQueue
from supervisor.config import Settings
from supervisor.integration import GitPlan
from supervisor.live import PlainView
from supervisor.loop import Supervisor
from supervisor.routing import AgentPolicy
from supervisor.runner import AgentRunner
from supervisor.view import RunSummary, SupervisorView


def supervise(
    queue: FeatureQueue,
    runner: AgentRunner,
    *,
    max_agents: int = 3,
    view: SupervisorView | None = None,
    timeout: float = 60,
    git: GitPlan | None = None,
    **policy: Any,
) -> tuple[RunSummary, Supervisor]:
    """Run a supervisor on ``queue``'s project until it is idle; its summary, and it for inspection.

    ``policy`` holds the fields of the project's AgentPolicy (config.toml). The run is bounded by
    ``timeout`` seconds (TimeoutError), so a supervisor that never finishes fails the test.
    """
    assert queue.project_dir is not None, "the supervisor needs a queue with a project directory"
    settings = Settings(
        project_dir=queue.project_dir,
        database_url=queue.db.url.render_as_string(hide_password=False),
        features_file=queue.project_dir / "features.json",
        max_agents=max_agents,
        lease_seconds=30,
        policy=AgentPolicy(**policy),
        idle_poll_seconds=0.2,
    )
    supervisor = Supervisor(queue, runner, settings, view or PlainView(io.StringIO()), git=git)
    return asyncio.run(asyncio.wait_for(supervisor.run(), timeout)), supervisor
