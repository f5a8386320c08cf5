"""What the environment can do to a command (a read-only project, a closed pipe, a full disk, a bug)
still ends in one line and a chosen exit code, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent_manager import main
from api.database import Database
from api.queue import FeatureQueue
from tests.support.projects import write_features

REPO = Path(__file__).resolve().parent.parent
FEATURES = [{"name": "schema", "category": "database"}, {"name": "api", "depends_on": ["schema"]}]


def command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "agent_manager.py"), *args]


def without_write_override() -> list[str]:
    """Root ignores permission bits; drop the capabilities that let it, so a 0555 directory is read-only."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): cannot make a directory read-only for us")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps]


@pytest.fixture
def project_with_features(project: Path) -> Path:
    return write_features(project, FEATURES)


def one_line(err: str, prefix: str = "agent-manager: error: ") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    return lines[0]


@pytest.mark.parametrize(
    "argv,env",
    [
        (["import"], {}),
        ([], {"ANTHROPIC_API_KEY": "sk-test-not-used"}),  # the run, stopped before any session
    ],
    ids=["import", "run"],
)
def test_a_read_only_project_directory_is_one_line_naming_what_could_not_be_created(
    project_with_features: Path, tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    project_with_features.chmod(0o555)
    try:
        done = subprocess.run(
            [*without_write_override(), *command(*argv, "--project-dir", str(project_with_features))],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "CLAUDE_CONFIG_DIR": str(tmp_path / "cli"), **env},
        )
    finally:
        project_with_features.chmod(0o755)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert f"cannot create {project_with_features / '.agent-manager'}: Permission denied" in line
    assert sorted(p.name for p in project_with_features.iterdir()) == ["features.json"]


@pytest.fixture
def project_with_a_long_transcript(project_with_features: Path) -> Path:
    assert main(["import", "--project-dir", str(project_with_features)]) == 0
    transcript = project_with_features / "transcript.jsonl"
    entry = {"type": "AssistantMessage", "data": {"content": [{"text": "a line of the agent's work " * 4}]}}
    # Far more than a pipe holds (64 KiB), so the writer is still writing when the reader leaves.
    transcript.write_text((json.dumps(entry) + "\n") * 20_000, encoding="utf-8")
    db = Database(f"sqlite:///{project_with_features / '.agent-manager' / 'features.db'}")
    queue = FeatureQueue(db, project_dir=project_with_features)
    (claim,) = queue.claim(1, "test-supervisor")
    queue.start_run(claim, "sonnet", str(transcript))
    db.dispose()
    return project_with_features


@pytest.mark.parametrize("raw", [False, True], ids=["readable", "raw"])
def test_logs_piped_into_a_reader_that_stops_early_ends_quietly_like_cat(
    project_with_a_long_transcript: Path, raw: bool
) -> None:
    proc = subprocess.Popen(
        command("logs", "1", "--project-dir", str(project_with_a_long_transcript), *(["--raw"] if raw else [])),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"feature #1 schema")
    proc.stdout.close()  # what `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141  # 128 + SIGPIPE, as git and cat end
    assert err == ""


def test_output_to_a_full_disk_is_one_line_exit_2(project_with_features: Path) -> None:
    assert main(["import", "--project-dir", str(project_with_features)]) == 0
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            command("status", "--project-dir", str(project_with_features)),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert done.returncode == 2
    assert one_line(done.stderr) == "agent-manager: error: cannot write: No space left on device"


def test_an_unexpected_exception_is_one_line_and_its_traceback_is_saved_for_a_report(
    project_with_features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor import commands

    def broken_status(settings, as_json):
        raise RuntimeError("status table lost its columns")

    monkeypatch.setattr(commands, "cmd_status", broken_status)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    assert main(["status", "--project-dir", str(project_with_features)]) == 1

    line = one_line(capsys.readouterr().err, "agent-manager: internal error: ")
    assert line.startswith("agent-manager: internal error: RuntimeError: status table lost its columns")
    saved = Path(line.split("(traceback saved to ")[1].rstrip(")"))
    assert saved.parent == tmp_path
    text = saved.read_text(encoding="utf-8")
    assert text.startswith("Traceback (most recent call last):")
    assert "broken_status" in text and "RuntimeError: status table lost its columns" in text
