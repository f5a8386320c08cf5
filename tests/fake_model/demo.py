"""`python -m tests.fake_model.demo`: watch agent-manager run a feature DAG with no API key.

Copies features.example.json into a fresh project, serves a scripted model on 127.0.0.1 that
plays well-behaved agents, and runs the real supervisor and the real `claude` CLI against it:
the same path as `python agent_manager.py --project-dir DIR`, with a stand-in for the API.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fake_model import isolated_cli_env
from tests.fake_model.agents import Agents, Convo, write
from tests.fake_model.server import FakeModelServer, Reply, Request

REPO = Path(__file__).resolve().parents[2]


def _package(req: Request, convo: Convo, feature: dict) -> Reply | None:
    # project-setup's verify command imports the package: the demo agent creates it.
    if not convo.succeeded("Write"):
        return write(req, "todo/__init__.py", '"""The todo app."""\n')
    return None


def _tests(req: Request, convo: Convo, feature: dict) -> Reply | None:
    # api-tests' verify command runs tests/test_api.py: the demo agent writes one that passes.
    if not convo.succeeded("Write"):
        return write(req, "tests/test_api.py", "def test_the_package_imports():\n    import todo  # noqa: F401\n")
    return None


def _notes(feature: dict) -> tuple[str, str]:
    return f"notes/{feature['name']}.md", f"# {feature['name']}\n\n{feature['description']}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, help="where to build (default: a new temporary directory)")
    parser.add_argument("--max-agents", type=int, default=3)
    parser.add_argument("--think-seconds", type=float, default=0.3, help="delay of each scripted model reply")
    args = parser.parse_args(argv)

    project = args.project_dir or Path(tempfile.mkdtemp(prefix="agent-manager-demo-"))
    project.mkdir(parents=True, exist_ok=True)
    if not (project / "features.json").exists():
        shutil.copy(REPO / "features.example.json", project / "features.json")
    brain = Agents({"project-setup": _package, "api-tests": _tests}, think_seconds=args.think_seconds, file_for=_notes)
    with FakeModelServer(brain) as server:
        state = Path(tempfile.mkdtemp(prefix="agent-manager-demo-cli-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
        env.update(isolated_cli_env(server.base_url, state))
        print(f"demo project: {project} (scripted model at {server.base_url})", flush=True)
        manager = [sys.executable, str(REPO / "agent_manager.py")]
        code = subprocess.call([*manager, "--project-dir", str(project), "--max-agents", str(args.max_agents)], env=env)
        subprocess.call([*manager, "status", "--project-dir", str(project)], env=env)
        shutil.rmtree(state, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
