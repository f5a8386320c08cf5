"""The dashboard's options, checked before anything opens: where it listens and its token.

Light on purpose: the CLI checks these for `dashboard` and `serve --dashboard` before it imports
the web stack, so a refused bind costs nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from api import defaults
from api.errors import InputError

MIN_TOKEN_CHARS = 16
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True)
class DashboardOptions:
    """Where the dashboard listens and the token every request must carry (None: local only)."""

    host: str = defaults.DASHBOARD_HOST
    port: int = defaults.DASHBOARD_PORT
    token: str | None = None
    budget_usd: float | None = None  # the run's --max-cost, shown against the spend


def make_options(
    host: str | None, port: int | None, token: str | None, budget_usd: float | None = None
) -> DashboardOptions:
    """Validate the dashboard's options. Raises InputError naming the bad one; a host other
    machines can reach needs a token."""
    host = defaults.DASHBOARD_HOST if host is None else host.strip()
    port = defaults.DASHBOARD_PORT if port is None else port
    if not host:
        raise InputError("--host is empty: give an address such as 127.0.0.1 (this machine only) or 0.0.0.0")
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 1 and 65535 (0 picks a free one), got {port}")
    if token is not None and (len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token)):
        raise InputError(
            f"--token must be at least {MIN_TOKEN_CHARS} characters without spaces; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if token is None and not is_local(host):
        raise InputError(
            f"--host {host} can be reached from other machines: pass --token (or set AGENT_MANAGER_DASHBOARD_TOKEN) "
            "so that only people who have it can see the run and act on it, or listen on 127.0.0.1"
        )
    return DashboardOptions(host=host, port=port, token=token, budget_usd=budget_usd)


def is_local(host: str) -> bool:
    """Whether ``host`` names this machine's loopback only (127.0.0.0/8, ::1, localhost).

    A name is resolved; one that resolves to any other address, or not at all, is not local.
    """
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
