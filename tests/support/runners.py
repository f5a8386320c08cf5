"""A scripted in-process AgentRunner: the test side of the supervisor's runner port.

Each session runs a behaviour, an async function of the task and the runner that reports
through the queue (as an agent's feature_release would) and returns the session's outcome.
The runner records what the supervisor asked of it, so tests assert on that instead of timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from api.queue import FeatureQueue
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending

Behaviour = Callable[[AgentTask, "ScriptedRunner"], Awaitable[AgentOutcome]]


async def passes(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
    """Report the feature passing and end the session normally."""
    # No pretend work: whatever a test needs to overlap, it gates on events.
    await runner.report(task, "passing", f"built {task.feature_name}")
    return AgentOutcome(
        Ending.COMPLETED, session_id=f"s-{task.feature_id}", num_turns=3, cost_usd=0.01, model=task.model
    )


class ScriptedRunner:
    """Runs each session with the behaviour named for its feature, else the default one.

    Records every task in order, when each feature's first session started and its last one
    ended, how many sessions run now (``running``) and at most at once (``peak``), and each
    feature's activity callback (``activity``) so a behaviour can send events mid-session.
    """

    def __init__(
        self,
        queue: FeatureQueue,
        behaviour: Behaviour = passes,
        by_feature: Mapping[str, Behaviour] | None = None,
    ) -> None:
        self.queue = queue
        self.behaviour = behaviour
        self.by_feature = dict(by_feature or {})
        self.running = 0
        self.peak = 0
        self.tasks: list[AgentTask] = []
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.activity: dict[int, Callable[[ActivityEvent], None]] = {}
        self._gates: list[tuple[int, asyncio.Event]] = []

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        # Everything up to the behaviour is synchronous: a behaviour sees `running` as of its own start.
        self.tasks.append(task)
        self.activity[task.feature_id] = on_activity
        self.started.setdefault(task.feature_name, time.monotonic())
        self.running += 1
        self.peak = max(self.peak, self.running)
        for n, gate in self._gates:
            if self.running >= n:
                gate.set()
        try:
            on_activity(ActivityEvent(task.feature_id, "tool", "Write", 1, 0.01))
            return await self.by_feature.get(task.feature_name, self.behaviour)(task, self)
        finally:
            self.running -= 1
            self.finished[task.feature_name] = time.monotonic()

    async def running_at_once(self, n: int, within: float = 10) -> None:
        """Return once ``n`` sessions run at the same time; TimeoutError if not within ``within`` seconds.

        A session that awaits this cannot end before ``n`` are running, so ``n`` sessions that
        all return from it prove that the supervisor ran ``n`` at once.
        """
        gate = asyncio.Event()
        if self.running >= n:
            gate.set()
        self._gates.append((n, gate))
        try:
            async with asyncio.timeout(within):
                await gate.wait()
        finally:
            self._gates.remove((n, gate))

    async def report(self, task: AgentTask, status: str, notes: str = "") -> None:
        """Release the feature as its agent would, from a thread (the queue blocks)."""
        await asyncio.to_thread(self.queue.report, task.agent_id, task.feature_id, status, notes)
