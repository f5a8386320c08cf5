"""Bad input gets one clear line, exit 2, and leaves the database exactly as it was."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent_manager import main
from api.database import Database
from api.queue import FeatureQueue
from tests.support.projects import write_features

REPO = Path(__file__).resolve().parent.parent

GOOD = [
    {"name": "schema", "category": "database"},
    {"name": "api", "category": "backend", "depends_on": ["schema"]},
]


def j(value) -> bytes:
    return json.dumps(value).encode()


# (case id, file bytes, fragment the error line must contain)
BAD_FILES = [
    ("cycle", j([{"name": "a", "depends_on": ["b"]}, {"name": "b", "depends_on": ["a"]}]), "cycle 'a' -> 'b' -> 'a'"),
    (
        "long-cycle",
        j([{"name": "x", "depends_on": ["z"]}, {"name": "y", "depends_on": ["x"]}, {"name": "z", "depends_on": ["y"]}]),
        "dependency cycle",
    ),
    ("cycle-through-database", j([{"name": "schema", "depends_on": ["api"]}]), "cycle"),
    ("self-dependency", j([{"name": "a", "depends_on": ["a"]}]), "'a' depends on itself"),
    ("unknown-dependency", j([{"name": "a", "depends_on": ["ghost"]}]), "unknown feature(s) 'ghost'"),
    ("duplicate-name", j([{"name": "a"}, {"name": "a"}]), "duplicate feature name 'a'"),
    ("missing-name", j([{"description": "no name"}]), 'feature #1: "name" must be a non-empty string (missing)'),
    ("empty-name", j([{"name": ""}]), '"name" must be a non-empty string'),
    ("blank-name", j([{"name": "   "}]), '"name" must be a non-empty string'),
    ("name-not-string", j([{"name": 7}]), '"name" must be a non-empty string (a number)'),
    ("name-with-newline", j([{"name": "a\nb"}]), "control characters"),
    ("name-too-long", j([{"name": "n" * 201}]), "at most 200 characters"),
    ("top-level-string", j("features"), "expected a JSON list of features, got a string"),
    ("top-level-number", b"42", "got a number"),
    ("object-without-features", j({"items": []}), "unknown top-level key(s) 'items'"),
    ("features-not-list", j({"features": {"name": "a"}}), "got an object"),
    ("empty-list", j([]), "contains no features"),
    ("item-not-object", j(["a"]), "feature #1 is a string, expected an object"),
    ("priority-string", j([{"name": "a", "priority": "high"}]), "'a': \"priority\" must be an integer, got a string"),
    ("priority-bool", j([{"name": "a", "priority": True}]), '"priority" must be an integer, got a boolean'),
    ("priority-float", j([{"name": "a", "priority": 1.5}]), '"priority" must be an integer'),
    ("priority-huge", j([{"name": "a", "priority": 10**12}]), '"priority" must be between -1000000 and 1000000'),
    ("priority-nan", b'[{"name": "a", "priority": NaN}]', "NaN is not allowed"),
    (
        "depends-on-string",
        j([{"name": "a"}, {"name": "b", "depends_on": "a"}]),
        '"depends_on" must be a list of strings',
    ),
    ("depends-on-number", j([{"name": "a", "depends_on": [1]}]), '"depends_on" must be a list of strings'),
    ("steps-string", j([{"name": "a", "steps": "do it"}]), '"steps" must be a list of strings'),
    ("description-number", j([{"name": "a", "description": 3}]), '"description" must be a string'),
    ("unknown-field", j([{"name": "a", "depends-on": ["b"]}]), "unknown field(s) 'depends-on'"),
    ("bad-model", j([{"name": "a", "model": "gpt-4"}]), '"model" must be haiku, sonnet, opus'),
    ("max-attempts-zero", j([{"name": "a", "max_attempts": 0}]), '"max_attempts" must be between 1 and 100'),
    ("max-attempts-string", j([{"name": "a", "max_attempts": "3"}]), '"max_attempts" must be an integer'),
    ("max-cost-negative", j([{"name": "a", "max_cost_usd": -1}]), '"max_cost_usd" must be above 0'),
    ("max-cost-string", j([{"name": "a", "max_cost_usd": "5"}]), '"max_cost_usd" must be a number of US dollars'),
    ("empty-verify", j([{"name": "a", "verify": " "}]), '"verify" is an empty command'),
    ("duplicate-key", b'[{"name": "a", "name": "b"}]', "duplicate key 'name'"),
    ("trailing-comma", b'[{"name": "a"},]', "invalid JSON at line 1 column"),
    ("truncated", b'[{"name": "a"', "invalid JSON"),
    ("empty-file", b"", "file is empty"),
    ("utf16-bom", "[]".encode("utf-16"), "UTF-16"),
    ("invalid-utf8", b'[{"name": "\xff"}]', "not valid UTF-8"),
    ("deeply-nested", b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    (
        "nested-inside-a-feature",
        b'[{"name": "a", "description": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]",
        "JSON nested too deeply",
    ),
    (
        "description-too-long",
        j([{"name": "a", "description": "d" * 100_001}]),
        '"description" is 100,001 characters; the limit is 100,000',
    ),
    ("too-many-steps", j([{"name": "a", "steps": ["s"] * 101}]), '"steps" has 101 entries; the limit is 100'),
    (
        "step-too-long",
        j([{"name": "a", "steps": ["ok", "s" * 5_001]}]),
        '"steps" has an entry of 5,001 characters',
    ),
    ("verify-too-long", j([{"name": "a", "verify": "v" * 10_001}]), '"verify" is 10,001 characters; the limit is'),
    ("category-too-long", j([{"name": "a", "category": "c" * 101}]), '"category" is 101 characters; the limit is 100'),
    (
        "model-too-long",
        j([{"name": "a", "model": "claude-" + "m" * 94}]),
        '"model" is 101 characters; the limit is 100',
    ),
    (
        "dependency-name-too-long",
        j([{"name": "a", "depends_on": ["d" * 201]}]),
        '"depends_on" has an entry of 201 characters',
    ),
]


@pytest.fixture
def project_with_features(project: Path) -> Path:
    return write_features(project, GOOD)


def snapshot(url: str):
    db = Database(url)
    queue = FeatureQueue(db)
    state = (queue.status_report(), queue.dependency_map(), queue.events(), queue.file_locks())
    db.dispose()
    return state


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("agent-manager: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case,content,fragment", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_features_file_is_one_line_exit_2_and_changes_nothing(
    project_with_features: Path, capsys: pytest.CaptureFixture[str], case: str, content: bytes, fragment: str
) -> None:
    assert main(["import", "--project-dir", str(project_with_features)]) == 0
    url = f"sqlite:///{project_with_features / '.agent-manager' / 'features.db'}"
    before = snapshot(url)
    capsys.readouterr()
    bad = project_with_features / "bad.json"
    bad.write_bytes(content)

    code = main(["import", "--project-dir", str(project_with_features), "--features", str(bad)])

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert fragment in line
    assert snapshot(url) == before


NEW_PROJECT_CASES = [c for c in BAD_FILES if c[0] != "cycle-through-database"]


@pytest.mark.parametrize("case,content,fragment", NEW_PROJECT_CASES, ids=[c[0] for c in NEW_PROJECT_CASES])
def test_bad_features_file_on_a_new_project_creates_no_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, content: bytes, fragment: str
) -> None:
    (tmp_path / "features.json").write_bytes(content)
    assert main(["import", "--project-dir", str(tmp_path)]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / ".agent-manager" / "features.db").exists()


def test_utf8_bom_from_windows_editors_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "features.json").write_bytes(b"\xef\xbb\xbf" + j(GOOD))
    assert main(["import", "--project-dir", str(tmp_path)]) == 0
    assert "2 added" in capsys.readouterr().out


def test_status_json_after_import_lists_every_feature(
    project_with_features: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "--project-dir", str(project_with_features)]) == 0
    capsys.readouterr()
    assert main(["status", "--project-dir", str(project_with_features), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in doc["features"]] == ["schema", "api"]
    assert doc["features"][1]["depends_on"] == ["schema"]
    assert doc["counts"] == {"pending": 2}


def test_status_table_shows_the_features(project_with_features: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["import", "--project-dir", str(project_with_features)])
    capsys.readouterr()
    assert main(["--project-dir", str(project_with_features), "status"]) == 0
    out = capsys.readouterr().out
    assert "schema" in out and "database" in out and "pending: 2" in out


def test_a_large_status_table_lists_every_feature_in_aligned_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 600  # past the rich table's limit
    features = [
        {"name": f"f{i:03d}", "category": "backend", "depends_on": [f"f{i - 1:03d}"] if i else []} for i in range(n)
    ]
    (tmp_path / "features.json").write_bytes(j(features))
    main(["import", "--project-dir", str(tmp_path)])
    capsys.readouterr()
    assert main(["status", "--project-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "name", "category", "status", "attempts", "model", "cost", "estimate", "path"]
    rows = [line.split() for line in lines[2:-2]]
    assert [r[1] for r in rows] == [f["name"] for f in features]
    # No estimates and no history: 10 minutes each, so the chain from the first is 600 x 10 minutes.
    assert (rows[0][7], rows[0][8], rows[-1][8]) == ("10.0m", "100.0h", "10.0m")
    assert {r[3] for r in rows} == {"pending"}
    assert len({line.index("pending") for line in lines[2:-2]}) == 1  # one status column
    assert lines[-2] == f"pending: {n}"
    assert lines[-1] == f"cost so far $0.0000; no forecast for the {n} unfinished before 3 features finish"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "argv,env,fragment",
    [
        (["status"], {}, "--project-dir is required"),
        (["status", "--project-dir", "{tmp}/missing/dir"], {}, "project directory {tmp}/missing/dir does not exist"),
        (["import", "--project-dir", "{project}/features.json"], {}, "is not a directory"),
        (["import", "--project-dir", "{project}", "--features", "{project}/missing.json"], {}, "no features file at"),
        (["import", "--project-dir", "{project}", "--features", "{project}"], {}, "is a directory"),
        (["status", "--project-dir", "{project}"], {}, "no database at"),
        (["--project-dir", "{project}", "--max-agents", "0", "status"], {}, "--max-agents must be at least 1"),
        (["--project-dir", "{project}", "--max-agents", "many", "status"], {}, "--max-agents must be an integer"),
        (
            ["status", "--project-dir", "{project}"],
            {"AGENT_MANAGER_MAX_AGENTS": "x"},
            "AGENT_MANAGER_MAX_AGENTS must be",
        ),
        (["import", "--project-dir", "{project}", "--database-url", "mysql://x/y"], {}, "unsupported database URL"),
        (["import", "--project-dir", "{project}", "--database-url", "sqlite://"], {}, "in-memory SQLite"),
        (["import", "--project-dir", "{project}", "--database-url", "::"], {}, "bad database URL"),
        (
            ["import", "--project-dir", "{project}", "--database-url", "postgresql://u@127.0.0.1:{port}/db"],
            {},
            "cannot open database postgresql+psycopg://u@127.0.0.1:",
        ),
        (["retry", "999", "--project-dir", "{project}"], {}, "no database at"),
        (["--project-dir", "{project}", "--max-cost", "-1", "status"], {}, "--max-cost must be a positive number"),
        (["--project-dir", "{project}", "--max-cost", "nan", "status"], {}, "--max-cost must be a finite number"),
        (["--project-dir", "{project}", "--max-cost", "lots", "status"], {}, "--max-cost must be a number"),
        (["--project-dir", "{project}", "--lease-seconds", "nan", "status"], {}, "--lease-seconds must be a finite"),
        (["--project-dir", "{project}", "--lease-seconds", "inf", "status"], {}, "--lease-seconds must be a finite"),
        (
            ["status", "--project-dir", "{project}"],
            {"AGENT_MANAGER_LEASE_SECONDS": "-inf"},
            "AGENT_MANAGER_LEASE_SECONDS must be a finite number",
        ),
        (["--project-dir", "{project}", "--isolation", "both", "status"], {}, "--isolation must be worktree or shared"),
        (["--project-dir", "{project}", "--branch=-x", "status"], {}, "--branch must name a git branch"),
        (
            ["--project-dir", "{project}", "--lease-seconds", "1e300", "status"],
            {},
            "--lease-seconds must be between 3 and 604800",
        ),
    ],
)
def test_bad_arguments_are_one_line_exit_2(
    project_with_features: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv,
    env,
    fragment,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    port = _closed_port()
    argv = [a.format(project=project_with_features, port=port, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert fragment.format(tmp=tmp_path) in one_error_line(capsys.readouterr().err)


def test_environment_fallbacks_select_the_project(project_with_features: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_MANAGER_PROJECT_DIR", str(project_with_features))
    assert main(["import"]) == 0
    assert (project_with_features / ".agent-manager" / "features.db").exists()


def test_retry_of_an_unknown_id_names_it(project_with_features: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["import", "--project-dir", str(project_with_features)])
    capsys.readouterr()
    assert main(["retry", "42", "--project-dir", str(project_with_features)]) == 2
    assert "no feature with id 42" in one_error_line(capsys.readouterr().err)


def test_a_run_without_any_credentials_is_one_line_exit_2_and_writes_nothing(
    project_with_features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "no-login"))
    assert main(["--project-dir", str(project_with_features)]) == 2
    assert "no Anthropic credentials: set ANTHROPIC_API_KEY" in one_error_line(capsys.readouterr().err)
    assert not (project_with_features / ".agent-manager").exists()


BAD_CONFIGS = [
    ("not-toml", "max_turns = = 3", "invalid TOML"),
    ("unknown-key", "max_turn = 3", "unknown setting 'max_turn'"),
    ("negative", "stall_seconds = -1", "stall_seconds must be a number of seconds above 0"),
    ("zero-stall", "stall_seconds = 0", "stall_seconds must be a number of seconds above 0 and at most 604800"),
    ("infinite-stall", "stall_seconds = inf", "stall_seconds must be a number of seconds above 0"),
    ("nan-verify-timeout", "verify_timeout_seconds = nan", "verify_timeout_seconds must be a number of seconds"),
    ("zero-backoff", "backoff_initial_seconds = 0", "backoff_initial_seconds must be a number of seconds above 0"),
    ("huge-outage-limit", "outage_limit_seconds = 1e12", "outage_limit_seconds must be a number of seconds"),
    ("zero-database-outage", "database_outage_seconds = 0", "database_outage_seconds must be a number of seconds"),
    ("text-rate-wait", 'rate_limit_max_wait_seconds = "6h"', "rate_limit_max_wait_seconds must be a number of seconds"),
    ("escalation-twice", 'escalation = ["haiku", "haiku"]', "escalation must be a list of distinct models"),
    ("escalation-text", 'escalation = "sonnet"', "escalation must be a list of distinct models"),
    (
        "backoff-max-below-initial",
        "backoff_initial_seconds = 60\nbackoff_max_seconds = 10",
        "backoff_max_seconds (10) must be at least backoff_initial_seconds (60)",
    ),
    ("zero-turns", "max_turns = 0", "max_turns must be from 1 to 10000"),
    ("zero-attempts", "max_attempts = 0", "max_attempts must be from 1 to 100"),
    ("negative-reminders", "reminders = -1", "reminders must be from 0 to 20"),
    ("zero-budget", "max_budget_usd = 0", "max_budget_usd must be a number of US dollars above 0"),
    ("infinite-budget", "max_budget_usd = inf", "max_budget_usd must be a number of US dollars above 0"),
    ("infinite-timeout", "[timeouts]\nsonnet = inf", "[timeouts] must map model names to numbers of seconds above 0"),
    ("nested-too-deeply", "x = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("not-an-int", "max_attempts = 2.5", "max_attempts must be an integer"),
    ("bad-model", "default_model = 'gpt 4'", "default_model must be haiku, sonnet, opus or a model id"),
    ("models-not-table", "models = 'haiku'", "[models] must be a table"),
    ("timeouts-bad", "[timeouts]\nhaiku = 0", "[timeouts] must map model names to numbers of seconds above 0"),
    ("bash-deny-string", "bash_deny = 'sudo'", "bash_deny must be a list of command prefixes"),
    ("mcp-transport", "mcp_server = 'http'", 'mcp_server must be "in-process" or "stdio"'),
    ("isolation", "isolation = 'separate'", 'isolation must be "worktree" or "shared"'),
    ("merge-repairs", "merge_repairs = -1", "merge_repairs must be from 0 to 10"),
    ("gate-empty", "gate = ' '", "gate must be a non-empty string"),
    ("worktree-copy-outside", "worktree_copy = ['../secrets']", "worktree_copy entries must be relative"),
    ("worktree-copy-string", "worktree_copy = '.env'", "worktree_copy must be a list"),
]


@pytest.mark.parametrize("case,toml,fragment", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_file_is_one_line_naming_the_file_and_setting_before_anything_runs(
    project_with_features: Path, capsys: pytest.CaptureFixture[str], case: str, toml: str, fragment: str
) -> None:
    config = project_with_features / ".agent-manager" / "config.toml"
    config.parent.mkdir()
    config.write_text(toml + "\n", encoding="utf-8")
    assert main(["--project-dir", str(project_with_features), "--max-agents", "2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(config) in line and fragment in line
    assert not (project_with_features / ".agent-manager" / "features.db").exists()


def test_a_config_file_that_is_a_directory_is_one_line_naming_it(
    project_with_features: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project_with_features / ".agent-manager" / "config.toml"
    config.mkdir(parents=True)
    assert main(["--project-dir", str(project_with_features)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{config} is a directory, expected a TOML file" in line


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["logs", "1"], ["retry", "1"]])
def test_reading_commands_on_a_new_project_create_no_directory(
    project_with_features: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main([*argv, "--project-dir", str(project_with_features)]) == 2
    assert "no database at" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in project_with_features.iterdir()) == ["features.json"]


def test_a_sqlite_url_in_a_missing_directory_is_refused_instead_of_starting_a_second_queue(
    project_with_features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "qeueu"
    url = f"sqlite:///{typo / 'features.db'}"

    assert main(["import", "--project-dir", str(project_with_features), "--database-url", url]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"directory {typo} of the SQLite database does not exist" in line
    assert "a typo would split the queue in two" in line
    assert main(["status", "--project-dir", str(project_with_features), "--database-url", url]) == 2
    assert f"no database at {typo / 'features.db'}" in one_error_line(capsys.readouterr().err)
    assert not typo.exists()
    assert not (project_with_features / ".agent-manager").exists()


@pytest.mark.parametrize("argv", [["status"], ["logs", "1"], ["retry", "1"], ["import"]])
def test_a_database_file_that_is_not_sqlite_is_one_line_naming_it_and_stays_untouched(
    project_with_features: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    database = project_with_features / ".agent-manager" / "features.db"
    database.parent.mkdir()
    content = b"these are my notes, not a database\n" * 100
    database.write_bytes(content)

    assert main([*argv, "--project-dir", str(project_with_features)]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert f"{database} is not a SQLite database" in line
    assert database.read_bytes() == content
    assert sorted(p.name for p in database.parent.iterdir()) == ["features.db"]


@pytest.mark.parametrize("argv", [["status"], ["logs", "1"], ["retry", "1"], ["import"]])
def test_a_database_written_by_a_newer_version_is_one_line_and_left_as_it_was(
    project_with_features: Path, db_url: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(["import", "--project-dir", str(project_with_features), "--database-url", db_url]) == 0
    db = Database(db_url)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    db.dispose()
    before = snapshot(db_url)
    capsys.readouterr()

    assert main([*argv, "--project-dir", str(project_with_features), "--database-url", db_url]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert "was written by a newer agent-manager (schema revision '9999'" in line
    assert "upgrade agent-manager" in line
    assert snapshot(db_url) == before
    db = Database(db_url)
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")] == ["9999"]
    db.dispose()


def test_a_features_file_past_the_size_limit_is_refused_naming_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "features.json"
    with open(big, "wb") as out:
        out.truncate(32 * 1024 * 1024 + 1)  # sparse: no disk, and no valid JSON either

    assert main(["import", "--project-dir", str(tmp_path)]) == 2

    assert "larger than the 32 MiB limit of a features file" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / ".agent-manager").exists()


def _limit_memory() -> None:
    import resource

    # A regression reads /dev/zero until the kernel kills something: fail fast instead.
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))


def test_importing_from_dev_zero_stops_at_the_size_limit(tmp_path: Path) -> None:
    argv = ["import", "--project-dir", str(tmp_path), "--features", "/dev/zero"]
    done = subprocess.run(
        [sys.executable, str(REPO / "agent_manager.py"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "/dev/zero: larger than the 32 MiB limit" in one_error_line(done.stderr)
    assert not (tmp_path / ".agent-manager").exists()


@pytest.mark.parametrize(
    "git_setup,argv,fragment",
    [
        (False, ["--isolation", "worktree"], "--isolation worktree needs a git repository"),
        (True, ["--remote", "upstream"], "no git remote 'upstream'"),
        (True, ["--branch", "release"], "no branch 'release'"),
    ],
    ids=["not-a-repository", "unknown-remote", "unknown-branch"],
)
def test_git_options_that_cannot_work_are_one_line_before_anything_is_written(
    project_with_features: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    git_setup: bool,
    argv: list[str],
    fragment: str,
) -> None:
    import subprocess

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    if git_setup:
        root = str(project_with_features)
        subprocess.run(["git", "init", "-q", "--initial-branch=main", root], check=True)
        subprocess.run(
            ["git", "-C", root, "-c", "user.name=O", "-c", "user.email=o@x", "commit", "-q", "--allow-empty", "-mx"],
            check=True,
        )
    assert main(["--project-dir", str(project_with_features), *argv]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not (project_with_features / ".agent-manager").exists()
