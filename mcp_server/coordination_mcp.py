"""File-lock tools: agents working in parallel take a lock before editing a shared file."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from api.queue import MAX_PATH_LENGTH
from mcp_server import AppContext, tool_errors

FilePath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="A file inside the project: relative to the project root, or absolute.",
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
    assigned feature are also released when the feature is.
    """
    app = ctx.request_context.lifespan_context
    with tool_errors():
        result = app.queue.claim_file(file_path, app.identity.agent_id, app.identity.feature_id)
    return LockAnswer(success=result.success, message=result.message)


def release_file(file_path: FilePath, ctx: Context[AppContext]) -> LockAnswer:
    """Unlock a file you locked with claim_file, as soon as you are done editing it.

    success false means you did not hold a lock on it.
    """
    app = ctx.request_context.lifespan_context
    with tool_errors():
        result = app.queue.release_file(file_path, app.identity.agent_id)
    return LockAnswer(success=result.success, message=result.message)


def list_file_locks(ctx: Context[AppContext]) -> list[LockInfo]:
    """List every file lock held right now: project-relative path, owning agent, and feature id."""
    app = ctx.request_context.lifespan_context
    with tool_errors():
        locks = app.queue.file_locks()
    return [LockInfo(path=path, owner=owner, feature_id=feature_id) for path, owner, feature_id in locks]


TOOLS = (claim_file, release_file, list_file_locks)
