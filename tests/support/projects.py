"""Project directories as the tests set them up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_features(project: Path, features: list[dict[str, Any]], indent: int | None = None) -> Path:
    """Write ``features`` as the project's features.json and return the project directory."""
    (project / "features.json").write_text(json.dumps(features, indent=indent), encoding="utf-8")
    return project
