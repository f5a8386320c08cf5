"""File-lock tools: agents working in parallel take a lock before editing a shared file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated

from mcp.server.mcpserver import Context
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from api.defaults import MAX_PATH_LENGTH
from api.errors import PathOutsideProjectError
from mcp_server import AppContext, tool_errors

FilePath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description=(
            "A file inside the project, relative to the project root (e.g. src/App.tsx); "
            "an absolute path must be inside the project directory."
        ),
    ),
]


class LockAnswer(TypedDict):
    success: bool
    message: str


class LockInfo(TypedDict):
    path: str
    owner: str
    feature_id: int | None


def claim_file(file_path: FilePath, ctx: Context[AppContext]) -> LockAnswer:
    """Lock a project file before you edit it, so no other agent edits it at the same time.

    success true: the file is yours (also when you already held it). success false: another
    agent holds it; the message names the feature that does. Work on other files and try
    again later. Release each lock with release_file when done; locks taken for your
    assigned feature are also released when the feature is. The lock is held in the name
    this session gives you (an agent_id argument is ignored).
    """
    app = ctx.request_context.lifespan_context
    root = app.identity.files_root
    with tool_errors(), _relative_path_hint(file_path, root):
        result = app.queue.claim_file(file_path, app.identity.agent_id, app.identity.feature_id, root=root)
    return LockAnswer(success=result.success, message=result.message)


def release_file(file_path: FilePath, ctx: Context[AppContext]) -> LockAnswer:
    """Unlock a file you locked with claim_file, as soon as you are done editing it.

    success false means you did not hold a lock on it (who you are comes from this session;
    an agent_id argument is ignored).
    """
    app = ctx.request_context.lifespan_context
    root = app.identity.files_root
    with tool_errors(), _relative_path_hint(file_path, root):
        result = app.queue.release_file(file_path, app.identity.agent_id, root=root)
    return LockAnswer(success=result.success, message=result.message)


def list_file_locks(ctx: Context[AppContext]) -> list[LockInfo]:
    """List every file lock held right now: project-relative path, owning agent, and feature id."""
    app = ctx.request_context.lifespan_context
    with tool_errors():
        locks = app.queue.file_locks()
    return [LockInfo(path=path, owner=owner, feature_id=feature_id) for path, owner, feature_id in locks]


@contextlib.contextmanager
def _relative_path_hint(file_path: str, project_dir: Path) -> Iterator[None]:
    """Agents written for a project-rooted convention pass /src/App.tsx: say what to pass instead."""
    try:
        yield
    except PathOutsideProjectError as exc:
        path = PurePosixPath(file_path)
        root = PurePosixPath(project_dir)
        if not path.is_absolute() or path == root or root in path.parents:
            raise  # the hint would not help: a relative path that leaves, or a link out of the project
        example = "/".join(path.parts[1:]) or "src/App.tsx"
        raise PathOutsideProjectError(f"{exc.message}: use a path relative to the project, e.g. {example}") from exc


TOOLS = (claim_file, release_file, list_file_locks)
