"""The C-FIND SELECT run straight on the DB-API cursor (issue 18).

A Modality Worklist C-FIND (PS3.4 K.4.1) runs one SELECT, the same one for every poll
of a station (services/worklist.py ``statement``). Through SQLAlchemy's Connection,
each run pays for the pool checkout (and on PostgreSQL its pre-ping, a round trip), the
autocommit switch, the cache key of the statement, its parameters made again, the
result's metadata and a Row per row: in-process, 0.15 ms (SQLite) and 0.4 ms
(PostgreSQL) of a selective query, 0.5 ms of a broad one (200 rows). Here the statement
is compiled once per dialect (:class:`Compiled`: SQL text and bound parameters, exactly
those SQLAlchemy sends the driver), and :class:`Reader` runs it on a connection the
engine's pool handed out and the reader keeps, in autocommit (no BEGIN, no transaction
left open: one SELECT reads one consistent snapshot, SQLite WAL and PostgreSQL READ
COMMITTED alike, and sees every commit made before it). Values come back as SQLAlchemy
would return them: the column types' result processors are applied where the dialect
has one (JSON on SQLite).

A driver error is raised as SQLAlchemy's (``sqlalchemy.exc.DBAPIError.instance``), as
``Connection.execute`` raises it, so callers map it as before (0xC001, PS3.4 C.4.1.1.4);
the connection is dropped. A lost connection (database restarted) is retried once on a
fresh one from the pool, which pre-pings it: what the pool's pre-ping gave before.

``Compiled.of`` renders a statement the way SQLAlchemy's execution context does, with its
internals (``_bind_processors``, ``_result_columns``, ``escaped_bind_names``,
``positiontup``, ``TypeEngine._cached_result_processor``): this module is the one place
that touches them, pyproject.toml pins the tested minor release, and
tests/test_worklist_cursor.py names any that a release removes and compares every row
with SQLAlchemy's own execution over 33 request shapes on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import Select, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

from worklist_mpps.db.engine import Database


class Row(tuple):
    """A selected row: by position (services/row_encoder.py), by label as an attribute,
    and ``_mapping`` (``worklist.response_elements``), like SQLAlchemy's Row."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getattr__(self, name: str) -> Any:
        index = self._index.get(name)
        if index is None:
            raise AttributeError(name)
        return self[index]

    @property
    def _fields(self) -> tuple[str, ...]:
        return tuple(self._index)

    @property
    def _mapping(self) -> RowMapping:
        return RowMapping(self)


class RowMapping(Mapping[str, Any]):
    """A row's values by column label."""

    __slots__ = ("_row",)

    def __init__(self, row: Row) -> None:
        self._row = row

    def __getitem__(self, name: str) -> Any:
        return self._row[self._row._index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._row._index)

    def __len__(self) -> int:
        return len(self._row._index)


Processors = list[tuple[int, Callable[[Any], Any]]]


@dataclass
class Compiled:
    """One Select compiled for one dialect: what is sent to the driver, and how rows
    come back."""

    sql: str
    params: Any  # a tuple (positional paramstyle) or a dict, bind processors applied
    columns: list[tuple[str, Any]]  # (label, type) of the selected columns, in order
    row: type[Row]
    # (column index, result processor) where the type has one for this dialect and the
    # driver's column type; made from the first result's cursor.description
    processors: Processors | None = field(default=None)

    @classmethod
    def of(cls, stmt: Select, dialect: Dialect) -> Compiled:
        """The statement as SQLAlchemy's execution context renders it
        (``DefaultExecutionContext._init_compiled``): expanding IN parameters rendered
        at compile time, each parameter through its type's bind processor, the
        dialect's paramstyle and escaped parameter names. Values stay bound, never
        rendered into the SQL."""
        compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        values = compiled.construct_params(escape_names=False)
        binds = compiled._bind_processors
        processed = {}
        for name, value in values.items():
            bind = binds.get(name)
            if bind is not None and not callable(bind):  # tuple IN: never built here
                raise NotImplementedError(f"bind parameter {name} of a tuple type")
            processed[name] = value if bind is None else bind(value)
        params: Any
        if compiled.positional:
            params = dialect.execute_sequence_format(
                [processed[k] for k in compiled.positiontup or ()]
            )
        else:
            escaped = compiled.escaped_bind_names
            params = {escaped.get(k, k): v for k, v in processed.items()}
        columns = [(c[0], c[3]) for c in compiled._result_columns]
        index = {name: i for i, (name, _) in enumerate(columns)}
        row = type("Row", (Row,), {"__slots__": (), "_index": index})
        return cls(compiled.string, params, columns, row)

    def result_processors(self, dialect: Dialect, description: Any) -> Processors:
        """What ``CursorResultMetaData`` applies: ``type._cached_result_processor``
        for the driver's column type (``ExecutionContext.get_result_processor``)."""
        if self.processors is None:
            found = []
            for i, ((_, type_), col) in enumerate(zip(self.columns, description, strict=True)):
                proc = type_._cached_result_processor(dialect, col[1])
                if proc is not None:
                    found.append((i, proc))
            self.processors = found
        return self.processors

    def rows(self, fetched: list[Any], dialect: Dialect, description: Any) -> list[Row]:
        processors = self.result_processors(dialect, description)
        make = self.row
        if not processors:
            return list(map(make, fetched))
        out = []
        for values in fetched:
            values = list(values)
            for i, proc in processors:
                values[i] = proc(values[i])
            out.append(make(values))
        return out


class Reader:
    """Runs compiled SELECTs of one Database on connections it keeps checked out of
    the engine's pool (at most KEEP idle), in autocommit."""

    KEEP = 8

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.error = engine.dialect.loaded_dbapi.Error
        self.is_pg = engine.dialect.name == "postgresql"
        self.idle: list[PoolProxiedConnection] = []
        self.lock = threading.Lock()
        event.listen(engine, "engine_disposed", self._on_dispose)

    def _take(self) -> PoolProxiedConnection:
        with self.lock:
            if self.idle:
                return self.idle.pop()
        try:
            conn = self.engine.raw_connection()  # the pool pre-pings it on PostgreSQL
        except self.error as exc:
            raise self._wrap(exc, None, None, False) from exc
        if self.is_pg:
            # no BEGIN: one SELECT needs no transaction, and none stays open
            conn.driver_connection.autocommit = True  # type: ignore[union-attr]
        return conn

    def _give(self, conn: PoolProxiedConnection) -> None:
        with self.lock:
            if len(self.idle) < self.KEEP:
                self.idle.append(conn)
                return
        self._release(conn)

    def _release(self, conn: PoolProxiedConnection) -> None:
        """Back to the pool as it was handed out (not in autocommit)."""
        if self.is_pg:
            try:
                conn.driver_connection.autocommit = False  # type: ignore[union-attr]
            except self.error:
                conn.invalidate()
                return
        conn.close()

    def _on_dispose(self, _engine: Engine) -> None:
        """Engine.dispose(): the connections kept are closed too."""
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.invalidate()  # closes the DB-API connection

    def drop_idle(self) -> None:
        self._on_dispose(self.engine)

    def _wrap(self, exc: Exception, compiled: Compiled | None, params: Any, lost: bool) -> Any:
        return DBAPIError.instance(
            compiled.sql if compiled else None,
            params,
            exc,
            self.error,
            hide_parameters=self.engine.hide_parameters,
            connection_invalidated=lost,
            dialect=self.dialect,
        )

    def rows(self, compiled: Compiled) -> list[Row]:
        """The statement's rows, read afresh."""
        for attempt in (1, 2):
            conn = self._take()
            driver = conn.driver_connection
            cursor = None
            try:
                cursor = driver.cursor()  # type: ignore[union-attr]
                cursor.execute(compiled.sql, compiled.params)
                fetched = cursor.fetchall()
                # read once per statement (psycopg builds it anew at each access)
                description = cursor.description if compiled.processors is None else None
                cursor.close()
            except self.error as exc:
                lost = self.dialect.is_disconnect(exc, driver, cursor)
                conn.invalidate(exc)
                if lost:  # the database went away: the other kept connections too
                    self.drop_idle()
                    if attempt == 1:
                        continue
                raise self._wrap(exc, compiled, compiled.params, lost) from exc
            except BaseException:
                conn.invalidate()
                raise
            self._give(conn)
            return compiled.rows(fetched, self.dialect, description)
        raise AssertionError("unreachable")  # pragma: no cover


_readers: weakref.WeakKeyDictionary[Database, Reader] = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def reader(db: Database) -> Reader:
    """The Database's reader, made once."""
    found = _readers.get(db)
    if found is None:
        with _readers_lock:
            found = _readers.get(db)
            if found is None:
                found = _readers[db] = Reader(db.engine)
    return found
