"""Which stations queried when (issue 15, Problems view): the in-memory aggregate per
calling AE title and its flush to the ``station_queries`` table, called directly."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.services.station_queries import Flusher, Recorder, list_stations

T0 = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)


def by_ae(db) -> dict[str, dict]:
    return {row["calling_ae_title"]: row for row in list_stations(db)}


def test_recorder_keeps_the_last_query_and_counts_them():
    rec = Recorder()
    rec.record("CT1", "WORKLISTS", "10.0.0.5", 7, 0x0000, T0)
    rec.record("CT1", "WORKLISTS", "10.0.0.6", 0, 0xA700, T0 + timedelta(seconds=5))
    rec.record("CT1", "OTHER", "10.0.0.7", 3, 0x0000, T0 + timedelta(seconds=1))  # late
    [figures] = rec.take()
    assert figures.query_count == 3
    assert (figures.address, figures.last_matches, figures.last_status) == (
        "10.0.0.6",
        0,
        0xA700,
    )
    assert figures.last_query_at == T0 + timedelta(seconds=5)
    assert rec.take() == []  # taken: the next flush starts afresh


def test_recorder_is_bounded_between_flushes(db):
    rec = Recorder(max_stations=3)
    for n in range(5):
        rec.record(f"AE{n}", "WORKLISTS", "127.0.0.1", n, 0, T0)
    rec.record("AE0", "WORKLISTS", "127.0.0.1", 9, 0, T0 + timedelta(seconds=1))  # known AE
    assert rec.dropped == 2
    assert rec.flush(db) == 3
    assert sorted(by_ae(db)) == ["AE0", "AE1", "AE2"]
    assert by_ae(db)["AE0"]["query_count"] == 2
    rec.record("AE4", "WORKLISTS", "127.0.0.1", 4, 0, T0)  # room again after the flush
    assert rec.flush(db) == 1 and rec.dropped == 0
    assert "AE4" in by_ae(db)


def test_upsert_adds_counts_and_keeps_the_newest_query(db):
    """Two instances on one database: each flushes its own figures; the row keeps the
    newest last query whichever flushes last, and the counts add up."""
    first, second = Recorder(), Recorder()
    first.record("MR1", "WORKLISTS", "10.0.0.1", 4, 0, T0 + timedelta(minutes=2))
    first.record("MR1", "WORKLISTS", "10.0.0.1", 4, 0, T0 + timedelta(minutes=3))
    second.record("MR1", "WL_B", "10.0.0.2", 1, 0xC001, T0 + timedelta(minutes=1))
    assert first.flush(db) == 1
    assert second.flush(db) == 1  # older: counted, but does not replace the last query
    row = by_ae(db)["MR1"]
    assert row["query_count"] == 3
    assert (row["called_ae_title"], row["address"], row["last_matches"], row["last_status"]) == (
        "WORKLISTS",
        "10.0.0.1",
        4,
        0,
    )
    assert row["last_query_at"] == T0 + timedelta(minutes=3)
    second.record("MR1", "WL_B", "10.0.0.2", 2, 0xA900, T0 + timedelta(minutes=9))
    second.flush(db)
    row = by_ae(db)["MR1"]
    assert (row["called_ae_title"], row["last_matches"], row["last_status"]) == ("WL_B", 2, 0xA900)
    assert row["status_text"] == "refused: identifier does not match"
    assert row["query_count"] == 4


def test_two_instances_flushing_at_once_on_postgresql(pg_url):
    """Two processes' recorders, two engines, the same AE titles flushed concurrently:
    no lost count, no error, the newest query wins."""
    engines = [Database(pg_url), Database(pg_url)]
    migrate.upgrade(engines[0].engine)
    try:
        recorders = [Recorder(), Recorder()]
        rounds, titles = 20, [f"US{n:02d}" for n in range(30)]
        errors: list[BaseException] = []

        def run(index: int) -> None:
            try:
                for r in range(rounds):
                    for ae in titles:
                        at = T0 + timedelta(seconds=2 * r + index)  # instance 1 is newer
                        recorders[index].record(ae, f"WL{index}", "10.1.1.1", index, 0, at)
                    recorders[index].flush(engines[index])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        rows = by_ae(engines[0])
        assert sorted(rows) == titles
        for row in rows.values():
            assert row["query_count"] == 2 * rounds
            assert row["last_query_at"] == T0 + timedelta(seconds=2 * (rounds - 1) + 1)
            assert (row["called_ae_title"], row["last_matches"]) == ("WL1", 1)
    finally:
        for engine in engines:
            engine.dispose()


def test_flusher_writes_every_interval_and_at_stop(db):
    rec = Recorder()
    flusher = Flusher(db, rec, interval=0.2)
    flusher.start()
    rec.record("CR1", "WORKLISTS", "127.0.0.1", 2, 0)
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while "CR1" not in by_ae(db) and datetime.now(UTC) < deadline:
        threading.Event().wait(0.1)
    assert "CR1" in by_ae(db)
    rec.record("DX1", "WORKLISTS", "127.0.0.1", 0, 0)
    flusher.stop()  # the last queries are written when the server stops
    assert by_ae(db)["DX1"]["last_matches"] == 0


def test_a_failed_flush_keeps_the_figures(tmp_path, db):
    """A database that fails the write (here: no schema) loses nothing: the figures stay
    for the next flush, merged with the queries counted meanwhile."""
    broken = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    rec = Recorder()
    rec.record("XA1", "WORKLISTS", "127.0.0.1", 5, 0, T0)
    try:
        with pytest.raises(SQLAlchemyError):  # what flush catches
            broken.engine.connect().exec_driver_sql("SELECT * FROM station_queries").all()
        assert rec.flush(broken) == 0
    finally:
        broken.dispose()
    rec.record("XA1", "WORKLISTS", "127.0.0.1", 6, 0, T0 + timedelta(seconds=1))
    assert rec.flush(db) == 1
    row = by_ae(db)["XA1"]
    assert (row["query_count"], row["last_matches"]) == (2, 6)
