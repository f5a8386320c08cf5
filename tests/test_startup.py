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
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv, "--project-dir", str(imported_project)],
        input=json.dumps(RUN_ONLY),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    report = json.loads(done.stderr.splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, done.stderr
