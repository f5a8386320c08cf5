"""`python -m mcp_server`: the coordination MCP server on stdio, configured by AGENT_MANAGER_* variables."""

from __future__ import annotations

import sys

from api.errors import InputError
from mcp_server import Identity
from mcp_server.server import build_server


def main() -> int:
    try:
        identity = Identity.from_env()
    except InputError as exc:
        print(f"agent-manager MCP server: {exc.message}", file=sys.stderr)
        return 2
    build_server(identity=identity).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
