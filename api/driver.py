"""SQLAlchemy statements compiled once and run on the database driver's own connection.

The claim and the release run once per agent slot and, for a lead or a script working through a
backlog, thousands of times a minute. Through the ORM ``Session`` each cost 2-3 ms of Python
(cache keys, ORM-enabled DML, result processing: bench/README.md, claim throughput) around
statements the database runs in microseconds. Here the same statements from api.statements are
compiled once per database and sent through the DBAPI cursor with plain values, so the SQL keeps
one source and the verbs cost about what the SQL does.
"""

from __future__ import annotations

import functools
import json
import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import CallableColumnDefault

# How SQLAlchemy marks an expanding parameter (``IN`` with a list) in a compiled statement; it is
# replaced by one placeholder per value, as SQLAlchemy itself does at execution.
_EXPANDING = re.compile(r"__\[POSTCOMPILE_(\w+)\]")


def _json_text(value: Any) -> Any:
    return value if isinstance(value, str) else json.dumps(value)


def _sqlite_datetime(value: Any) -> Any:
    # SQLAlchemy's DateTime storage format on SQLite (string comparisons must agree with it).
    return value.isoformat(" ", "microseconds") if isinstance(value, datetime) else value


class _Prepared:
    """One statement compiled for one dialect: its SQL, the values of its literals, the
    parameters whose values need converting (by their SQL type), and the type of the rows it
    returns (known after its first execution)."""

    __slots__ = ("by_sizes", "computed", "convert", "expanding", "row_type", "sql", "static")

    def __init__(
        self,
        sql: str,
        static: dict[str, Any],
        expanding: tuple[str, ...],
        computed: dict[str, Callable[[], Any]],
        convert: tuple[tuple[str, Callable[[Any], Any]], ...],
    ) -> None:
        self.sql = sql
        self.static = static
        self.expanding = expanding
        self.computed = computed
        self.convert = convert
        self.by_sizes: dict[tuple[int, ...], str] = {}
        self.row_type: Any = None


class Driver:
    """The compiled statements of one database (one dialect), shared by every transaction."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.is_sqlite = dialect.name == "sqlite"
        # sqlite3 takes :name, psycopg %(name)s; both with a mapping of values.
        self._placeholder = ":{}" if self.is_sqlite else "%({})s"
        self._prepared: dict[int, tuple[Executable, _Prepared]] = {}

    def prepared(self, statement: Executable) -> _Prepared:
        """The compiled form of ``statement``, compiled on first use. Statements are keyed by
        identity: pass the cached objects of api.statements, not ones built per call."""
        found = self._prepared.get(id(statement))
        if found is not None:
            return found[1]
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=self.dialect)
        assert isinstance(compiled, SQLCompiler)
        expanding = tuple(_EXPANDING.findall(compiled.string))
        # The values of its literals (None included); the caller gives the named parameters.
        static = {
            name: self.value(value)
            for name, value in compiled.params.items()
            if not compiled.binds[name].required and name not in expanding
        }
        # Columns whose value Python computes at each execution (updated_at's onupdate=utcnow).
        computed: dict[str, Callable[[], Any]] = {}
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            default = column.onupdate if column in compiled.update_prefetch else column.default
            if not isinstance(default, CallableColumnDefault):
                raise ValueError(f"column {column.key} has a Python default api.driver cannot compute")
            # SQLAlchemy wraps a no-argument function (models.utcnow) to take an execution context.
            computed[column.key] = functools.partial(default.arg, None)  # type: ignore[arg-type]
        # The caller's values that need converting, known from their SQL type: the rest (numbers,
        # strings, None) go to the driver as they are.
        convert = []
        for name, bind in compiled.binds.items():
            if name in static or name in expanding:
                continue
            if isinstance(bind.type, JSON):
                convert.append((name, _json_text))  # psycopg gets a ::JSON cast in the SQL
            elif self.is_sqlite and isinstance(bind.type, DateTime):
                convert.append((name, _sqlite_datetime))
        prepared = _Prepared(compiled.string, static, expanding, computed, tuple(convert))
        self._prepared[id(statement)] = (statement, prepared)  # the statement kept alive with its id
        return prepared

    def value(self, value: Any) -> Any:
        """A Python value as the driver takes it, converted as SQLAlchemy's types would."""
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict | list):
            return json.dumps(value)
        if self.is_sqlite and isinstance(value, datetime):
            return _sqlite_datetime(value)
        return value

    def sql_and_values(self, prepared: _Prepared, params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
        values = {**prepared.static, **params} if params else dict(prepared.static)
        for key, compute in prepared.computed.items():
            values[key] = self.value(compute())
        for key, convert in prepared.convert:
            if key in values:
                values[key] = convert(values[key])
        if not prepared.expanding:
            return prepared.sql, values
        lists = [values.pop(name) for name in prepared.expanding]
        sizes = tuple(len(items) for items in lists)
        sql = prepared.by_sizes.get(sizes)
        if sql is None:
            sql = prepared.sql
            for name, size in zip(prepared.expanding, sizes, strict=True):
                names = ", ".join(self._placeholder.format(f"{name}_{i}") for i in range(1, size + 1))
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", names)
            prepared.by_sizes[sizes] = sql
        for name, items in zip(prepared.expanding, lists, strict=True):
            for i, item in enumerate(items, 1):
                values[f"{name}_{i}"] = self.value(item)
        return sql, values


class Tx:
    """Statements run in one transaction on a DBAPI connection (the caller begins and ends it)."""

    def __init__(self, driver: Driver, dbapi_connection: Any) -> None:
        self.driver = driver
        self.cursor = dbapi_connection.cursor()

    @property
    def is_sqlite(self) -> bool:
        return self.driver.is_sqlite

    def rows(self, statement: Executable, params: Mapping[str, Any] | None = None) -> list[Any]:
        """The rows ``statement`` returns, as named tuples of its columns."""
        prepared = self.driver.prepared(statement)
        sql, values = self.driver.sql_and_values(prepared, params)
        self.cursor.execute(sql, values)
        found = self.cursor.fetchall()
        if prepared.row_type is None:
            prepared.row_type = namedtuple("Row", [c[0] for c in self.cursor.description], rename=True)  # type: ignore[misc]
        return [prepared.row_type._make(row) for row in found]

    def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        sql, values = self.driver.sql_and_values(self.driver.prepared(statement), params)
        self.cursor.execute(sql, values)
        return int(self.cursor.rowcount)

    def execute_many(self, statement: Executable, params: Sequence[Mapping[str, Any]]) -> None:
        """Run a statement once per set of values (no expanding parameters)."""
        prepared = self.driver.prepared(statement)
        if len(params) == 1:
            self.cursor.execute(prepared.sql, self.driver.sql_and_values(prepared, params[0])[1])
            return
        rows = [self.driver.sql_and_values(prepared, p)[1] for p in params]
        self.cursor.executemany(prepared.sql, rows)


def json_list(value: Any) -> list[Any]:
    """A JSON list column's value as read through the driver (sqlite3 gives text, psycopg parses
    it); [] for NULL or anything but a list."""
    found = json.loads(value) if isinstance(value, str) else value
    return list(found) if isinstance(found, Iterable) and not isinstance(found, str | dict) else []
