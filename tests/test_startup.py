"""Day-to-day commands answer at once: they never import the run's machinery.

Importing claude_agent_sdk, mcp and apscheduler took about 1.5 s of the 2-2.6 s every command
used to need; alembic is only needed when the schema must change. Which modules a command
loads is a property that holds on any machine, unlike a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.projects import write_features

REPO = Path(__file__).resolve().parent.parent
RUN_ONLY = ("claude_agent_sdk", "mcp", "apscheduler", "alembic")

PROBE = """
import json, sys
from agent_manager import main
code = main(sys.argv[1:])
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


@pytest.fixture
def imported_project(project: Path) -> Path:
    features = [{"name": "schema", "category": "database"}, {"name": "api", "depends_on": ["schema"]}]
    write_features(project, features)
    done = subprocess.run(
        [sys.executable, str(REPO / "agent_manager.py"), "import", "--project-dir", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return project


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["logs", "1"]], ids=" ".join)
def test_reading_commands_do_not_import_the_sdk_mcp_apscheduler_or_alembic(
    imported_project: Path, argv: list[str]
) -> None:
    report, stderr = run_probe(PROBE, [*argv, "--project-dir", str(imported_project)])
    assert report == {"code": 0, "loaded": []}, stderr


def run_probe(probe: str, argv: list[str]) -> tuple[dict, str]:
    """Run ``probe`` with the command line ``argv``; (the JSON report it prints last to stderr, stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        input=json.dumps(RUN_ONLY),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    return json.loads(done.stderr.splitlines()[-1]), done.stderr


SERVE_PROBE = """
import io, json, sys, threading, time, urllib.request, os
from agent_manager import main

class Lines(io.StringIO):
    def write(self, text):
        if "dashboard: http" in text:
            found.append(text.split()[1])
        return super().write(text)

found = []
sys.stdout = Lines()
threading.Thread(target=main, args=(sys.argv[1:],), daemon=True).start()
deadline = time.monotonic() + 60
while not found and time.monotonic() < deadline:
    time.sleep(0.05)
with urllib.request.urlopen(found[0]) as page, urllib.request.urlopen(found[0] + "fragment/board") as board:
    status = [page.status, board.status]
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"status": status, "loaded": loaded}), file=sys.stderr)
os._exit(0)
"""


def test_the_dashboard_serves_its_pages_without_importing_the_sdk_mcp_apscheduler_or_alembic(
    imported_project: Path,
) -> None:
    report, stderr = run_probe(SERVE_PROBE, ["dashboard", "--port", "0", "--project-dir", str(imported_project)])
    assert report == {"status": [200, 200], "loaded": []}, stderr
