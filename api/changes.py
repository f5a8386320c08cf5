"""Wake-ups for a supervisor waiting on an empty queue: has the queue changed, in any process?

Every change to the queue appends to the ``events`` table through ``statements.log``, inside the
changing transaction, so the event log doubles as the change signal:

- SQLite: ``max(events.id)`` is read at most every ``poll_seconds`` (an index lookup, in a read
  transaction that takes no lock). Writers are serialised (BEGIN IMMEDIATE), so ids commit in
  order: a new maximum means a new commit.
- PostgreSQL: a trigger on ``events`` (migration 0006) notifies ``QUEUE_CHANNEL`` in the
  transaction that appends; PostgreSQL delivers it on commit, once per transaction, to every session that LISTENs on
  ``QUEUE_CHANNEL``. The watcher listens on one dedicated autocommit connection and waits on its
  socket. A dropped connection is remade with backoff, and the reconnect is reported as a change
  (a notification may have been lost meanwhile). After a notification, one round trip on that
  connection collects those of the commits made meanwhile, so several commits before a wait()
  wake it once. ``max(events.id)`` is still read every
  ``SAFETY_POLL_S`` as a safety net (a connection pooler that does not pass notifications on, a
  half-open TCP connection that keepalives have not noticed yet).

All blocking work (the polls, connecting, waiting on the socket) runs in the watcher's one worker
thread, so the event loop never blocks, and ``close()`` joins that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from select import select as select_fds
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.engine import URL

from api.database import Database
from api.errors import DatabaseError
from api.models import Event

if TYPE_CHECKING:
    import psycopg

QUEUE_CHANNEL = "agent_manager_queue"
SAFETY_POLL_S = 5.0  # PostgreSQL: max(events.id) is read this often besides listening
LISTENER_NAME = "agent-manager-watcher"  # application_name of the LISTEN connection
_RECONNECT_FIRST_S = 0.1
_RECONNECT_MAX_S = 2.0
_CATCH_UP_TIMEOUT_S = 5.0
_MAX_EVENT_ID = select(func.max(Event.id))

log = logging.getLogger("agent_manager.changes")


class ChangeWatcher:
    """Wakes a waiting supervisor when the queue changed in any process.

    Use it from one event loop; ``close()`` may be called from any thread. On PostgreSQL it holds
    one connection of its own (besides the database's pool). The constructor blocks while it reads
    the baseline (and, on PostgreSQL, connects and LISTENs): make it before serving, not per wait.
    """

    def __init__(self, db: Database, *, poll_seconds: float = 0.5) -> None:
        self._db = db
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._pending = False  # a change seen by the worker and not yet reported by wait()
        self._closed = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-manager-changes")
        # LISTEN before reading the baseline: a commit from then on is counted in it or notified.
        self._listener = None if db.is_sqlite else _Listener(db.url)
        try:
            self._last_id = self._max_event_id()
        except BaseException:
            self.close()
            raise
        self._polled_at = time.monotonic()

    async def wait(self, timeout: float | None) -> bool:  # noqa: ASYNC109 - a timeout is part of the answer
        """Return True as soon as the queue changed since the previous wait() returned (or since
        construction), False at the timeout.

        Several changes before a wait() are reported by one True. A wait() running when close() is
        called returns False; calling wait() after close() raises RuntimeError.
        """
        if self._closed:
            raise RuntimeError("wait() on a closed ChangeWatcher")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._take_pending():
                return True
            now = time.monotonic()
            if self._closed or (deadline is not None and now >= deadline):
                return False
            every = self._poll_seconds if self._listener is None else SAFETY_POLL_S
            until = self._polled_at + every
            if now >= until:
                self._polled_at = now
                await self._in_worker(self._poll)
                continue
            if deadline is not None:
                until = min(until, deadline)
            if self._listener is None:
                await asyncio.sleep(until - now)
            else:
                await self._in_worker(self._listen, until - now)

    def close(self) -> None:
        """Stop the worker thread (joined before returning) and close the LISTEN connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._listener is not None:
            self._listener.interrupt()
        self._worker.shutdown(wait=True)
        if self._listener is not None:
            self._listener.close()

    # -- in the event loop ----------------------------------------------------------------

    def _take_pending(self) -> bool:
        with self._lock:
            pending, self._pending = self._pending, False
            return pending

    async def _in_worker(self, work: Callable[..., None], *args: Any) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._worker, work, *args)
        except asyncio.CancelledError:
            # The wait() was cancelled: end a socket wait now, so the thread is free for the next.
            if self._listener is not None:
                self._listener.interrupt()
            raise
        except RuntimeError:
            if not self._closed:  # else: closed from another thread before the work was queued
                raise

    # -- in the worker thread -------------------------------------------------------------

    def _note_change(self) -> None:
        with self._lock:
            self._pending = True

    def _busy(self) -> bool:
        """Nothing to wait for: closing, or a change already waits to be reported."""
        with self._lock:
            return self._closed or self._pending

    def _max_event_id(self) -> int | None:
        return self._db.run(lambda session: session.scalar(_MAX_EVENT_ID), read_only=True)

    def _poll(self) -> None:
        if self._busy():
            return
        try:
            latest = self._max_event_id()
        except DatabaseError as exc:
            log.warning("cannot check the queue for changes (will retry): %s", exc)
            return
        if latest != self._last_id:
            self._last_id = latest
            self._note_change()

    def _listen(self, seconds: float) -> None:
        assert self._listener is not None
        if not self._busy() and self._listener.step(seconds):
            self._note_change()


class _Listener:
    """The LISTEN connection: used from the watcher's worker thread only, but for interrupt()."""

    def __init__(self, url: URL) -> None:
        from psycopg.conninfo import conninfo_to_dict

        uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
        # The URL's own settings win over these defaults.
        self._params: dict[str, Any] = {
            "connect_timeout": 5,
            "application_name": LISTENER_NAME,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            **conninfo_to_dict(uri),
        }
        self._where = url.render_as_string(hide_password=True)
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = _RECONNECT_FIRST_S
        self._retry_at = 0.0
        self._closing = False
        # A self-pipe: interrupt() makes a wait on the socket return at once.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._connect()

    def _connect(self) -> bool:
        import psycopg

        try:
            conn = psycopg.connect(**self._params, autocommit=True)
        except psycopg.Error as exc:
            self._failed(exc)
            return False
        try:
            conn.execute(f"LISTEN {QUEUE_CHANNEL}")
        except psycopg.Error as exc:
            conn.close()
            self._failed(exc)
            return False
        if self._backoff != _RECONNECT_FIRST_S:
            log.info("listening for queue changes on %s again", self._where)
        self._conn = conn
        self._backoff = _RECONNECT_FIRST_S
        return True

    def _failed(self, exc: BaseException) -> None:
        # Warned once per outage; the retries while it lasts are debug messages.
        log.log(
            logging.WARNING if self._backoff == _RECONNECT_FIRST_S else logging.DEBUG,
            "cannot listen for queue changes on %s (retrying in %.1f s): %s",
            self._where,
            self._backoff,
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        )
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _RECONNECT_MAX_S)

    def step(self, seconds: float) -> bool:
        """Wait up to ``seconds`` (less if interrupted) for a notification.

        True when one came, or when the connection was remade: a notification sent while it was
        down is lost, so a reconnect counts as a change.
        """
        import psycopg

        conn = self._conn
        if conn is None:
            pause = self._retry_at - time.monotonic()
            if pause > 0:
                self._sleep(min(seconds, pause), None)
                return False
            return self._connect()
        try:
            if not self._sleep(seconds, conn.fileno()):
                return False
            pgconn = conn.pgconn
            pgconn.consume_input()
            notified = False
            while pgconn.notifies() is not None:
                notified = True
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection is broken")
            if notified:
                self._catch_up(pgconn)
        except (psycopg.Error, OSError) as exc:
            self._conn = None
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()
            self._backoff = _RECONNECT_FIRST_S
            self._failed(exc)
            return False
        return notified

    def _catch_up(self, pgconn: psycopg.pq.abc.PGconn) -> None:
        """Drop the notifications of commits made before now, which this wake-up covers.

        PostgreSQL sends each transaction's notification on its own, when the listening backend
        gets to it, so those of commits made just before the waker read the queue can arrive
        after it woke, and would wake it again for nothing. A committing backend signals the
        listeners before its COMMIT returns, and a backend sends what it was signalled about
        before it answers a query: after one round trip, every commit made before it has been
        delivered. Dropping them loses nothing: the waker reads the queue after this returns.
        """
        import psycopg

        # Not cut short by interrupt(): a round trip takes a millisecond, or the timeout.
        deadline = time.monotonic() + _CATCH_UP_TIMEOUT_S

        def ready(write: bool) -> None:
            fds = [pgconn.socket]
            left = deadline - time.monotonic()
            if left <= 0 or not any(select_fds([], fds, [], left) if write else select_fds(fds, [], [], left)):
                raise psycopg.OperationalError(f"no answer to a round trip within {_CATCH_UP_TIMEOUT_S:.0f} s")

        pgconn.send_query(b"SELECT 1")
        while pgconn.flush():
            ready(write=True)
        while True:
            while pgconn.is_busy():
                ready(write=False)
                pgconn.consume_input()
            if pgconn.get_result() is None:
                break
        while pgconn.notifies() is not None:
            pass

    def _sleep(self, seconds: float, fd: int | None) -> bool:
        """Wait up to ``seconds`` for ``fd`` to be readable; False at the timeout or on interrupt()."""
        if self._closing:
            return False
        fds = [self._wake_r] if fd is None else [self._wake_r, fd]
        readable, _, _ = select_fds(fds, [], [], max(0.0, seconds))
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        return fd is not None and fd in readable

    def interrupt(self) -> None:
        """End the current (or the next) wait in step(); callable from any thread."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Called once the worker thread has ended."""
        self._closing = True
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
