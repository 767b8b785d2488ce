"""Can the database take a write, and if not, why: the truth behind /healthz and
``worklist-mpps ping --deep``, and the one wording of database failures at start.

A rolled-back transaction proves little: SQLite takes its lock and PostgreSQL accepts a
row without either having to make anything durable, so neither a read-only file nor a
full disk shows. The probe commits a real change to the one row of ``heartbeat``
(migration 0004; several instances on one database update the same row), at most once
a second per process. On a SQLite file it also reads the free space of the file's
filesystem: a WAL file that already has room takes small writes on a full disk.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.config import redact_url
from worklist_mpps.db.engine import Database, rowcount
from worklist_mpps.db.models import Heartbeat, utcnow

log = logging.getLogger("worklist_mpps.services.health")

PROBE_INTERVAL = 1.0  # s: a result is reused this long (healthchecks may poll fast)
MIN_FREE_BYTES = 1 << 20  # a SQLite file's filesystem with less free is "disk full"

UNREACHABLE, READ_ONLY, DISK_FULL, SCHEMA, ERROR = (
    "database unreachable",
    "read-only database",
    "disk full",
    "schema not up to date",
    "database error",
)

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xff)
_SQLITE_KINDS = {8: READ_ONLY, 13: DISK_FULL, 14: UNREACHABLE, 26: UNREACHABLE}
# PostgreSQL SQLSTATE (Appendix A of its manual): class 08 connection, 28 authorization,
# 3D000 no such database, 25006 read-only transaction (standby, default_transaction_read_only),
# 53100 disk full, 42P01 undefined table
_PG_KINDS = {
    "25006": READ_ONLY,
    "53100": DISK_FULL,
    "3D000": UNREACHABLE,
    "42P01": SCHEMA,
    "57P03": UNREACHABLE,
}


@dataclass(frozen=True)
class Health:
    ok: bool
    problem: str = ""  # one of the kinds above
    detail: str = ""

    @property
    def reason(self) -> str:
        return (
            "ok" if self.ok else f"{self.problem}: {self.detail}" if self.detail else self.problem
        )


def describe_db_error(exc: BaseException) -> Health:
    """The kind of a database failure and the driver's own one-line message, any URL
    password in it masked."""
    orig = getattr(exc, "orig", None) or exc
    message = " ".join(str(orig).split()) or orig.__class__.__name__
    message = redact_url(message)[:300]
    kind = None
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        kind = _SQLITE_KINDS.get(code & 0xFF)
    state = getattr(orig, "sqlstate", None)
    if state:
        kind = _PG_KINDS.get(state) or (UNREACHABLE if state[:2] in ("08", "28") else None)
    elif (
        orig.__class__.__module__.startswith("psycopg")
        and orig.__class__.__name__ == "OperationalError"
    ):
        kind = UNREACHABLE  # connection failed before any SQLSTATE
    if kind is None:
        lowered = message.lower()
        kind = (
            READ_ONLY
            if re.search(r"read-?only", lowered)
            else DISK_FULL
            if "disk is full" in lowered or "no space left" in lowered
            else SCHEMA
            if "no such table" in lowered
            else ERROR
        )
    return Health(False, kind, message)


def db_error_comment(exc: BaseException) -> str:
    """An Error Comment (LO, 64 characters) for a database failure."""
    problem = describe_db_error(exc).problem
    return f"Database error: {problem if problem != ERROR else exc.__class__.__name__}"


def sqlite_file(db: Database) -> Path | None:
    """The SQLite database file (also of a ``file:...?mode=ro`` URI), else None."""
    if not db.is_sqlite:
        return None
    name = db.engine.url.database or ""
    if name.startswith("file:"):
        name = name[5:].split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def sqlite_file_problem(db: Database) -> Health | None:
    """What the filesystem of a SQLite file says before any write: read-only (the kernel
    refuses writes to root too), or less than MIN_FREE_BYTES free."""
    path = sqlite_file(db)
    if path is None:
        return None
    folder = path.expanduser().resolve().parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None  # the write tells
    if st.f_flag & os.ST_RDONLY:
        return Health(False, READ_ONLY, f"read-only filesystem at {folder}")
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        return Health(False, DISK_FULL, f"{free} bytes free on the filesystem of {path}")
    return None


def probe_write(db: Database, instance: str) -> Health:
    """Commit one change to the heartbeat row; the answer, classified."""
    problem = sqlite_file_problem(db)
    if problem is not None:
        return problem
    try:
        with db.write() as session:
            changed = rowcount(
                session.execute(
                    update(Heartbeat)
                    .where(Heartbeat.id == 1)
                    .values(beats=Heartbeat.beats + 1, at=utcnow(), instance=instance[:120])
                )
            )
            if not changed:  # an UPDATE of no row writes nothing: make the row
                session.add(Heartbeat(id=1, beats=1, at=utcnow(), instance=instance[:120]))
    except SQLAlchemyError as exc:
        return describe_db_error(exc)
    return Health(True)


class WriteProbe:
    """``probe_write`` at most once per ``interval`` (callers in between get the last
    answer); a change of state is logged once, in words ("read-only database: ...")."""

    def __init__(self, db: Database, interval: float = PROBE_INTERVAL) -> None:
        self.db = db
        self.interval = interval
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._last: tuple[float, Health] | None = None

    def check(self) -> Health:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.interval:
                return self._last[1]
            health = probe_write(self.db, self.instance)
            before = self._last[1] if self._last else Health(True)
            if health.problem != before.problem:
                if health.ok:
                    log.info("Database writable again")
                else:
                    log.error("Database health: %s", health.reason)
            self._last = (time.monotonic(), health)
            return health
