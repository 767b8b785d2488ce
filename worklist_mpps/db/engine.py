"""One engine and one session factory per process.

SQLite gets WAL mode, a busy timeout, foreign keys, case-sensitive LIKE
(DICOM single value and wildcard matching are case-sensitive, PS3.4 C.2.2.2)
and explicit ``BEGIN``: pysqlite's own implicit transactions are switched off
so that a write transaction can start with ``BEGIN IMMEDIATE`` and serialize
against other writers instead of failing on lock upgrade.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker


def rowcount(result: Result) -> int:
    """Rows an UPDATE or DELETE matched: ``Session.execute`` is typed as returning a
    plain ``Result``, but for DML it is a ``CursorResult``, which has the count."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"no row count on {type(result).__name__}: not an UPDATE/DELETE")
    return result.rowcount


def _prepare_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, sqlite_synchronous: str = "FULL") -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    _prepare_sqlite_path(url)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=10,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("single_statement_read", False):
            return  # Database.query(): the statement runs in SQLite's autocommit mode
        sql = "BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN"
        # on the driver's connection: a statement through SQLAlchemy's execution costs
        # more than SQLite's BEGIN (issue 18); its error raised as SQLAlchemy's, as there
        try:
            conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

    return engine


class Database:
    """The process's engine and session factory."""

    def __init__(self, url: str, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.engine = make_engine(url, sqlite_synchronous)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # one SELECT needs no transaction around it: a statement reads one consistent
        # snapshot on its own (SQLite WAL, PostgreSQL READ COMMITTED); no BEGIN and
        # ROLLBACK round trips (issue 18)
        self._single = self.engine.execution_options(
            single_statement_read=True,
            **({} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"}),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work: one transaction, rolled back at the end."""
        with self.sessions() as session:
            yield session  # closing the session rolls the transaction back

    @contextlib.contextmanager
    def query(self) -> Iterator[Connection]:
        """A Core connection for ONE read-only statement, run outside a transaction
        (autocommit): the C-FIND path (services/worklist.py ``search``). Several
        statements on it would each see their own snapshot; use :meth:`read` then."""
        with self._single.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success.

        On SQLite it starts with ``BEGIN IMMEDIATE`` so concurrent writers queue
        on the database lock; on PostgreSQL rows are locked with
        ``SELECT ... FOR UPDATE`` where a change depends on what was read.
        """
        with self.sessions() as session, session.begin():
            if self.is_sqlite:
                # options apply before the connection's BEGIN is emitted
                session.connection(execution_options={"sqlite_immediate": True})
            yield session

    def analyze(self, *tables: str) -> bool:
        """Refresh the planner's statistics of ``tables`` on PostgreSQL (``ANALYZE``):
        a table bulk-loaded since autovacuum last looked has none, and the planner then
        guesses (issue 18: a selective query at 1M items took 173 ms until ANALYZE,
        then 0.5 ms). SQLite plans without statistics; nothing is done there. True
        when statistics were refreshed."""
        if self.is_sqlite:
            return False
        with self.engine.begin() as conn:
            for table in tables:
                preparer = self.engine.dialect.identifier_preparer
                conn.exec_driver_sql(f"ANALYZE {preparer.quote(table)}")
        return True

    def dispose(self) -> None:
        self.engine.dispose()
