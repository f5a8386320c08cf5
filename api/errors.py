"""One exception hierarchy for agent-manager; the CLI maps it to one line and an exit code."""

from __future__ import annotations


class AgentManagerError(Exception):
    """Root of every error agent-manager raises on purpose.

    ``exit_code`` is what the CLI exits with when this reaches the top level.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(AgentManagerError):
    """Bad usage or bad input (features.json, arguments, paths): exit 2."""

    exit_code = 2


class FeaturesFileError(InputError):
    """features.json is malformed; ``names`` lists the offending features, if any."""

    def __init__(self, message: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.names = names


class DatabaseError(AgentManagerError):
    """The database is unreachable or misbehaved (driver errors are translated to this)."""

    exit_code = 2


class NotFoundError(InputError):
    """An id or name that does not exist."""


class PathOutsideProjectError(InputError):
    """A file path that resolves outside the project directory."""


class LeaseLostError(AgentManagerError):
    """The caller no longer holds the claim it tried to act on (fencing token mismatch)."""
