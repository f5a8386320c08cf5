"""Every default and bound of a setting, defined once, with the one check for "seconds".

The CLI flags, the AGENT_MANAGER_* variables, the config file and the MCP server's environment
all fall back to these; ``supervisor.settings`` and ``mcp_server`` read them from here.
"""

from __future__ import annotations

import math
from typing import Any

from api.errors import InputError

MAX_AGENTS = 3
LEASE_SECONDS = 90.0
MIN_LEASE_SECONDS = 3.0
MAX_ATTEMPTS = 3
VERIFY_TIMEOUT_SECONDS = 600.0
IDLE_POLL_SECONDS = 2.0  # how often an idle supervisor looks for work freed by others
MAX_SECONDS = 7 * 24 * 3600  # any duration past a week is surely a typo
MAX_PATH_LENGTH = 1024
MAX_AGENT_ID = 200  # the width of the owner / agent_id columns
MAX_ATTEMPTS_LIMIT = 100
MAX_COST_LIMIT = 10_000.0  # US dollars
DASHBOARD_HOST = "127.0.0.1"  # this machine only: any other address needs a token
DASHBOARD_PORT = 8765


def is_number(value: Any) -> bool:
    """A real, finite number (TOML has inf and nan; a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seconds(value: Any, name: str, *, low: float = 0.0, high: float = MAX_SECONDS) -> float:
    """``value`` as seconds above ``low`` (or equal, when low > 0) and at most ``high``.

    Accepts a number or its text (a flag, a variable); raises InputError naming ``name``.
    """
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
    if not is_number(number) or not (number >= low if low > 0 else number > 0) or number > high:
        floor = f"at least {low:g}" if low > 0 else "above 0"
        raise InputError(f"{name} must be a number of seconds {floor} and at most {high:g} (a week), got {value!r}")
    return float(number)
