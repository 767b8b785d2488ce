"""The C-FIND path's reuse (issue 18), on SQLite and PostgreSQL: a request met before
(same bytes, same transfer syntax) is not parsed again and runs the same Select object,
yet its matches are always read afresh; the one SELECT runs outside a transaction."""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import pytest
from pydicom import Dataset
from pynetdicom.dsutils import decode, encode
from sqlalchemy import update

from conftest import SAMPLE
from worklist_mpps.config import Config
from worklist_mpps.db.models import WorklistItem
from worklist_mpps.services import sql_cursor, worklist, worklist_find
from worklist_mpps.services.loader import load_file
from worklist_mpps.services.matching import MatchError

IMPLICIT = "1.2.840.10008.1.2"
TODAY = dt.date.today().strftime("%Y%m%d")


def request(modality: str = "CT", date: str = TODAY) -> bytes:
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = modality
    sps.ScheduledProcedureStepStartDate = date
    ds.ScheduledProcedureStepSequence = [sps]
    return encode(ds, True, True)


def find(db, raw: bytes, syntax: str = IMPLICIT) -> worklist_find.Found:
    decoded = []

    def identifier() -> Dataset:
        decoded.append(1)
        return decode(BytesIO(raw), True, True)

    found = worklist_find.find(db, Config(), identifier, "ANY", encoded=(raw, syntax))
    found.decoded = bool(decoded)  # type: ignore[attr-defined]
    return found


@pytest.fixture
def loaded(db):
    worklist._recent.queries.clear()  # the process's cache: this test's requests first
    load_file(db, SAMPLE)
    return db


def test_a_request_met_before_is_not_parsed_again(loaded):
    raw = request()
    first, second = find(loaded, raw), find(loaded, raw)
    assert first.decoded and not second.decoded
    assert second.query is first.query
    args = (Config().worklist_default_statuses, None, None, 0)
    assert worklist.statement(second.query, *args) is worklist.statement(first.query, *args)
    plain = worklist.search(
        loaded, worklist.parse_identifier(decode(BytesIO(raw), True, True)), args[0]
    )
    assert [tuple(r) for r in second.rows] == [tuple(r) for r in plain] and plain


def test_other_bytes_or_transfer_syntax_are_parsed(loaded):
    find(loaded, request("CT"))
    assert find(loaded, request("MR")).decoded
    assert find(loaded, request("CT"), "1.2.840.10008.1.2.1").decoded


def test_matches_are_read_afresh(loaded):
    raw = request()
    before = find(loaded, raw)
    assert before.rows
    with loaded.write() as session:
        session.execute(
            update(WorklistItem)
            .where(WorklistItem.modality == "CT", WorklistItem.sps_start_date == TODAY)
            .values(sps_status="COMPLETED")
        )
    after = find(loaded, raw)
    assert not after.decoded and after.rows == []


def test_a_refused_request_is_refused_every_time(loaded):
    raw = request(date="20261345")
    for _ in range(2):
        with pytest.raises(MatchError):
            find(loaded, raw)


def test_the_select_runs_outside_a_transaction(loaded):
    """No BEGIN (SQLite: emitted by db/engine.py) and no COMMIT/ROLLBACK statement around
    the query; on PostgreSQL the connection is in autocommit while it runs. The SELECT
    runs on a DB-API connection services/sql_cursor.py keeps (tests/test_worklist_cursor.py
    has more)."""
    find(loaded, request("US"))
    kept = [c.driver_connection for c in sql_cursor.reader(loaded).idle]
    seen: list[str] = []
    for conn in kept:
        if loaded.is_sqlite:
            conn.set_trace_callback(lambda sql: seen.append(sql.split()[0].upper()))
    try:
        find(loaded, request("US"))
    finally:
        for conn in kept:
            if loaded.is_sqlite:
                conn.set_trace_callback(None)
    assert kept
    if loaded.is_sqlite:
        assert seen == ["SELECT"] and not any(conn.in_transaction for conn in kept), seen
    else:
        assert all(conn.autocommit and conn.info.transaction_status == 0 for conn in kept)
