"""Settings from .agent-manager/config.toml, end to end: `python agent_manager.py` with real `claude`
CLI sessions against the scripted model (supervisor/scripted_model), on the project's own SQLite queue.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from supervisor.scripted_model import Reply, Request
from supervisor.scripted_model.agents import TOOL, Agents, Convo, release
from tests.support.harness import Run

pytestmark = pytest.mark.slow


def gives_up(req: Request, convo: Convo, feature: dict) -> Reply | None:
    """An agent that reports failed on every attempt (a retry resumes its session with new feedback)."""
    if not convo.succeeded(TOOL + "feature_release", now=True):
        return release(feature, "failed", f"cannot build {feature['name']}")
    return Reply.text("I could not build it.")


def outcomes(run: Run, name: str) -> list[str | None]:
    queue = run.queue()
    try:
        return [r.outcome for r in queue.runs(run.status()["by_name"][name]["id"])]
    finally:
        queue.db.dispose()


def test_max_attempts_in_config_toml_fails_a_feature_after_that_many_attempts_and_blocks_its_dependents(
    make_run: Callable[..., Run],
) -> None:
    features = [
        {"name": "hopeless", "category": "backend"},
        {"name": "child", "category": "backend", "depends_on": ["hopeless"]},
        {"name": "grandchild", "category": "testing", "depends_on": ["child"]},
    ]
    brain = Agents({"hopeless": gives_up})
    run = make_run(brain, features, max_attempts=2)  # the built-in default is 3
    done = run.supervise("--max-agents", "2")

    assert done.returncode == 1, done.stdout + done.stderr
    by_name = run.status()["by_name"]
    assert (by_name["hopeless"]["status"], by_name["hopeless"]["attempts"]) == ("failed", 2)
    assert "cannot build hopeless" in by_name["hopeless"]["notes"]
    assert outcomes(run, "hopeless") == ["failed", "failed"]
    # The agent was given the task once and retried once, in one resumed conversation.
    prompts = brain.prompts["hopeless"]
    assert len(prompts) == 2 and prompts[1].startswith("Your previous attempt at feature")
    assert [(by_name[n]["status"], by_name[n]["attempts"]) for n in ("child", "grandchild")] == [("blocked", 0)] * 2
    assert "passing: 0, failed: 1, blocked: 2" in done.stdout


def test_a_features_own_max_attempts_wins_over_the_config_value_either_way(make_run: Callable[..., Run]) -> None:
    features = [
        {"name": "patient", "category": "backend", "max_attempts": 3},
        {"name": "hasty", "category": "backend", "max_attempts": 1},
        {"name": "ordinary", "category": "backend"},
    ]
    run = make_run(Agents({f["name"]: gives_up for f in features}), features, max_attempts=2)
    done = run.supervise("--max-agents", "3")

    assert done.returncode == 1, done.stdout + done.stderr
    by_name = run.status()["by_name"]
    limits = {"patient": 3, "hasty": 1, "ordinary": 2}  # its own field where it has one, else the config's
    assert {n: (f["status"], f["attempts"]) for n, f in by_name.items()} == {
        n: ("failed", a) for n, a in limits.items()
    }
    assert {n: outcomes(run, n) for n in by_name} == {n: ["failed"] * a for n, a in limits.items()}
