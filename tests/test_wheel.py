"""The built wheel, installed (not editable) into a fresh venv and run from outside the checkout.

What `pip install agent-manager` gives a user: the packages import from site-packages, the
migrations and the demo's features.example.json are inside the wheel, the CLI migrates SQLite and
PostgreSQL, `python -m mcp_server` serves its tools and the demo runs to the end. The venv sees the
machine's site-packages for the dependencies (there may be no network); the wheel itself is
installed with --no-deps --force-reinstall, and every check asserts it runs the venv's copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
# Left out of the copy that is built: caches, earlier builds (build/lib may hold deleted
# modules that an in-place build would ship again) and the checkout's own state.
_NOT_SOURCES = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__")
_STEP_TIMEOUT_S = 120


@dataclass(frozen=True)
class Venv:
    root: Path
    site_packages: Path
    outside: Path  # a directory outside the checkout, the cwd of every command

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def agent_manager(self) -> str:
        return str(self.root / "bin" / "agent-manager")

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "AGENT_MANAGER_", "ANTHROPIC_", "CLAUDE_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), env.get("PATH", os.defpath)])
        env.update(extra)
        return env

    def run(self, *command: str, timeout: float = _STEP_TIMEOUT_S, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, cwd=self.outside, env=self.env(**extra_env), capture_output=True, text=True, timeout=timeout
        )


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    dist = tmp / "dist"
    _check(
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(dist)],
            capture_output=True,
            text=True,
            timeout=_STEP_TIMEOUT_S,
        )
    )
    (wheel,) = dist.glob("agent_manager-*.whl")
    root = tmp / "venv"
    _check(subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)]))
    outside = tmp / "work"
    outside.mkdir()
    probe = Venv(root, Path(), outside)
    # The machine's pip, running in the venv's interpreter, installs into the venv.
    _check(probe.run(probe.python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)))
    site = probe.run(probe.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    return Venv(root, Path(_check(site).stdout.strip()), outside)


def _project(venv: Venv, name: str) -> Path:
    project = venv.outside / name
    project.mkdir()
    shutil.copy(REPO / "features.example.json", project / "features.json")
    return project


def _statuses(venv: Venv, project: Path, *options: str) -> dict[str, str]:
    proc = _check(venv.run(venv.agent_manager, "status", "--json", "--project-dir", str(project), *options))
    return {f["name"]: f["status"] for f in json.loads(proc.stdout)["features"]}


def test_the_wheel_installs_packages_migrations_and_demo_data_outside_the_checkout(venv: Venv) -> None:
    script = textwrap.dedent(
        """
        import json, agent_manager, api, mcp_server, supervisor, supervisor.demo, supervisor.scripted_model
        from api.database import ALEMBIC_DIR
        print(json.dumps({
            "modules": [m.__file__ for m in (agent_manager, api, mcp_server, supervisor, supervisor.scripted_model)],
            "migrations": str(ALEMBIC_DIR),
            "example": str(supervisor.demo.example_features()),
        }))
        """
    )
    found = json.loads(_check(venv.run(venv.python, "-c", script)).stdout)
    site = venv.site_packages.resolve()
    for path in found["modules"]:
        assert Path(path).resolve().is_relative_to(site), f"{path} is not the installed copy in {site}"
    migrations = Path(found["migrations"])
    assert migrations == site / "api" / "_migrations"
    assert (migrations / "env.py").is_file()
    assert sorted(p.name for p in (migrations / "versions").glob("*.py")) == sorted(
        p.name for p in (REPO / "alembic" / "versions").glob("*.py")
    )
    assert Path(found["example"]) == site / "supervisor" / "features.example.json"
    assert Path(found["example"]).read_text() == (REPO / "features.example.json").read_text()
    # The Alembic library must still be the one `import alembic` finds.
    library = _check(venv.run(venv.python, "-c", "import alembic.command; print(alembic.__file__)")).stdout
    assert not Path(library.strip()).resolve().is_relative_to(REPO)


def test_the_installed_cli_answers_help_and_migrates_a_new_sqlite_database(venv: Venv) -> None:
    help_text = _check(venv.run(venv.agent_manager, "--help")).stdout
    assert "usage: agent-manager" in help_text and "--max-agents" in help_text
    project = _project(venv, "sqlite-project")
    _check(venv.run(venv.agent_manager, "import", "--project-dir", str(project)))
    assert (project / ".agent-manager" / "features.db").is_file()
    statuses = _statuses(venv, project)
    assert len(statuses) == 10 and set(statuses.values()) == {"pending"}


@pytest.mark.postgres
def test_the_installed_cli_migrates_a_new_postgresql_database(venv: Venv, pg_url: str) -> None:
    project = _project(venv, "pg-project")
    _check(venv.run(venv.agent_manager, "import", "--project-dir", str(project), "--database-url", pg_url))
    statuses = _statuses(venv, project, "--database-url", pg_url)
    assert len(statuses) == 10 and set(statuses.values()) == {"pending"}
    assert not (project / ".agent-manager" / "features.db").exists()


MCP_CLIENT = textwrap.dedent(
    """
    import json, os, sys
    import anyio
    from mcp import Client, StdioServerParameters

    async def main():
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server"], env=dict(os.environ))
        with anyio.fail_after(60):
            async with Client(params, mode="legacy") as client:
                tools = await client.list_tools()
                locks = await client.call_tool("list_file_locks", {})
                print(json.dumps({
                    "server": client.server_info.name,
                    "tools": sorted(t.name for t in tools.tools),
                    "locks_error": locks.is_error,
                }))

    anyio.run(main)
    """
)


def test_the_installed_mcp_server_serves_its_tools_over_stdio(venv: Venv) -> None:
    project = _project(venv, "mcp-project")
    _check(venv.run(venv.agent_manager, "import", "--project-dir", str(project)))
    database = f"sqlite:///{project / '.agent-manager' / 'features.db'}"
    proc = venv.run(
        venv.python, "-c", MCP_CLIENT, AGENT_MANAGER_DATABASE_URL=database, AGENT_MANAGER_PROJECT_DIR=str(project)
    )
    answer = json.loads(_check(proc).stdout.strip().splitlines()[-1])
    assert answer["server"] == "agent-manager"
    assert {"feature_get", "feature_release", "claim_file", "release_file"} <= set(answer["tools"])
    assert answer["locks_error"] is False


def test_the_installed_demo_runs_every_example_feature_to_passing(venv: Venv) -> None:
    project = venv.outside / "demo"
    proc = venv.run(venv.agent_manager, "demo", "--max-agents", "2", "--project-dir", str(project))
    _check(proc)
    assert f"project   {project}" in proc.stdout
    statuses = _statuses(venv, project)
    assert len(statuses) == 10 and set(statuses.values()) == {"passing"}, statuses
    log = _check(subprocess.run(["git", "-C", str(project), "log", "--format=%s"], capture_output=True, text=True))
    assert log.stdout.strip().splitlines()[-1] == "Demo project: features.json"


def test_the_installed_dashboard_serves_its_templates_and_static_files_from_the_wheel(venv: Venv) -> None:
    where = "import supervisor.dashboard.rendering as r, supervisor.dashboard.app as a; print(r.TEMPLATES, a.STATIC)"
    templates, static = (Path(p) for p in _check(venv.run(venv.python, "-c", where)).stdout.split())
    site = venv.site_packages.resolve()
    assert templates == site / "supervisor" / "dashboard" / "templates" and (templates / "board.html").is_file()
    assert static == site / "supervisor" / "dashboard" / "static" and (static / "dashboard.js").is_file()
    project = _project(venv, "dashboard-project")
    _check(venv.run(venv.agent_manager, "import", "--project-dir", str(project)))
    command = [venv.agent_manager, "dashboard", "--port", "0", "--project-dir", str(project)]
    proc = subprocess.Popen(command, cwd=venv.outside, env=venv.env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        found = re.search(r"dashboard: (http://\S+)", proc.stdout.readline())
        assert found, "the dashboard did not print its address"
        pages = {}
        for path in ("", "feature/1", "static/dashboard.js", "static/dashboard.css", "static/favicon.svg"):
            with urllib.request.urlopen(found.group(1) + path, timeout=30) as response:
                pages[path] = (response.status, response.read().decode())
        assert {status for status, _ in pages.values()} == {200}
        assert ">project-setup</a>" in pages[""][1] and "EventSource" in pages["static/dashboard.js"][1]
    finally:
        proc.terminate()
        proc.wait(30)
