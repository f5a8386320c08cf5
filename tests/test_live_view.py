"""What a run shows while it works: the supervisor in process, real `claude` sessions, a scripted model."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from supervisor.claude_runner import ClaudeRunner
from supervisor.live import PlainView, cost_cell
from supervisor.loop import AgentState
from supervisor.runner import ActivityEvent
from supervisor.scripted_model import FakeModelServer, isolated_cli_env
from supervisor.scripted_model.agents import Agents, Convo, Request, write
from tests.support.supervise import supervise

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Seen:
    kind: str
    turns: int
    cost: float
    estimate: float | None


class Recording(PlainView):
    """The plain view, remembering the figures of the running session at every event."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.seen: list[Seen] = []

    def activity(self, state: AgentState, event: ActivityEvent) -> None:
        self.seen.append(Seen(event.kind, state.turns, state.cost_usd, state.cost_estimate))
        super().activity(state, event)


def test_turns_and_cost_grow_while_a_session_works_and_end_at_the_exact_figures(
    project: Path, sqlite_url: str, tmp_path: Path
) -> None:
    def three_files(req: Request, convo: Convo, feature: dict) -> None:
        done = [c for c in convo.calls if c.name == "Write" and c.result is not None]
        return write(req, f"part-{len(done)}.txt", "x\n") if len(done) < 3 else None

    db = Database(sqlite_url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project, lease_seconds=30)
    queue.import_specs([FeatureSpec("parts", category="backend")])
    view = Recording()
    with FakeModelServer(Agents({"parts": three_files})) as server:
        runner = ClaudeRunner(extra_env=isolated_cli_env(server.base_url, tmp_path / "cli"))
        try:
            summary, _ = supervise(queue, runner, max_agents=1, view=view, timeout=120)
        finally:
            runner.close()

    assert summary.exit_code == 0
    (attempt,) = queue.runs(1)
    working = [s for s in view.seen if s.kind in ("message", "tool")]
    # feature_get, three writes, feature_release, closing words: one model response each.
    assert [s.turns for s in working] == [1, 2, 3, 4, 5, 6]
    estimates = [s.estimate for s in working]
    assert all(e is not None and e > 0 for e in estimates) and estimates == sorted(estimates)
    assert all(s.cost == 0 for s in working)  # no exact figure yet: the CLI states it at the end of the turn
    final = view.seen[-1]
    assert (final.kind, final.estimate, final.turns) == ("turn", None, attempt.num_turns)
    assert final.cost == pytest.approx(attempt.cost_usd) and attempt.cost_usd > 0
    db.dispose()


def test_an_estimated_cost_is_labelled_as_one() -> None:
    state = AgentState(claim=None, model="sonnet", attempt=1, cost_usd=0.0012)  # type: ignore[arg-type]
    assert cost_cell(state) == "$0.0012"
    state.cost_estimate = 0.0031
    assert cost_cell(state) == "~$0.0031"
