"""Engine and session factory, SQLite pragmas, and migrate-on-start."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, PoolProxiedConnection

from api.driver import Driver, Tx
from api.errors import DatabaseError, InputError


def _find_migrations() -> Path:
    """The migration scripts: api/_migrations in an installed wheel (build_hooks.py puts them
    there), else the checkout's alembic/ (an editable install or a source tree). Next to an
    installed api/ an `alembic` folder is the Alembic library, so the folder must hold our env.py
    and versions/ to count."""
    here = Path(__file__).resolve().parent
    candidates = (here / "_migrations", here.parent / "alembic")
    for candidate in candidates:
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    return candidates[0]


ALEMBIC_DIR = _find_migrations()
# The newest revision in alembic/versions (a test keeps the two equal). A database already at
# it is opened without importing alembic or parsing the scripts: every command opens one.
HEAD_REVISION = "0006"
# Any fixed 64-bit key: all supervisors serialise their first-start migration on it.
_PG_MIGRATION_LOCK = 0x61676D6772  # "agmgr"
SQLITE_BUSY_TIMEOUT_S = 30.0
# PostgreSQL aborts one side of a deadlock or serialisation conflict; the work is safe to redo.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_MAX_TRIES = 8

T = TypeVar("T")


def default_url(project_dir: Path) -> str:
    return f"sqlite:///{(project_dir / '.agent-manager' / 'features.db').resolve()}"


def normalise_url(url: str) -> URL:
    """Parse a database URL; plain ``postgresql://`` is spelled ``postgresql+psycopg://``.

    Raises InputError for a URL that is not SQLite or PostgreSQL.
    """
    try:
        parsed = make_url(url.strip())
    except sa_exc.ArgumentError as exc:
        raise InputError(f"bad database URL {url!r}: expected sqlite:///PATH or postgresql+psycopg://...") from exc
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise InputError(
            f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///PATH or postgresql+psycopg://..."
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise InputError("an in-memory SQLite database cannot be shared by agents: give sqlite:///PATH")
    return parsed


class Database:
    """One engine per process; sessions per unit of work, never shared across threads."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            # Never created here: a typo in a path would quietly start a second, empty queue.
            # The commands that write create the default location themselves.
            folder = self.sqlite_path.parent
            if not folder.is_dir():
                raise InputError(
                    f"directory {folder} of the SQLite database does not exist: create it, or fix the path in "
                    "--database-url (a typo would split the queue in two)"
                )
            options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
        else:
            options = {
                "pool_size": pool_size,
                "max_overflow": pool_size,
                # psycopg prepares repeated statements; a generic plan for the claim query ignores
                # how few rows are ready and scans the backlog, so plan each execution afresh.
                "connect_args": {"connect_timeout": 10, "options": "-c plan_cache_mode=force_custom_plan"},
            }
        self.engine = create_engine(self.url, pool_pre_ping=True, **options)
        # The claim and the release run on driver connections of their own (api.driver), at most
        # pool_size, each kept by the thread that used it last: a pool checkout, a pre-ping (on
        # PostgreSQL a round trip) and a reset on return cost as much as the verb's SQL. A
        # connection found dead is replaced and the work redone instead (run_on_driver). sqlite3
        # takes named parameters. No plan_cache_mode: the ready query's values are in its SQL.
        if self.is_sqlite:
            driver_options: dict[str, Any] = {**options, "paramstyle": "named"}
        else:
            driver_options = {"connect_args": {"connect_timeout": 10}}
        self._driver_engine = create_engine(self.url, poolclass=NullPool, **driver_options)
        if self.is_sqlite:
            _install_sqlite_recipe(self.engine)
            _install_sqlite_recipe(self._driver_engine)
        self._driver: Driver | None = None
        self._connections = _Connections(self._driver_engine, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(read_only=True), expire_on_commit=False)

    @property
    def sqlite_path(self) -> Path:
        """The file of a SQLite database (absolute, as SQLite resolves it)."""
        return Path(self.url.database or ":memory:").absolute()

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextlib.contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        On SQLite a writing transaction takes the write lock up front (BEGIN IMMEDIATE),
        so read-then-write sequences inside it cannot interleave with another writer.
        Raises DatabaseError when the database cannot be reached.
        """
        factory = self._read_sessions if read_only else self._sessions
        try:
            with factory() as session, session.begin():
                yield session
        # SQLAlchemy's wrapping of a driver error, or the driver's own from a statement run on
        # the session's connection (tx_in).
        except (sa_exc.DBAPIError, self.engine.dialect.loaded_dbapi.Error) as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> DatabaseError:
        """One line for a database error: SQLAlchemy's wrapping of a driver error, or the driver's."""
        dbapi = self.engine.dialect.loaded_dbapi
        cause = getattr(exc, "orig", None) or exc
        if isinstance(cause, dbapi.OperationalError | dbapi.InterfaceError) or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        ):
            return DatabaseError(f"database error on {self.display_url}: {_first_line(cause)}")
        # Integrity, data and programming errors: the statement, not the connection, is at
        # fault (a value too long for a column, a duplicate key). Callers show one line.
        return DatabaseError(f"database rejected a write on {self.display_url}: {_first_line(cause)}")

    def run(self, work: Callable[[Session], T], *, read_only: bool = False) -> T:
        """Run ``work(session)`` in one transaction, redoing it after a PostgreSQL deadlock."""
        for attempt in range(_MAX_TRIES):
            try:
                with self.transaction(read_only=read_only) as session:
                    return work(session)
            except DatabaseError as exc:
                if not _redo_after_conflict(getattr(exc.__cause__, "orig", None) or exc.__cause__, attempt):
                    raise
        raise AssertionError("unreachable")

    @property
    def driver(self) -> Driver:
        """The statements compiled for this database (api.driver); connects once to learn its dialect."""
        if self._driver is None:
            self._connections.acquire()  # the dialect reads the server's version on first connect
            self._connections.release()
            self._driver = Driver(self._driver_engine.dialect)
        return self._driver

    def tx_in(self, session: Session) -> Tx:
        """Compiled statements run on ``session``'s connection, in its transaction."""
        return Tx(self.driver, session.connection().connection.driver_connection)

    def run_on_driver(self, work: Callable[[Tx], T]) -> T:
        """Run ``work(tx)`` in one transaction on a driver connection (api.driver): committed on
        success, rolled back on error; redone after a PostgreSQL deadlock, or once on a connection
        found dead before the commit. Raises DatabaseError as transaction() does."""
        driver = self.driver
        dbapi = self._driver_engine.dialect.loaded_dbapi
        for attempt in range(_MAX_TRIES):
            committing = False
            try:
                conn = self._connections.acquire()
            except sa_exc.DBAPIError as exc:
                raise self._error(exc) from exc
            raw: Any = conn.driver_connection
            try:
                tx = Tx(driver, raw)
                if self.is_sqlite:
                    tx.cursor.execute("BEGIN IMMEDIATE")  # the write lock up front, as transaction() takes it
                result = work(tx)
                committing = True
                raw.commit()
                return result
            except dbapi.Error as exc:
                dead = self._driver_engine.dialect.is_disconnect(exc, raw, None)
                if dead:
                    self._connections.drop(exc)
                else:
                    with contextlib.suppress(dbapi.Error):
                        raw.rollback()
                if dead and not committing and attempt == 0:
                    continue  # nothing was committed: redo it on a fresh connection
                if _redo_after_conflict(exc, attempt):
                    continue
                raise self._error(exc) from exc
            except BaseException:
                with contextlib.suppress(Exception):
                    raw.rollback()
                raise
            finally:
                self._connections.release()
        raise AssertionError("unreachable")

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest revision, serialised across processes.

        Raises DatabaseError when the database cannot be opened, is not a database, or was
        written by a newer agent-manager than this one.
        """
        try:
            if self.stored_revisions() == (HEAD_REVISION,):
                return
            self._upgrade()
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise DatabaseError(f"cannot open database {self.display_url}: {_first_line(exc.orig or exc)}") from exc
        except sa_exc.DatabaseError as exc:
            if self.is_sqlite and "not a database" in str(exc.orig or exc):
                raise DatabaseError(
                    f"{self.sqlite_path} is not a SQLite database: point --database-url at another file, "
                    "or move this one away and run `agent-manager import` again"
                ) from exc
            raise DatabaseError(f"cannot open database {self.display_url}: {_first_line(exc.orig or exc)}") from exc

    def stored_revisions(self) -> tuple[str, ...]:
        """The schema revision(s) recorded in the database; () for a database alembic never touched."""
        with self.engine.connect().execution_options(read_only=True) as conn:
            if not inspect(conn).has_table("alembic_version"):
                return ()
            return tuple(row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version"))

    def _upgrade(self) -> None:
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from alembic.util.exc import CommandError

        from alembic import command

        if not (ALEMBIC_DIR / "env.py").is_file():
            raise DatabaseError(
                f"agent-manager's database migrations are missing (looked for {ALEMBIC_DIR}): "
                "reinstall agent-manager (pip install --force-reinstall agent-manager)"
            )
        cfg = Config()
        cfg.set_main_option("script_location", str(ALEMBIC_DIR))
        scripts = ScriptDirectory.from_config(cfg)
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Concurrent first starts queue here; SQLite gets the same from BEGIN IMMEDIATE.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            for revision in MigrationContext.configure(conn).get_current_heads():
                try:
                    scripts.get_revision(revision)
                except CommandError:
                    raise DatabaseError(
                        f"{self._where} was written by a newer agent-manager (schema revision {revision!r}; this "
                        f"version knows up to {scripts.get_current_head()!r}): upgrade agent-manager to use it"
                    ) from None
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @property
    def _where(self) -> str:
        return f"database {self.sqlite_path}" if self.is_sqlite else f"database {self.display_url}"

    def dispose(self) -> None:
        self._connections.close_all()
        self.engine.dispose()
        self._driver_engine.dispose()


class _Connections:
    """Driver connections with thread affinity: a thread keeps the connection it used last, so a
    verb costs no checkout, and at most ``limit`` are open; a thread beyond them takes over an
    idle one, or waits for one. Connections inherited across a fork are left to their process."""

    def __init__(self, engine: Engine, limit: int) -> None:
        self._engine = engine
        self._limit = max(1, limit)
        self._lock = threading.Lock()  # taken twice a verb: a plain lock, the condition only to wait
        self._freed = threading.Condition(self._lock)
        self._waiting = 0
        self._pid = os.getpid()
        self._owned: dict[int, PoolProxiedConnection] = {}  # thread ident -> the connection it holds
        self._busy: set[int] = set()  # threads inside a transaction
        self._inherited: list[PoolProxiedConnection] = []

    def acquire(self) -> PoolProxiedConnection:
        me = threading.get_ident()
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
                # ...nor to close: finalising a psycopg connection here would end the parent's
                # session on their shared socket, so they are kept, unused, for this process's life.
                self._inherited.extend(self._owned.values())
                self._pid, self._owned, self._busy = os.getpid(), {}, set()
            while me not in self._owned:
                idle = next((t for t in self._owned if t not in self._busy), None)
                if len(self._owned) < self._limit:
                    self._owned[me] = self._engine.raw_connection()
                elif idle is not None:
                    self._owned[me] = self._owned.pop(idle)
                else:
                    self._waiting += 1
                    self._freed.wait()
                    self._waiting -= 1
            self._busy.add(me)
            return self._owned[me]

    def release(self) -> None:
        with self._lock:
            self._busy.discard(threading.get_ident())
            if self._waiting:
                self._freed.notify()

    def drop(self, exc: BaseException) -> None:
        """Forget this thread's connection (found dead); the next acquire() opens another."""
        with self._lock:
            conn = self._owned.pop(threading.get_ident(), None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate(exc)

    def close_all(self) -> None:
        with self._lock:
            held = list(self._owned.values()) if self._pid == os.getpid() else []
            self._owned = {}
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()


def _redo_after_conflict(driver_error: BaseException | None, attempt: int) -> bool:
    """Whether to redo a transaction that failed with ``driver_error`` (a PostgreSQL deadlock or
    serialisation conflict, tries left); waits a random backoff first when so."""
    if getattr(driver_error, "sqlstate", None) not in _RETRYABLE_SQLSTATES or attempt == _MAX_TRIES - 1:
        return False
    time.sleep(random.uniform(0, 0.005 * 2**attempt))
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _install_sqlite_recipe(engine: Engine) -> None:
    """SQLAlchemy's documented pysqlite recipe: we emit BEGIN ourselves, IMMEDIATE for writers."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below own transactions
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
