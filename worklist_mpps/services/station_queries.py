"""Which stations queried the worklist, and when (issue 15, Problems view): per calling AE
title, its last Modality Worklist C-FIND (PS3.4 K.4.1) with the called AE title, the
peer's address, the number of items it got, its final status (0x0000, 0xFE00 cancel,
0xA700 / 0xA900 / 0xC001 refusals, 0x0124 not authorized) and how many it sent in all.

A database write per C-FIND would cost every query a commit (an fsync on SQLite), so the
handler only updates an in-memory aggregate per calling AE (:meth:`Recorder.record`, a
dict update under a lock), and :class:`Flusher` writes the aggregates to the
``station_queries`` table every :data:`FLUSH_SECONDS` and when the server stops. The
table therefore lags the queries by up to that delay. The write is one upsert per AE
that keeps the newest ``last_query_at`` and adds the counts, so several instances on one
database merge their figures instead of overwriting each other.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import case, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import StationQuery, as_utc, utcnow

log = logging.getLogger(__name__)

# the final statuses of a worklist C-FIND (PS3.4 K.4.1.1.4, PS3.7 C.4.1.1.4)
STATUS_TEXT = {
    0x0000: "success",
    0xFE00: "cancelled",
    0xA700: "refused: too many matches",
    0xA900: "refused: identifier does not match",
    0xC001: "unable to process",
    0x0124: "not authorized",
}
FLUSH_SECONDS = 2.0  # how far the table may lag the queries (README "Problems view")
MAX_STATIONS = 1000  # calling AE titles kept in memory between two flushes


@dataclass
class StationFigures:
    """One calling AE title's queries since the last flush: the last one, and a count."""

    calling_ae_title: str
    called_ae_title: str | None
    address: str | None
    last_query_at: datetime
    last_matches: int
    last_status: int
    query_count: int = 1


class Recorder:
    """The per-AE aggregates of one process, bounded to ``max_stations`` AE titles
    between two flushes (a query from one more AE is counted in ``dropped``)."""

    def __init__(self, max_stations: int = MAX_STATIONS) -> None:
        self.max_stations = max_stations
        self._lock = threading.Lock()
        self._pending: dict[str, StationFigures] = {}
        self.dropped = 0

    def record(
        self,
        calling_ae: str,
        called_ae: str | None,
        address: str | None,
        matches: int,
        status: int,
        at: datetime | None = None,
    ) -> None:
        """Count one C-FIND (cheap: called by the DIMSE handler for every query)."""
        at = at or utcnow()
        calling = (calling_ae or "").strip()[:16] or "(none)"
        with self._lock:
            figures = self._pending.get(calling)
            if figures is None:
                if len(self._pending) >= self.max_stations:
                    self.dropped += 1
                    return
                self._pending[calling] = StationFigures(
                    calling, called_ae, address, at, matches, status
                )
                return
            figures.query_count += 1
            if at >= figures.last_query_at:
                figures.called_ae_title, figures.address = called_ae, address
                figures.last_query_at, figures.last_matches = at, matches
                figures.last_status = status

    def take(self) -> list[StationFigures]:
        """The aggregates so far, emptied (the next flush starts afresh)."""
        with self._lock:
            taken, self._pending = list(self._pending.values()), {}
            return taken

    def give_back(self, figures: list[StationFigures]) -> None:
        """Aggregates a flush could not write, merged back for the next one."""
        with self._lock:
            for old in figures:
                new = self._pending.get(old.calling_ae_title)
                if new is None:
                    if len(self._pending) < self.max_stations:
                        self._pending[old.calling_ae_title] = old
                    continue
                newest = new if new.last_query_at >= old.last_query_at else old
                self._pending[old.calling_ae_title] = replace(
                    newest, query_count=new.query_count + old.query_count
                )

    def flush(self, db: Database) -> int:
        """Write the aggregates (:func:`upsert`); the number of AE titles written. A
        database that fails keeps them in memory for the next flush."""
        figures = self.take()
        dropped, self.dropped = self.dropped, 0
        if dropped:
            log.warning(
                "Station queries: %d C-FIND(s) from more than %d AE titles in %.0f s not recorded",
                dropped,
                self.max_stations,
                FLUSH_SECONDS,
            )
        if not figures:
            return 0
        try:
            upsert(db, figures)
        except SQLAlchemyError as exc:
            log.warning("Station queries not written (kept for the next flush): %s", exc)
            self.give_back(figures)
            return 0
        return len(figures)


RECORDER = Recorder()  # the process's: the worklist C-FIND handler records here


def record_find(
    calling_ae: str, called_ae: str | None, address: str | None, matches: int, status: int
) -> None:
    """Count one worklist C-FIND in the process's recorder."""
    RECORDER.record(calling_ae, called_ae, address, matches, status)


def upsert(db: Database, figures: list[StationFigures]) -> None:
    """One INSERT ... ON CONFLICT per AE title (SQLite and PostgreSQL): the newest
    ``last_query_at`` keeps its columns, the counts add up. In AE title order, so two
    instances flushing at once lock the rows in the same order."""
    table = StationQuery.__table__
    dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
    with db.write() as session:
        for f in sorted(figures, key=lambda f: f.calling_ae_title):
            stmt = dialect.insert(table).values(
                calling_ae_title=f.calling_ae_title,
                called_ae_title=f.called_ae_title,
                address=f.address,
                last_query_at=f.last_query_at,
                last_matches=f.last_matches,
                last_status=f.last_status,
                query_count=f.query_count,
            )
            newer = stmt.excluded.last_query_at >= table.c.last_query_at
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.calling_ae_title],
                set_={
                    **{
                        name: case((newer, getattr(stmt.excluded, name)), else_=table.c[name])
                        for name in (
                            "called_ae_title",
                            "address",
                            "last_matches",
                            "last_status",
                            "last_query_at",
                        )
                    },
                    "query_count": table.c.query_count + stmt.excluded.query_count,
                },
            )
            session.execute(stmt)


def list_stations(db: Database, limit: int = 200) -> list[dict]:
    """The stations, newest query first."""
    S = StationQuery
    with db.read() as session:
        rows = session.scalars(select(S).order_by(S.last_query_at.desc()).limit(limit))
        return [
            {
                "calling_ae_title": r.calling_ae_title,
                "called_ae_title": r.called_ae_title,
                "address": r.address,
                "last_query_at": as_utc(r.last_query_at),
                "last_matches": r.last_matches,
                "last_status": r.last_status,
                "status_text": STATUS_TEXT.get(r.last_status, "failure"),
                "query_count": r.query_count,
            }
            for r in rows
        ]


class Flusher:
    """A thread that flushes a recorder every ``interval`` seconds, and once more when
    stopped (``serve`` stops it after the DICOM listener, so the last queries count)."""

    def __init__(
        self, db: Database, recorder: Recorder = RECORDER, interval: float = FLUSH_SECONDS
    ) -> None:
        self.db, self.recorder, self.interval = db, recorder, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="station-queries", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._flush()

    def _flush(self) -> None:
        try:
            self.recorder.flush(self.db)
        except Exception:
            log.exception("Station queries: flush failed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._flush()
