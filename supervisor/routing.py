"""Agent policy: which model a feature gets, and the limits of its sessions.

Defaults can be changed per project in ``DIR/.agent-manager/config.toml`` or in the
``[tool.agent-manager]`` table of ``DIR/pyproject.toml`` (the former wins).

Roles: each feature's category can add a section to its agent's system prompt
(``supervisor.prompts.DEFAULT_ROLES`` has defaults for frontend, backend, database, testing,
documentation, devops and security). The ``[roles]`` table replaces or adds them::

    [roles]
    backend = "You write Go services. Run `go vet ./...` and the tests before reporting passing."
    mobile = "./docs/roles/mobile.md"   # a file, read when the config is loaded
    documentation = "none"              # no role for this category

A value is a file path when it is one line that ends in ``.md`` or ``.txt`` or starts with
``./``, ``../``, ``/`` or ``~``; relative paths are relative to the project directory. Anything
else is the role's text. ``"none"`` (any case) drops the category's role; an empty value is an
error. Category names ignore case; a role is at most ROLE_LIMIT characters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api import defaults
from api.defaults import MAX_ATTEMPTS_LIMIT, MAX_COST_LIMIT, MAX_SECONDS, is_number
from api.errors import InputError
from api.features_file import MODEL_RE
from supervisor.prompts import DEFAULT_ROLES
from supervisor.sandbox import DEFAULT_BASH_DENY

DEFAULT_MODELS = {"testing": "haiku", "documentation": "haiku"}
MCP_TRANSPORTS = ("in-process", "stdio")
DEFAULT_TIMEOUTS = {"haiku": 600.0, "sonnet": 1800.0, "opus": 3600.0}
DEFAULT_ESCALATION = ("haiku", "sonnet")  # a failed attempt's retry moves one step up
ESCALATION_LIMIT = 6
ISOLATIONS = ("worktree", "shared")
TOOL_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
ROLE_LIMIT = 4000  # characters of one role's text
NO_ROLE = "none"  # the [roles] value that drops a category's role
ROLE_FILE_SUFFIXES = (".md", ".txt")
ROLE_FILE_PREFIXES = ("./", "../", "/", "~")


@dataclass(frozen=True)
class AgentPolicy:
    models: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    default_model: str = "sonnet"
    timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    max_turns: int = 200
    stall_seconds: float = 1200.0
    verify_timeout_seconds: float = defaults.VERIFY_TIMEOUT_SECONDS
    max_attempts: int = defaults.MAX_ATTEMPTS
    reminders: int = 2
    max_budget_usd: float | None = None  # per feature attempt
    fallback_model: str | None = None
    # Models from cheap to strong: each failed attempt moves a feature whose model is on the
    # ladder one step up for its next attempt (haiku's retry runs on sonnet); () turns it off.
    escalation: tuple[str, ...] = DEFAULT_ESCALATION
    outage_limit_seconds: float = 600.0
    # A used-up rate-limit window is waited for up to this long (a five-hour window is); one that
    # resets later (a weekly one) ends the run once its sessions finish, saying when to come back.
    rate_limit_max_wait_seconds: float = 21_600.0
    backoff_initial_seconds: float = 5.0
    backoff_max_seconds: float = 120.0
    database_outage_seconds: float = 120.0  # the database unreachable this long: the run stops
    bash_deny: tuple[str, ...] = DEFAULT_BASH_DENY  # command prefixes the agents' Bash tool refuses
    mcp_server: str = "in-process"  # or "stdio": a `python -m mcp_server` process per session
    cli_path: str | None = None  # the `claude` executable; default: the one bundled with claude-agent-sdk
    # Git (see supervisor.integration); --isolation and --branch override the first two.
    isolation: str | None = None  # "worktree" or "shared"; default: worktree in a git repository with a commit
    branch: str | None = None  # the integration branch; default: the one checked out in the project
    remote: str | None = None  # a git remote holding the integration branch, shared by several hosts
    worktree_setup: str | None = None  # shell command run in each new worktree before its agent starts
    worktree_copy: tuple[str, ...] = ()  # globs of untracked files copied into each new worktree (.env)
    gate: str | None = None  # project-wide check run on every merged tree before the branch moves
    merge_repairs: int = 2  # sessions resumed to repair a conflict or a failed gate, per attempt
    gate_timeout_seconds: float = 1800.0  # for gate and worktree_setup
    # Category (lower case) -> the role's text, appended to the system prompt (prompts.system_append).
    roles: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    # People in the loop: tools (e.g. WebFetch) and Bash command prefixes (e.g. "curl") an agent may
    # use only once a person approves the call; the session waits this long for the decision.
    ask_tools: tuple[str, ...] = ()
    ask_bash: tuple[str, ...] = ()
    permission_timeout_seconds: float = 600.0
    # Run (with a shell) when an agent asks a question or a permission, and when the run ends.
    notify_command: str | None = None

    def model_for(self, category: str, override: str | None = None, failed: int = 0) -> str:
        """The feature's own ``model`` wins, then its category's, then the default; after
        ``failed`` failed attempts, that many steps up ``escalation`` when the model is on it."""
        model = override or self.models.get(category.lower(), self.default_model)
        if failed > 0 and model in self.escalation:
            step = self.escalation.index(model) + failed
            return self.escalation[min(step, len(self.escalation) - 1)]
        return model

    def role_for(self, category: str) -> tuple[str, str] | None:
        """(category key, role text) for a feature's category, or None when it has no role."""
        key = (category or "").strip().lower()
        text = self.roles.get(key) if key else None
        return (key, text) if text else None

    def timeout_for(self, model: str) -> float:
        family = next((f for f in ("haiku", "sonnet", "opus") if f in model), None)
        return self.timeouts.get(model) or self.timeouts.get(family or "", self.timeouts.get("sonnet", 1800.0))


_INTEGERS = {
    "max_turns": (1, 10_000),
    "max_attempts": (1, MAX_ATTEMPTS_LIMIT),
    "reminders": (0, 20),
    "merge_repairs": (0, 10),
}
_COMMANDS = ("branch", "remote", "worktree_setup", "gate", "notify_command")  # non-empty strings
# Settings with their own checks.
_TABLES = (
    *("models", "timeouts", "roles", "bash_deny", "mcp_server", "cli_path", "isolation", "worktree_copy"),
    *("ask_tools", "ask_bash", "escalation"),
    *_COMMANDS,
)
_SCALARS = {f.name: f.type for f in dataclasses.fields(AgentPolicy) if f.name not in _TABLES}


def load_policy(project_dir: Path) -> AgentPolicy:
    """Read the project's config (and the role files it names). Raises InputError naming the file
    and key that is wrong."""
    toml_path = project_dir / ".agent-manager" / "config.toml"
    pyproject = project_dir / "pyproject.toml"
    if toml_path.exists():
        return policy_from_mapping(_read_toml(toml_path), str(toml_path), base_dir=project_dir)
    if pyproject.exists():
        table = _read_toml(pyproject).get("tool", {}).get("agent-manager")
        if table is not None:
            return policy_from_mapping(table, f"{pyproject} [tool.agent-manager]", base_dir=project_dir)
    return AgentPolicy()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid TOML: {exc}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, expected a TOML file: remove or rename it") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except RecursionError:
        raise InputError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None


def policy_from_mapping(data: Mapping[str, Any], source: str, base_dir: Path | None = None) -> AgentPolicy:
    """The policy a config table describes; ``source`` names it in errors. Role file paths are
    relative to ``base_dir`` (the project directory; default: the current directory)."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "models":
            values["models"] = {**DEFAULT_MODELS, **_models(value, source)}
        elif name == "timeouts":
            values["timeouts"] = {**DEFAULT_TIMEOUTS, **_numbers(value, source, "timeouts")}
        elif name == "roles":
            values["roles"] = _roles(value, source, base_dir or Path.cwd())
        elif name in ("bash_deny", "ask_bash"):
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                example = "git push" if name == "bash_deny" else "curl"
                raise InputError(f'{source}: {name} must be a list of command prefixes such as "{example}"')
            values[name] = tuple(value)
        elif name == "ask_tools":
            if not isinstance(value, list) or not all(isinstance(v, str) and TOOL_NAME_RE.match(v) for v in value):
                raise InputError(f'{source}: ask_tools must be a list of tool names such as "WebFetch", got {value!r}')
            values["ask_tools"] = tuple(value)
        elif name == "escalation":
            values["escalation"] = _escalation(value, source)
        elif name == "mcp_server":
            if value not in MCP_TRANSPORTS:
                raise InputError(f'{source}: mcp_server must be "in-process" or "stdio", got {value!r}')
            values["mcp_server"] = value
        elif name == "isolation":
            if value not in ISOLATIONS:
                raise InputError(f'{source}: isolation must be "worktree" or "shared", got {value!r}')
            values["isolation"] = value
        elif name in _COMMANDS:
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{source}: {name} must be a non-empty string, got {value!r}")
            values[name] = value
        elif name == "worktree_copy":
            values["worktree_copy"] = _relative_globs(value, source)
        elif name == "cli_path":
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{source}: cli_path must be the path of a claude executable, got {value!r}")
            values["cli_path"] = value
        elif name in _SCALARS:
            values[name] = _scalar(name, value, source)
        else:
            known = ", ".join(sorted([*_SCALARS, *_TABLES]))
            raise InputError(f"{source}: unknown setting {key!r}; known: {known}")
    policy = AgentPolicy(**values)
    if policy.backoff_max_seconds < policy.backoff_initial_seconds:
        raise InputError(
            f"{source}: backoff_max_seconds ({policy.backoff_max_seconds:g}) must be at least "
            f"backoff_initial_seconds ({policy.backoff_initial_seconds:g})"
        )
    return policy


def _relative_globs(value: Any, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f'{source}: worktree_copy must be a list of paths or globs such as ".env"')
    for pattern in value:
        if pattern.startswith("/") or ".." in Path(pattern).parts:
            raise InputError(f"{source}: worktree_copy entries must be relative to the project, got {pattern!r}")
    return tuple(value)


def _models(value: Any, source: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InputError(f"{source}: [models] must be a table of category = model")
    for category, model in value.items():
        if not isinstance(model, str) or not MODEL_RE.match(model):
            raise InputError(f"{source}: models.{category} must be haiku, sonnet, opus or a model id, got {model!r}")
    return {k.lower(): v for k, v in value.items()}


def _escalation(value: Any, source: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not all(isinstance(m, str) and MODEL_RE.match(m) for m in value)
        or len(set(value)) != len(value)
        or len(value) > ESCALATION_LIMIT
    ):
        raise InputError(
            f'{source}: escalation must be a list of distinct models from cheap to strong, such as ["haiku", '
            f'"sonnet", "opus"] (at most {ESCALATION_LIMIT}; [] turns it off), got {value!r}'
        )
    return tuple(value)


def _roles(value: Any, source: str, base_dir: Path) -> dict[str, str]:
    """DEFAULT_ROLES with the [roles] table applied: a text or a file replaces a default, "none" drops it."""
    if not isinstance(value, dict):
        raise InputError(
            f'{source}: [roles] must be a table of category = role text, .md/.txt file path or "none", '
            f"got {_kind(value)}"
        )
    roles = dict(DEFAULT_ROLES)
    seen: dict[str, str] = {}
    for category, raw in value.items():
        where = f"{source}: roles.{_toml_key(category)}"
        key = category.strip().lower()
        if not key:
            raise InputError(f"{where}: the category name is empty")
        if key in seen:
            raise InputError(f"{where} and roles.{_toml_key(seen[key])} name the same category (names ignore case)")
        seen[key] = category
        if not isinstance(raw, str) or not raw.strip():
            raise InputError(
                f"{where} must be a non-empty string: the role's text, the path of a .md or .txt file, "
                f'or "{NO_ROLE}" for no role; got {_kind(raw)}'
            )
        if raw.strip().lower() == NO_ROLE:
            roles.pop(key, None)
            continue
        if _is_role_path(raw):
            path = _role_path(raw.strip(), where, base_dir)
            text, origin = _read_role_file(path, where, key), f"role file {path}"
        else:
            text, origin = raw.strip(), "the role"
        if len(text) > ROLE_LIMIT:
            raise InputError(f"{where}: {origin} is {len(text):,} characters; the limit is {ROLE_LIMIT:,}")
        roles[key] = text
    return roles


def _is_role_path(value: str) -> bool:
    text = value.strip()
    return "\n" not in text and (text.lower().endswith(ROLE_FILE_SUFFIXES) or text.startswith(ROLE_FILE_PREFIXES))


def _role_path(raw: str, where: str, base_dir: Path) -> Path:
    try:
        path = base_dir / Path(raw).expanduser()
    except RuntimeError:  # ~user that does not exist, or no home directory
        raise InputError(f"{where}: cannot expand {raw!r}: unknown user or no home directory") from None
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (Python < 3.13): reported when the file is read
        return Path(os.path.abspath(path))


def _read_role_file(path: Path, where: str, key: str) -> str:
    what = f"{where}: role file {path}"
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{what} is a directory, expected a text file")
        if not stat.S_ISREG(mode):  # a FIFO would block, /dev/zero would never end
            raise InputError(f"{what} is not a regular file")
        with path.open(encoding="utf-8-sig") as file:
            text = file.read(16 * ROLE_LIMIT + 1)  # enough to tell the length; a huge file is not read whole
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(
            f"{what} does not exist (a one-line value ending in .md or .txt, or starting with ./, ../, / or ~, "
            f"is read as a file path; a relative one starts at the project directory)"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{what} cannot be read: {exc.strerror}") from None
    if len(text) > 16 * ROLE_LIMIT:
        raise InputError(f"{what} is larger than {16 * ROLE_LIMIT:,} characters; the limit is {ROLE_LIMIT:,}")
    if not text.strip():
        raise InputError(f'{what} is empty: write the role in it, or set roles.{_toml_key(key)} = "{NO_ROLE}"')
    return text.strip()


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _numbers(value: Any, source: str, table: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(_is_seconds(v) for v in value.values()):
        raise InputError(
            f"{source}: [{table}] must map model names to numbers of seconds above 0 and at most {MAX_SECONDS} (a week)"
        )
    return {k: float(v) for k, v in value.items()}


def _is_seconds(value: Any) -> bool:
    return is_number(value) and 0 < value <= MAX_SECONDS


def _scalar(name: str, value: Any, source: str) -> Any:
    if name in ("default_model", "fallback_model"):
        if not isinstance(value, str) or not MODEL_RE.match(value):
            raise InputError(f"{source}: {name} must be haiku, sonnet, opus or a model id, got {value!r}")
        return value
    if name in _INTEGERS:
        low, high = _INTEGERS[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{source}: {name} must be an integer from {low} to {high}, got {value!r}")
        if not low <= value <= high:
            raise InputError(f"{source}: {name} must be from {low} to {high}, got {value!r}")
        return value
    if name == "max_budget_usd":
        if not (is_number(value) and 0 < value <= MAX_COST_LIMIT):
            raise InputError(
                f"{source}: max_budget_usd must be a number of US dollars above 0 and at most {MAX_COST_LIMIT:g}, "
                f"got {value!r}"
            )
        return float(value)
    if name.endswith("_seconds"):
        # 0 would fail every attempt (or never wait); past a week is surely a typo.
        if not _is_seconds(value):
            raise InputError(
                f"{source}: {name} must be a number of seconds above 0 and at most {MAX_SECONDS} (a week), "
                f"got {value!r}"
            )
        return float(value)
    if not (is_number(value) and value >= 0):
        raise InputError(f"{source}: {name} must be a non-negative finite number, got {value!r}")
    return value
