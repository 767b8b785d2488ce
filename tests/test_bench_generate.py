"""The benchmark's fast load (bench/generate.py bulk_load: COPY on PostgreSQL, executemany
on SQLite) stores exactly the rows of the ordinary paths: generate.load (one dict a row
through SQLAlchemy) and the application's own upsert_item (services/schedule_values.py,
what ``worklist-mpps load`` runs). Compared column by column as stored (JSON as its text,
times as the driver hands them back), on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import JSON, Text, cast, select

from conftest import ROOT, _pg_schema_url
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import Patient, WorklistItem
from worklist_mpps.services.schedule_values import upsert_item

sys.path.insert(0, str(ROOT / "bench"))

import generate

N = 450  # three days of 200 on 20 stations, 337 patients at most, some with several items
NOW = dt.datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
STAMPS = ("created_at", "updated_at")


def pairs() -> list[tuple[dict, dict]]:
    """make_items' pairs plus a few that normalisation changes: padding, empty values,
    a short time, a code given by keyword, an unknown date of birth, one patient given
    with and without padding."""
    out = generate.make_items(N, dt.date(2026, 12, 2))
    odd_patient = {"patient_id": " X1 ", "patient_name": "  Ölçek^Ayşe ", "birth_date": ""}
    odd_item = dict(out[0][1], accession_number=" ODD1 ", sps_id="ODD-S", sps_location="")
    odd_item.update(
        sps_start_time="0830",
        referring_physician_name="van der Berg^Ánne ",
        requested_procedure_codes=[{"CodeValue": "X-1", "scheme": "LN", "meaning": " Odd "}],
    )
    same = {"patient_id": "X1", "patient_name": "Ölçek^Ayşe", "birth_date": None}  # as odd
    return [
        *out,
        (odd_patient, odd_item),
        (out[5][0], dict(odd_item, sps_id="ODD-T")),
        (same, dict(odd_item, sps_id="ODD-U")),
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def three(request, tmp_path) -> Iterator[list[Database]]:
    """Three empty, migrated databases of one kind: fast, ordinary, application."""
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path / f'{n}.db'}" for n in range(3)]
        schemas: list = []
    else:
        schemas = [_pg_schema_url() for _ in range(3)]
        urls = [next(s) for s in schemas]
    dbs = [Database(url) for url in urls]
    for db in dbs:
        migrate.upgrade(db.engine)
    try:
        yield dbs
    finally:
        for db in dbs:
            db.dispose()
        for s in schemas:
            s.close()


def stored(db: Database, table, skip: tuple[str, ...] = ()) -> list[tuple]:
    cols = [
        cast(c, Text).label(c.name) if isinstance(c.type, JSON) else c
        for c in table.columns
        if c.name not in skip
    ]
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).order_by(table.c.id))]


def indexes(db: Database) -> list[tuple[str, str]]:
    """Every index of the database and its definition (bulk_load drops and remakes them)."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            rows = conn.exec_driver_sql(
                "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'index'"
            )
            return sorted(tuple(r) for r in rows)
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
        rows = conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        )
        return sorted((name, sql.replace(f"{schema}.", "")) for name, sql in rows)


@pytest.fixture
def counted_uids(monkeypatch):
    """Study Instance UIDs from a counter, restarted for each load: rows comparable whole."""

    def restart() -> None:
        counter = itertools.count(1)
        monkeypatch.setattr(generate, "generate_uid", lambda prefix: f"2.25.{next(counter)}")

    return restart


@pytest.mark.parametrize("memo_limit", [None, 3], ids=["memos", "memos-full"])
def test_bulk_load_stores_the_rows_of_the_ordinary_paths(
    three, counted_uids, monkeypatch, memo_limit
):
    """memos-full: the memos stop taking values after 3 (as they do at 1M items)."""
    if memo_limit:
        monkeypatch.setattr(generate._FieldWise, "LIMIT", memo_limit)
        monkeypatch.setattr(generate._Memo, "LIMIT", memo_limit)
    fast, ordinary, application = three
    data = pairs()
    counted_uids()
    generate.bulk_load(fast, data, now=NOW)
    counted_uids()
    generate.load(ordinary, data, now=NOW)
    with application.write() as session:
        for patient, item in data:
            upsert_item(session, patient, item)
            session.flush()

    for table in (Patient.__table__, WorklistItem.__table__):
        rows = stored(fast, table)
        assert rows == stored(ordinary, table), table.name
        skip = (*STAMPS, "study_instance_uid")
        assert stored(fast, table, skip) == stored(application, table, skip), table.name
    assert indexes(fast) == indexes(ordinary) == indexes(application)
    assert len(indexes(fast)) > 40
    items = stored(fast, WorklistItem.__table__)
    assert len(items) == N + 3
    assert items[N][1] == items[N + 2][1]  # one patient, given padded and not
    assert len(stored(fast, Patient.__table__)) < N  # patients shared between items
    columns = [c.name for c in WorklistItem.__table__.columns]
    odd = dict(zip(columns, items[N], strict=True))
    assert odd["accession_number"] == "ODD1" and odd["sps_location"] is None
    assert odd["sps_start"] == odd["sps_start_date"] + "083000"
    assert odd["referring_physician_name_folded"] == "van der berg^anne"
    assert odd["sps_start_utc"] is not None


def test_bulk_load_leaves_statistics_and_sqlite_settings(three):
    """ANALYZE after the load, as services/loader.py does after a bulk load (PostgreSQL);
    the SQLite file is back in WAL mode, the server's journal."""
    db = three[0]
    generate.bulk_load(db, generate.make_items(300, dt.date.today()))
    with db.engine.connect() as conn:
        if db.is_sqlite:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        else:
            analyzed = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = current_schema()"
                " AND relname IN ('patients', 'worklist_items') AND last_analyze IS NOT NULL"
            ).scalar()
            assert analyzed == 2


def test_make_items_shares_patients_and_equal_values():
    data = generate.make_items(2000, dt.date(2026, 12, 2))
    by_id: dict[str, dict] = {}
    for patient, _ in data:
        assert by_id.setdefault(patient["patient_id"], patient) is patient
    assert len(by_id) < len(data)
    assert len({id(item["scheduled_protocol_codes"]) for _, item in data}) < 200
    days = sorted({item["sps_start_date"] for _, item in data})
    assert len(days) == 10 and "20261202" in days
