"""Serving the dashboard: the listening socket, and uvicorn in the foreground
(`agent-manager dashboard`) or in a thread beside a supervisor (`agent-manager serve --dashboard`).

The socket is bound before anything else starts, so a port in use or an unknown host is one
clear line and exit 2, not a traceback from inside uvicorn. Beside a supervisor the dashboard
runs on its own event loop in its own thread: rendering a table of 1,000 features takes tens of
milliseconds of CPU, which on the supervisor's loop would land on its dispatches; in a thread it
only shares the interpreter (bench/dashboard.py measures both).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from api.errors import InputError
from supervisor.dashboard.data import LiveRun
from supervisor.dashboard.options import DashboardOptions

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.dashboard.app import Dashboard
    from supervisor.loop import Supervisor

GRACEFUL_SHUTDOWN_S = 2  # open event streams are closed by the app first; this bounds the rest


def bind(options: DashboardOptions) -> socket.socket:
    """A listening socket on the options' host and port. Raises InputError with the reason."""
    where = f"{options.host}:{options.port}"
    try:
        infos = socket.getaddrinfo(options.host.strip("[]"), options.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise InputError(f"cannot listen on {where}: unknown host ({reason}); check --host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restarted dashboard take its port while old connections linger in TIME_WAIT;
        # a port another program listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = {
            errno.EADDRINUSE: "another program uses that port: pass --port N (0 picks a free one)",
            errno.EADDRNOTAVAIL: "no interface of this machine has that address: check --host",
            errno.EACCES: "ports below 1024 need privileges: pass --port 8765",
        }.get(exc.errno or 0, "check --host and --port")
        raise InputError(f"cannot listen on {where}: {exc.strerror or exc}; {hint}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, options: DashboardOptions) -> str:
    """The address to open, with the port actually bound (``--port 0``)."""
    port = sock.getsockname()[1]
    host = options.host.strip("[]")
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()  # listening everywhere: a name others can use
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app first when it shuts down: event streams never end on
    their own, and uvicorn would wait out its graceful timeout for them."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


class DashboardServer:
    """uvicorn on an already bound socket: ``run()`` in the foreground, or ``start()`` / ``stop()``
    in a thread of its own (beside a supervisor)."""

    def __init__(self, app: Dashboard, sock: socket.socket) -> None:
        self.app = app
        self.sock = sock
        config = uvicorn.Config(
            app.asgi,
            log_config=None,  # the process's logging decides (serve mode: supervisor.log)
            access_log=False,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        self._server = _Server(config, app.changes.close)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C, SIGTERM): uvicorn handles the signals."""
        asyncio.run(self._server.serve(sockets=[self.sock]))

    def start(self) -> None:
        """Serve from a daemon thread with its own event loop; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="agent-manager-dashboard", daemon=True)
        self._thread.start()
        while self._thread.is_alive() and not self._server.started:
            self._thread.join(0.01)  # polled: uvicorn offers no thread-safe "started" signal

    def stop(self, timeout: float = 5.0) -> None:
        """End the server thread: open pages are disconnected, the change watcher is closed."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


class SupervisorLink:
    """What the supervisor in this process knows that the database does not: what each session is
    doing now and the run's spend. Read from the dashboard's thread through the supervisor's loop,
    so its dicts are never read while they change."""

    SNAPSHOT_TIMEOUT_S = 1.0

    def __init__(self, supervisor: Supervisor, budget_usd: float | None) -> None:
        self.supervisor = supervisor
        self.budget_usd = budget_usd
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def snapshot(self) -> LiveRun | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        done: concurrent.futures.Future[LiveRun] = concurrent.futures.Future()

        def take() -> None:
            agents = self.supervisor.agents
            done.set_result(LiveRun({fid: s.doing for fid, s in agents.items()}, self.supervisor.spent))

        try:
            loop.call_soon_threadsafe(take)
            return done.result(self.SNAPSHOT_TIMEOUT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return None  # the run has ended, or its loop is busy: the page falls back to the database


def start_beside(
    settings: Settings, options: DashboardOptions, link: SupervisorLink, sock: socket.socket
) -> DashboardServer:
    """`serve --dashboard`: the dashboard on ``sock`` (see ``bind``), in a thread of this process
    and on a database engine of its own, so its reads never wait for the supervisor's pool."""
    from api.database import Database
    from api.queue import FeatureQueue
    from supervisor.dashboard.app import create_app

    queue = FeatureQueue(Database(settings.database_url, pool_size=2), project_dir=settings.project_dir)
    app = create_app(queue, options, project_dir=settings.project_dir, link=link)
    server = DashboardServer(app, sock)
    server.start()
    print(f"dashboard: {url_of(sock, options)}", file=sys.stdout, flush=True)
    return server
