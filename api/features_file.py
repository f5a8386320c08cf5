"""Parse and validate features.json into FeatureSpec records (no database access)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.dag import PRIORITY_LIMIT, build_graph, find_cycle
from api.defaults import MAX_ATTEMPTS_LIMIT, MAX_COST_LIMIT
from api.errors import FeaturesFileError

# Limits on what one file may hold: well past any real project, low enough that a wrong path
# (/dev/zero, a log file) or a runaway generator is refused at once instead of filling memory.
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_NAME = 200
MAX_DESCRIPTION = 100_000  # characters; it goes into the agent's prompt
MAX_STEPS = 100
MAX_STEP = 5_000
MAX_VERIFY = 10_000
MAX_CATEGORY = 100
MAX_MODEL = 100
MAX_DEPENDENCIES = 10_000
MAX_FILES = 1_000
MAX_FILE_GLOB = 1_024
MAX_ESTIMATE_MINUTES = 7 * 24 * 60  # a week: past that it is surely a typo (or seconds)
MODEL_RE = re.compile(r"^(haiku|sonnet|opus|claude-[a-z0-9][a-z0-9.\-]*)$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature as written in features.json, validated."""

    name: str
    description: str = ""
    category: str = ""
    priority: int = 0
    depends_on: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()
    verify: str | None = None
    model: str | None = None
    max_attempts: int | None = None
    max_cost_usd: float | None = None  # per-feature spending cap, summed over its attempts
    estimate_minutes: float | None = None  # how long an attempt should take (claim order)
    files: tuple[str, ...] = ()  # globs of the files it will touch, relative to the project (co-scheduling)


_FIELDS = {
    "name", "description", "category", "priority", "depends_on", "steps", "verify", "model", "max_attempts",
    "max_cost_usd", "estimate_minutes", "files",
}  # fmt: skip


def load_features_file(path: Path, known_edges: dict[str, tuple[str, ...]] | None = None) -> list[FeatureSpec]:
    """Read and validate ``path``.

    ``known_edges`` maps features already in the database to their dependencies, so a file
    may depend on them and cycles through them are caught. Raises FeaturesFileError.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)  # never more: the path may be /dev/zero
    except FileNotFoundError:
        raise FeaturesFileError(
            f"no features file at {path}: pass --features FILE or create one (see features.example.json)"
        ) from None
    except IsADirectoryError:
        raise FeaturesFileError(f"features file {path} is a directory, expected a JSON file") from None
    except OSError as exc:
        raise FeaturesFileError(f"cannot read features file {path}: {exc.strerror}") from None
    return parse_features(raw, source=str(path), known_edges=known_edges)


def _size_error(source: str) -> FeaturesFileError:
    return FeaturesFileError(
        f"{source}: larger than the {MAX_FILE_BYTES // (1024 * 1024)} MiB limit of a features file; "
        "is it the right file? Split a real one into several imports"
    )


def parse_features(
    raw: bytes, *, source: str = "features.json", known_edges: dict[str, tuple[str, ...]] | None = None
) -> list[FeatureSpec]:
    """Validate the bytes of a features file; see load_features_file."""
    if len(raw) > MAX_FILE_BYTES:
        raise _size_error(source)
    data = _decode(raw, source)
    if isinstance(data, dict):
        if set(data) != {"features"}:
            extra = sorted(set(data) - {"features"})
            what = f"unknown top-level key(s) {', '.join(map(repr, extra))}" if extra else 'no "features" key'
            raise FeaturesFileError(f'{source}: {what}; expected a list of features or {{"features": [...]}}')
        data = data["features"]
    if not isinstance(data, list):
        raise FeaturesFileError(f"{source}: expected a JSON list of features, got {_json_type(data)}")
    if not data:
        raise FeaturesFileError(f"{source}: contains no features")
    specs = [_feature(item, index, source) for index, item in enumerate(data, start=1)]
    _check_graph(specs, source, known_edges or {})
    return specs


def _decode(raw: bytes, source: str) -> Any:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FeaturesFileError(f"{source}: file is UTF-16 encoded; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 BOM (Windows editors) is harmless
    except UnicodeDecodeError as exc:
        raise FeaturesFileError(f"{source}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    if not text.strip():
        raise FeaturesFileError(f"{source}: file is empty; expected a JSON list of features")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise FeaturesFileError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise FeaturesFileError(f"{source}: {exc}") from None
    except RecursionError:
        raise FeaturesFileError(f"{source}: JSON nested too deeply; a feature is an object of plain fields") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r} in one JSON object")
        seen[key] = value
    return seen


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in features.json")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _feature(item: Any, index: int, source: str) -> FeatureSpec:
    where = f"{source}: feature #{index}"
    if not isinstance(item, dict):
        raise FeaturesFileError(f'{where} is {_json_type(item)}, expected an object with a "name"')
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        shown = "missing" if "name" not in item else f"{_json_type(name)}" if not isinstance(name, str) else "empty"
        raise FeaturesFileError(f'{where}: "name" must be a non-empty string ({shown})')
    if name != name.strip() or _CONTROL_RE.search(name) or len(name) > MAX_NAME:
        raise FeaturesFileError(
            f'{where} ({name[:40]!r}): "name" must be at most {MAX_NAME} characters with no surrounding '
            "whitespace or control characters",
            (name,),
        )
    where = f"{source}: feature {name!r}"
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise FeaturesFileError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(_FIELDS))}", (name,)
        )

    def string(key: str, default: str | None, limit: int) -> str | None:
        value = item.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise FeaturesFileError(f'{where}: "{key}" must be a string, got {_json_type(value)}', (name,))
        if len(value) > limit:
            raise FeaturesFileError(f'{where}: "{key}" is {len(value):,} characters; the limit is {limit:,}', (name,))
        return value

    def integer(key: str, low: int, high: int) -> int | None:
        value = item.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise FeaturesFileError(f'{where}: "{key}" must be an integer, got {_json_type(value)}', (name,))
        if not low <= value <= high:
            raise FeaturesFileError(f'{where}: "{key}" must be between {low} and {high}, got {value}', (name,))
        return value

    def money(key: str) -> float | None:
        value = item.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FeaturesFileError(
                f'{where}: "{key}" must be a number of US dollars, got {_json_type(value)}', (name,)
            )
        if not 0 < value <= MAX_COST_LIMIT:
            raise FeaturesFileError(
                f'{where}: "{key}" must be above 0 and at most {MAX_COST_LIMIT}, got {value}', (name,)
            )
        return float(value)

    def strings(key: str, count: int, limit: int) -> tuple[str, ...]:
        value = item.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FeaturesFileError(f'{where}: "{key}" must be a list of strings', (name,))
        if len(value) > count:
            raise FeaturesFileError(f'{where}: "{key}" has {len(value):,} entries; the limit is {count:,}', (name,))
        longest = max(value, key=len, default="")
        if len(longest) > limit:
            raise FeaturesFileError(
                f'{where}: "{key}" has an entry of {len(longest):,} characters ({longest[:40]!r}...); '
                f"the limit is {limit:,}",
                (name,),
            )
        return tuple(value)

    model = string("model", None, MAX_MODEL)
    if model is not None and not MODEL_RE.match(model):
        raise FeaturesFileError(
            f'{where}: "model" must be haiku, sonnet, opus or a full model id like claude-sonnet-4-5, got {model!r}',
            (name,),
        )
    verify = string("verify", None, MAX_VERIFY)
    if verify is not None and not verify.strip():
        raise FeaturesFileError(f'{where}: "verify" is an empty command; remove it or give a command', (name,))
    # Repeated names collapse, order kept.
    depends_on = tuple(dict.fromkeys(strings("depends_on", MAX_DEPENDENCIES, MAX_NAME)))
    estimate = item.get("estimate_minutes")
    if estimate is not None and (
        isinstance(estimate, bool)
        or not isinstance(estimate, (int, float))
        or not 0 < estimate <= MAX_ESTIMATE_MINUTES
        or estimate != estimate
    ):
        raise FeaturesFileError(
            f'{where}: "estimate_minutes" must be a number of minutes above 0 and at most '
            f"{MAX_ESTIMATE_MINUTES:,} (a week), got {estimate!r}",
            (name,),
        )
    files = tuple(dict.fromkeys(strings("files", MAX_FILES, MAX_FILE_GLOB)))
    for pattern in files:
        parts = pattern.replace("\\", "/").split("/")
        if not pattern.strip() or pattern.startswith(("/", "~")) or ".." in parts or _CONTROL_RE.search(pattern):
            raise FeaturesFileError(
                f'{where}: "files" entries must be paths or globs relative to the project such as "src/api/**", '
                f"got {pattern!r}",
                (name,),
            )
    return FeatureSpec(
        name=name,
        description=string("description", "", MAX_DESCRIPTION) or "",
        category=(string("category", "", MAX_CATEGORY) or "").strip().lower(),
        priority=integer("priority", -PRIORITY_LIMIT, PRIORITY_LIMIT) or 0,
        depends_on=depends_on,
        steps=strings("steps", MAX_STEPS, MAX_STEP),
        verify=verify,
        model=model,
        max_attempts=integer("max_attempts", 1, MAX_ATTEMPTS_LIMIT),
        max_cost_usd=money("max_cost_usd"),
        estimate_minutes=None if estimate is None else float(estimate),
        files=files,
    )


def _check_graph(specs: list[FeatureSpec], source: str, known_edges: dict[str, tuple[str, ...]]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise FeaturesFileError(f"{source}: duplicate feature name {spec.name!r}", (spec.name,))
        seen.add(spec.name)
    for spec in specs:
        if spec.name in spec.depends_on:
            raise FeaturesFileError(f"{source}: feature {spec.name!r} depends on itself", (spec.name,))
        unknown = [dep for dep in spec.depends_on if dep not in seen and dep not in known_edges]
        if unknown:
            raise FeaturesFileError(
                f"{source}: feature {spec.name!r} depends on unknown feature(s) {', '.join(map(repr, unknown))}",
                (spec.name, *unknown),
            )
    edges = dict(known_edges)
    edges.update({spec.name: spec.depends_on for spec in specs})
    cycle = find_cycle(build_graph(edges))
    if cycle:
        raise FeaturesFileError(
            f"{source}: dependency cycle {' -> '.join(map(repr, cycle))}", tuple(dict.fromkeys(cycle))
        )
