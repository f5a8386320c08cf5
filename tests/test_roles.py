"""Roles: a system-prompt section per feature category, with defaults and a [roles] table in the config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_manager import main
from api.errors import InputError
from supervisor.prompts import DEFAULT_ROLES, SYSTEM_APPEND, system_append
from supervisor.routing import ROLE_LIMIT, AgentPolicy, load_policy, policy_from_mapping
from tests.support.projects import write_features

REPO = Path(__file__).resolve().parent.parent
SEVEN = ("frontend", "backend", "database", "testing", "documentation", "devops", "security")


def configure(project: Path, toml: str) -> Path:
    config = project / ".agent-manager" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(toml + "\n", encoding="utf-8")
    return config


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("agent-manager: error: ")
    assert "Traceback" not in err
    return lines[0]


# Defaults and the prompt


@pytest.mark.parametrize("category", SEVEN)
def test_each_of_the_seven_categories_has_a_default_role_in_its_system_prompt(category: str) -> None:
    text = DEFAULT_ROLES[category]
    assert 200 < len(text) <= ROLE_LIMIT
    assert AgentPolicy().role_for(category) == (category, text)

    prompt = system_append(text, category)

    assert prompt.startswith(SYSTEM_APPEND)
    assert f"\nYour role ({category}):\n{text}\n" in prompt
    assert prompt.count("Your role") == 1


def test_the_defaults_are_the_seven_categories_and_say_distinct_things() -> None:
    assert set(DEFAULT_ROLES) == set(SEVEN)
    assert len(set(DEFAULT_ROLES.values())) == len(SEVEN)
    assert "migration" in DEFAULT_ROLES["database"]
    assert "secrets" in DEFAULT_ROLES["security"] and "secrets" in DEFAULT_ROLES["devops"]
    assert "sleep" in DEFAULT_ROLES["testing"]
    assert "loading, empty and error" in DEFAULT_ROLES["frontend"]


def test_a_category_is_matched_ignoring_case_and_surrounding_spaces() -> None:
    assert AgentPolicy().role_for(" Backend ") == ("backend", DEFAULT_ROLES["backend"])


@pytest.mark.parametrize("category", ["", "   ", "misc", "ops", "front end"])
def test_a_category_without_a_role_gets_the_protocol_alone(category: str) -> None:
    assert AgentPolicy().role_for(category) is None
    assert system_append(None) == SYSTEM_APPEND
    assert system_append(None, category) == SYSTEM_APPEND
    assert "Your role" not in system_append(None)


def test_a_role_without_a_category_still_gets_a_heading() -> None:
    assert system_append("Be careful.").endswith("\nYour role:\nBe careful.\n")


# The [roles] table


def test_a_configured_text_replaces_that_default_and_adds_new_categories(project: Path) -> None:
    mobile = '"""\nYou build the iOS app.\nUse SwiftUI.\n"""'
    configure(project, f'[roles]\nbackend = "You write Go services; run go vet."\nMobile = {mobile}')

    policy = load_policy(project)

    assert policy.role_for("backend") == ("backend", "You write Go services; run go vet.")
    assert policy.role_for("mobile") == ("mobile", "You build the iOS app.\nUse SwiftUI.")  # stripped, key lower-cased
    assert policy.role_for("frontend") == ("frontend", DEFAULT_ROLES["frontend"])  # other defaults stay
    assert set(policy.roles) == {*SEVEN, "mobile"}


def test_a_role_file_is_read_relative_to_the_project_directory_when_the_config_loads(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "docs" / "roles").mkdir(parents=True)
    (project / "docs" / "roles" / "mobile.md").write_text("\n# Mobile\nTest on a small screen.\n", encoding="utf-8")
    (project / "backend-role.txt").write_text("Backend from a file.", encoding="utf-8")
    (tmp_path / "shared.md").write_text("Shared by projects.", encoding="utf-8")
    configure(
        project,
        '[roles]\nmobile = "docs/roles/mobile.md"\nbackend = "./backend-role.txt"\nsecurity = "../shared.md"',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the current directory: the project's

    policy = load_policy(project)

    (project / "docs" / "roles" / "mobile.md").unlink()  # read once, when loaded
    assert policy.role_for("mobile") == ("mobile", "# Mobile\nTest on a small screen.")
    assert policy.role_for("backend") == ("backend", "Backend from a file.")
    assert policy.role_for("security") == ("security", "Shared by projects.")


def test_a_role_file_can_be_absolute_or_in_the_home_directory(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "roles").mkdir()
    (home / "roles" / "db").write_text("From home.", encoding="utf-8")
    (tmp_path / "abs.txt").write_text("Absolute.", encoding="utf-8")
    configure(project, f'[roles]\ndatabase = "~/roles/db"\ntesting = "{tmp_path / "abs.txt"}"')

    policy = load_policy(project)

    assert policy.role_for("database") == ("database", "From home.")
    assert policy.role_for("testing") == ("testing", "Absolute.")


def test_roles_in_pyproject_are_read_relative_to_the_project_too(project: Path) -> None:
    (project / "role.md").write_text("From pyproject.", encoding="utf-8")
    (project / "pyproject.toml").write_text('[tool.agent-manager.roles]\nbackend = "role.md"\n', encoding="utf-8")

    assert load_policy(project).role_for("backend") == ("backend", "From pyproject.")


@pytest.mark.parametrize("value", ["none", "None", " NONE "])
def test_none_removes_a_categorys_role_and_keeps_the_others(project: Path, value: str) -> None:
    configure(project, f'[roles]\ndocumentation = "{value}"\nunknown = "none"')

    policy = load_policy(project)

    assert policy.role_for("documentation") is None
    assert "documentation" not in policy.roles
    assert policy.role_for("unknown") is None
    assert {k for k in SEVEN if policy.role_for(k)} == set(SEVEN) - {"documentation"}


def test_a_role_of_exactly_the_limit_is_accepted(project: Path) -> None:
    (project / "long.md").write_text("y" * ROLE_LIMIT + "\n\n", encoding="utf-8")
    configure(project, f'[roles]\nbackend = "{"x" * ROLE_LIMIT}"\nfrontend = "long.md"')

    policy = load_policy(project)

    assert policy.roles["backend"] == "x" * ROLE_LIMIT
    assert policy.roles["frontend"] == "y" * ROLE_LIMIT


def test_policy_from_mapping_keeps_working_without_a_base_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "role.md").write_text("From the current directory.", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert policy_from_mapping({}, "test").roles == DEFAULT_ROLES
    policy = policy_from_mapping({"roles": {"backend": "role.md"}}, "test")
    assert policy.role_for("backend") == ("backend", "From the current directory.")


# Bad [roles] tables: one InputError line naming the config file and the key


def _setup_none(project: Path) -> None:
    pass


def _setup_directory(project: Path) -> None:
    (project / "roles").mkdir()


def _setup_empty_file(project: Path) -> None:
    (project / "empty.md").write_text(" \n\n", encoding="utf-8")


def _setup_latin1_file(project: Path) -> None:
    (project / "latin1.md").write_bytes("Café".encode("latin-1"))


def _setup_long_file(project: Path) -> None:
    (project / "long.md").write_text("z" * (ROLE_LIMIT + 1), encoding="utf-8")


def _setup_huge_file(project: Path) -> None:
    with open(project / "huge.txt", "wb") as out:
        out.truncate(64 * 1024 * 1024)  # sparse: nothing to write, and far too long to read whole


def _setup_symlink_loop(project: Path) -> None:
    (project / "a.md").symlink_to(project / "b.md")
    (project / "b.md").symlink_to(project / "a.md")


# (case id, config, setup, key, fragment; {project} is the resolved project directory)
BAD_ROLES = [
    ("not-a-table", 'roles = "be careful"', _setup_none, "[roles]", "[roles] must be a table of category = role"),
    ("array", 'roles = ["a"]', _setup_none, "[roles]", "got an array"),
    ("empty", '[roles]\nbackend = ""', _setup_none, "roles.backend", "must be a non-empty string"),
    ("blank", '[roles]\nbackend = "  \\n "', _setup_none, "roles.backend", 'or "none" for no role'),
    ("number", "[roles]\nbackend = 3", _setup_none, "roles.backend", "no role; got the number 3"),
    ("boolean", "[roles]\nbackend = true", _setup_none, "roles.backend", "got a boolean"),
    ("list", '[roles]\nbackend = ["x"]', _setup_none, "roles.backend", "got an array"),
    ("sub-table", '[roles.backend]\ntext = "x"', _setup_none, "roles.backend", "got a table"),
    ("empty-name", '[roles]\n"" = "x"', _setup_none, 'roles.""', "the category name is empty"),
    (
        "same-category-twice",
        '[roles]\nBackend = "a"\nbackend = "b"',
        _setup_none,
        "roles.backend",
        "roles.Backend name the same category",
    ),
    (
        "text-too-long",
        f'[roles]\nbackend = "{"x" * (ROLE_LIMIT + 1)}"',
        _setup_none,
        "roles.backend",
        "the role is 4,001 characters; the limit is 4,000",
    ),
    (
        "missing-file",
        '[roles]\nbackend = "docs/backend.md"',
        _setup_none,
        "roles.backend",
        "role file {project}/docs/backend.md does not exist",
    ),
    (
        "missing-file-outside",
        '[roles]\nbackend = "../nowhere"',
        _setup_none,
        "roles.backend",
        "does not exist (a one-line value ending in .md or .txt",
    ),
    ("directory", '[roles]\nbackend = "./roles"', _setup_directory, "roles.backend", "{project}/roles is a directory"),
    ("empty-file", '[roles]\nbackend = "empty.md"', _setup_empty_file, "roles.backend", "{project}/empty.md is empty"),
    ("not-utf8", '[roles]\nbackend = "latin1.md"', _setup_latin1_file, "roles.backend", "is not UTF-8 text"),
    (
        "file-too-long",
        '[roles]\nbackend = "long.md"',
        _setup_long_file,
        "roles.backend",
        "role file {project}/long.md is 4,001 characters; the limit is 4,000",
    ),
    ("huge-file", '[roles]\nbackend = "huge.txt"', _setup_huge_file, "roles.backend", "is larger than 64,000"),
    ("device", '[roles]\nbackend = "/dev/zero"', _setup_none, "roles.backend", "/dev/zero is not a regular file"),
    (
        "unreadable",
        '[roles]\nbackend = "a.md"',
        _setup_symlink_loop,
        "roles.backend",
        "{project}/a.md cannot be read: Too many levels of symbolic links",
    ),
]


@pytest.mark.parametrize("case,toml,setup,key,fragment", BAD_ROLES, ids=[c[0] for c in BAD_ROLES])
def test_a_bad_roles_table_is_one_input_error_naming_the_config_and_the_key(
    project: Path, case: str, toml: str, setup, key: str, fragment: str
) -> None:
    config = configure(project, toml)
    setup(project)

    with pytest.raises(InputError) as caught:
        load_policy(project)

    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(f"{config}: ")
    assert key in message
    assert fragment.format(project=project.resolve()) in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_role_file_without_read_permission_is_named(project: Path) -> None:
    secret = project / "secret.md"
    secret.write_text("x", encoding="utf-8")
    secret.chmod(0)
    configure(project, '[roles]\nbackend = "secret.md"')

    with pytest.raises(InputError, match=r"roles\.backend: role file .*secret\.md cannot be read: Permission denied"):
        load_policy(project)


def test_a_bad_role_in_pyproject_names_its_table(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text('[tool.agent-manager.roles]\nbackend = ""\n', encoding="utf-8")

    with pytest.raises(InputError) as caught:
        load_policy(project)

    assert caught.value.message.startswith(f"{pyproject} [tool.agent-manager]: roles.backend must be")


# Through the command line


def test_a_bad_roles_config_stops_a_run_with_one_line_before_anything_is_written(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_features(project, [{"name": "api", "category": "backend"}])
    config = configure(project, '[roles]\nbackend = "roles/backend.md"')

    assert main(["--project-dir", str(project), "--max-agents", "2"]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert f"{config}: roles.backend: role file {project.resolve()}/roles/backend.md does not exist" in line
    assert not (project / ".agent-manager" / "features.db").exists()


def test_the_cli_process_exits_2_with_one_line_and_no_traceback(project: Path, tmp_path: Path) -> None:
    write_features(project, [{"name": "api", "category": "backend"}])
    config = configure(project, '[roles]\nbackend = ""')
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")}
    env.pop("CLAUDE_CODE_OAUTH_TOKEN", None)
    env["CLAUDE_CONFIG_DIR"] = str(tmp_path / "no-login")  # were the config accepted, no agent could start

    done = subprocess.run(
        [sys.executable, str(REPO / "agent_manager.py"), "--project-dir", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )

    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert f"{config}: roles.backend must be a non-empty string" in line
    assert not (project / ".agent-manager" / "features.db").exists()
