"""File-lock paths: the one normal form a path takes, and the refusal of any path outside the project."""

from __future__ import annotations

import os
from pathlib import Path

from api.defaults import MAX_PATH_LENGTH
from api.errors import InputError, PathOutsideProjectError

__all__ = ["resolve_project_path"]


def resolve_project_path(project_dir: Path, file_path: str) -> str:
    """The project-relative POSIX form of ``file_path``.

    Relative paths are taken from the project root. Raises PathOutsideProjectError for a
    path that leaves the project, directly, through ``..`` or through a symlink.
    """
    if not isinstance(file_path, str) or not file_path.strip():
        raise InputError("file_path must be a non-empty path inside the project")
    if "\x00" in file_path or len(file_path) > MAX_PATH_LENGTH:
        raise InputError(f"file_path must be at most {MAX_PATH_LENGTH} characters with no NUL bytes")
    root = Path(os.path.realpath(project_dir))
    candidate = Path(file_path)
    if not candidate.is_absolute():
        candidate = root / candidate
    # realpath follows symlinks of the parts that exist, so a link pointing outside is caught.
    resolved = Path(os.path.realpath(candidate))
    if resolved == root or root not in resolved.parents:
        raise PathOutsideProjectError(f"{file_path!r} is outside the project directory {root}")
    return resolved.relative_to(root).as_posix()
