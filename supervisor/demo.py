"""`agent-manager demo`: watch agent-manager run a feature DAG with no API key.

Copies features.example.json into a new git repository, serves a scripted model on 127.0.0.1
that plays well-behaved agents, and runs the real supervisor and the real bundled `claude` CLI
against it: the same path as `agent-manager --project-dir DIR`, with a stand-in for the API.
Importing this module is cheap; the supervisor runs in a child process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from api.errors import AgentManagerError, InputError
from supervisor.scripted_model import FakeModelServer, Reply, Request, isolated_cli_env
from supervisor.scripted_model.agents import Agents, Convo, write

_HERE = Path(__file__).resolve().parent
# In a wheel the example sits next to this module (build_hooks.py); in a checkout, at its top.
EXAMPLE_CANDIDATES = (_HERE / "features.example.json", _HERE.parent / "features.example.json")
# A Ctrl-C reaches the supervisor too; it stops its agents within its own bound, and this one.
_SHUTDOWN_GRACE_S = 60.0


def example_features() -> Path:
    """The features.example.json shipped with agent-manager. Raises InputError when it is missing."""
    for candidate in EXAMPLE_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise InputError(
        f"features.example.json is missing (looked in {EXAMPLE_CANDIDATES[0].parent}): reinstall agent-manager"
    )


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


def demo_agents(think_seconds: float = 0.3) -> Agents:
    """The scripted agents of the demo: each writes a note on its feature; two write what a verify needs."""
    return Agents({"project-setup": _package, "api-tests": _tests}, think_seconds=think_seconds, file_for=_notes)


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True, text=True)


def prepare_project(project: Path) -> None:
    """Make ``project`` a git repository with a commit holding features.json (kept if present).

    Raises InputError when git is missing or the directory cannot be set up.
    """
    if shutil.which("git") is None:
        raise InputError("the demo builds in a git repository: install git (e.g. apt-get install git)")
    try:
        project.mkdir(parents=True, exist_ok=True)
        features = project / "features.json"
        if not features.exists():
            features.write_text(_features_for_this_python(example_features().read_text()))
        if (project / ".git").exists():
            return
        (project / ".gitignore").write_text(".agent-manager/\n__pycache__/\n")
        _git(project, "-c", "init.defaultBranch=main", "init", "-q")
        # The demo's own identity, so that commits work on a machine where git has none.
        _git(project, "config", "user.name", "agent-manager demo")
        _git(project, "config", "user.email", "demo@agent-manager.invalid")
        _git(project, "config", "commit.gpgsign", "false")
        _git(project, "add", "-A")
        _git(project, "-c", "core.hooksPath=/dev/null", "commit", "-q", "-m", "Demo project: features.json")
    except OSError as exc:
        raise InputError(f"cannot set up the demo project in {project}: {exc}") from exc
    except subprocess.CalledProcessError as exc:
        raise InputError(f"git failed in {project}: {(exc.stderr or '').strip() or exc}") from exc


def _features_for_this_python(text: str) -> str:
    """The example's verify commands run `python -m pytest`; pytest is a dev extra, so without it
    the demo's test file is run by plain Python instead (its test functions are called)."""
    if importlib.util.find_spec("pytest") is not None:
        return text
    features = json.loads(text)
    for feature in features:
        verify = feature.get("verify", "")
        if verify.startswith("python -m pytest"):
            tests = f"runpy.run_path({verify.split()[-1]!r}).items()"
            feature["verify"] = f"python -c \"import runpy; [f() for n, f in {tests} if n.startswith('test_')]\""
    return json.dumps(features, indent=2) + "\n"


def _environment(base_url: str, state: Path) -> dict[str, str]:
    """The supervisor's environment: the user's, minus anything that would point it elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "AGENT_MANAGER_"))}
    env.update(isolated_cli_env(base_url, state / "cli"))
    # verify commands say `python`: make that this interpreter, whatever PATH holds.
    shims = state / "bin"
    shims.mkdir(parents=True, exist_ok=True)
    # A script, not a symlink: a venv's python finds its pyvenv.cfg only when run by its own path.
    shim = shims / "python"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = os.pathsep.join([str(shims), env.get("PATH", os.defpath)])
    return env


def _call(command: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(command, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            return proc.wait(timeout=_SHUTDOWN_GRACE_S)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
            return 130


def run_demo(
    max_agents: int = 3,
    keep: bool = True,
    *,
    project_dir: Path | None = None,
    think_seconds: float = 0.3,
) -> int:
    """Run the demo; returns the supervisor's exit code (0 when every feature passed).

    The project is ``project_dir`` or a new temporary directory, left in place when ``keep``
    (a temporary one is removed otherwise). Raises InputError when the project cannot be set up.
    """
    if max_agents < 1:
        raise InputError(f"--max-agents must be at least 1, not {max_agents}")
    created = project_dir is None
    project = (project_dir or Path(tempfile.mkdtemp(prefix="agent-manager-demo-"))).resolve()
    prepare_project(project)
    state = Path(tempfile.mkdtemp(prefix="agent-manager-demo-cli-"))
    manager = [sys.executable, "-m", "agent_manager"]
    try:
        with FakeModelServer(demo_agents(think_seconds)) as server:
            env = _environment(server.base_url, state)
            print(
                "agent-manager demo: the real supervisor and the real claude CLI, answered by a scripted\n"
                f"local model at {server.base_url} instead of the Anthropic API (no API key; nothing is billed:\n"
                "the costs shown are what the CLI computes for the scripted model's token counts).\n"
                f"demo project: {project}",
                flush=True,
            )
            code = _call([*manager, "--project-dir", str(project), "--max-agents", str(max_agents)], env)
            _call([*manager, "status", "--project-dir", str(project)], env)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    if keep or not created:
        _print_where(project)
    else:
        shutil.rmtree(project, ignore_errors=True)
        print(f"removed the demo project {project}", flush=True)
    return code


def _print_where(project: Path) -> None:
    state = project / ".agent-manager"
    print(
        "\nThe demo's results:\n"
        f"  project   {project}  (git -C {project} log --oneline)\n"
        f"  database  {state / 'features.db'}  (agent-manager status --project-dir {project})\n"
        f"  logs      {state / 'logs'}  (agent-manager logs ID --project-dir {project})",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--max-agents", type=int, default=3, help="agent sessions at once (default 3)")
    parser.add_argument("--project-dir", type=Path, help="where to build (default: a new temporary directory)")
    parser.add_argument("--think-seconds", type=float, default=0.3, help="delay of each scripted model reply")
    parser.add_argument("--no-keep", action="store_true", help="remove the temporary project at the end")
    args = parser.parse_args(argv)
    try:
        return run_demo(
            args.max_agents, not args.no_keep, project_dir=args.project_dir, think_seconds=args.think_seconds
        )
    except AgentManagerError as exc:
        print(f"agent-manager: error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
