"""The C-FIND SELECT run on the DB-API cursor (services/sql_cursor.py, issue 18), on SQLite
and PostgreSQL: row for row, value for value and type for type what SQLAlchemy's own
execution of the same statement returns, over many request shapes; the same SQL and
parameters; commits of others seen at once; no transaction left open; driver errors
raised as SQLAlchemy's, a lost connection retried once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import pytest
from pydicom.sequence import Sequence
from sqlalchemy import create_engine, event, text, update
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from conftest import PG_BASE, SAMPLE, _pg_schema_url
from dicom_clients import worklist_query
from test_matching import identifier as _ident  # AccessionNumber, top keys, one SPS item
from test_row_encoder import QUERIES, STATUSES
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import WorklistItem
from worklist_mpps.services import sql_cursor, worklist
from worklist_mpps.services.health import SCHEMA, describe_db_error
from worklist_mpps.services.loader import load_file
from worklist_mpps.services.schedule_values import create_item, get_or_create_patient

_DATE = "ScheduledProcedureStepStartDate"
# tests/test_matching.py's and tests/test_dimse_worklist.py's shapes, on the sample data
MATCHING = {
    "universal": lambda: _ident(),
    "pn wildcard": lambda: _ident({"PatientName": "*er*", "PatientID": ""}),
    "pn folded": lambda: _ident({"PatientName": "müller^hans"}),
    "literal % and _": lambda: _ident({"AccessionNumber": "A%*"}),
    "modality": lambda: _ident(sps={"Modality": "CT", "ScheduledStationAETitle": ""}),
    "station wildcard": lambda: _ident(sps={"ScheduledStationAETitle": "CT0?"}),
    "date range": lambda: _ident(sps={_DATE: "19000101-29991231", "Modality": ""}),
    "open date range": lambda: _ident(sps={_DATE: "-29991231"}),
    "time range": lambda: _ident(sps={"ScheduledProcedureStepStartTime": "0800-1200"}),
    "status": lambda: _ident(sps={"ScheduledProcedureStepStatus": "SCHEDULED"}),
    "status empty": lambda: _ident(sps={"ScheduledProcedureStepStatus": ""}),
    "pregnancy and weight": lambda: _ident({"PregnancyStatus": None, "PatientWeight": ""}),
    "codes": lambda: _ident(
        {"RequestedProcedureCodeSequence": Sequence()},
        {"ScheduledProtocolCodeSequence": Sequence()},
    ),
    "dimse query": worklist_query,
    "dimse one accession": lambda: worklist_query(AccessionNumber="A10002"),
    "nothing matches": lambda: worklist_query(AccessionNumber="NOSUCH"),
}
SHAPES = {**QUERIES, **MATCHING}
# (default statuses, calling AE, limit, offset)
ARGS = [
    (STATUSES, None, None, 0),
    (("SCHEDULED", "IN PROGRESS"), None, None, 0),
    (("SCHEDULED",), "CT01", None, 0),
    (STATUSES, None, 3, 2),
    (STATUSES, None, 1001, 0),
]


def _load_extra(db: Database) -> None:
    """Items the sample lacks: an int in a text column is not possible through the
    loader, so only what the model takes: no start time, odd codes, non-ASCII text."""
    with db.write() as session:
        patient = get_or_create_patient(
            session, {"patient_id": "PX1", "patient_name": "山田^太郎", "pregnancy_status": 4}
        )
        create_item(
            session,
            patient,
            {
                "accession_number": "A%X1",
                "sps_id": "SX1",
                "modality": "CT",
                "scheduled_station_ae_title": "CT01",
                "sps_start_date": "20260705",
                "sps_start_time": None,
                "scheduled_protocol_codes": [],
            },
        )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def loaded(request, tmp_path_factory) -> Iterator[Database]:
    """The sample data and a few more items, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('cur') / 'w.db'}"])
    else:
        urls = _pg_schema_url()
    url = next(urls)
    db = Database(url)
    migrate.upgrade(db.engine)
    load_file(db, SAMPLE)
    _load_extra(db)
    try:
        yield db
    finally:
        db.dispose()
        for _ in urls:  # drops the PostgreSQL schema
            pass


def plain(db: Database, query: worklist.WorklistQuery, *args) -> list:
    """SQLAlchemy's own execution of the same Select."""
    with db.engine.connect() as conn:
        return list(conn.execute(worklist.statement(query, *args)))


def assert_same(fast: list, rows: list) -> None:
    assert len(fast) == len(rows)
    for got, want in zip(fast, rows, strict=True):
        assert tuple(got) == tuple(want)
        assert [type(v) for v in got] == [type(v) for v in want], (got, want)
        assert dict(got._mapping) == dict(want._mapping)
        assert list(got._mapping) == list(want._mapping)  # the same labels, in order
        for name in want._fields:
            assert getattr(got, name) == getattr(want, name)


@pytest.mark.parametrize("name", SHAPES)
def test_rows_are_sqlalchemys(loaded, name):
    query = worklist.parse_identifier(SHAPES[name]())
    matched = 0
    for args in ARGS:
        fast = worklist.search(loaded, query, *args)
        assert_same(fast, plain(loaded, query, *args))
        matched += len(fast)
    assert matched or name == "nothing matches"


def test_the_shapes_hold_what_needs_processing(loaded):
    """The comparisons above mean something: JSON code lists (processed on SQLite), an
    int (Pregnancy Status), NULLs, non-ASCII text, a row without a start time."""
    query = worklist.parse_identifier(QUERIES["every key"]())
    rows = worklist.search(loaded, query, STATUSES)
    values = [v for row in rows for v in row]
    assert any(isinstance(v, list) and v and isinstance(v[0], dict) for v in values)
    assert any(isinstance(v, int) for v in values)
    assert None in values
    assert any(isinstance(v, str) and not v.isascii() for v in values)
    compiled = next(iter(query.compiled.values()))
    if loaded.is_sqlite:  # the JSON columns' deserializer; PostgreSQL's driver decodes
        assert len(compiled.processors) == 2
    else:
        assert compiled.processors == []


@pytest.mark.parametrize("name", ["every key", "bench keys", "code sequences"])
def test_sql_and_parameters_are_what_sqlalchemy_sends(loaded, name):
    query = worklist.parse_identifier(QUERIES[name]())
    sent: list = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append((statement, parameters))

    for args in ARGS:
        event.listen(loaded.engine, "before_cursor_execute", capture)
        try:
            plain(loaded, query, *args)
        finally:
            event.remove(loaded.engine, "before_cursor_execute", capture)
        worklist.search(loaded, query, *args)
        compiled = query.compiled[(*args, loaded.engine.dialect)]
        assert sent.pop() == (compiled.sql, compiled.params)
        assert "SCHEDULED" not in compiled.sql  # values stay bound


def test_compiled_once_per_dialect(loaded):
    query = worklist.parse_identifier(QUERIES["bench keys"]())
    worklist.search(loaded, query, STATUSES)
    first = dict(query.compiled)
    worklist.search(loaded, query, STATUSES)
    assert query.compiled == first and len(first) == 1
    (compiled,) = first.values()
    assert all(a is b for a, b in zip(query.compiled.values(), first.values(), strict=True))
    assert compiled.processors is not None


def _another(db: Database) -> Database:
    """Another engine on the same database: another process's session."""
    return Database(str(db.engine.url.render_as_string(hide_password=False)))


def test_a_commit_of_another_session_is_seen_by_the_next_search(loaded):
    query = worklist.parse_identifier(worklist_query(AccessionNumber="NEW*"))
    assert worklist.search(loaded, query, STATUSES) == []
    other = _another(loaded)
    try:
        with other.write() as session:
            patient = get_or_create_patient(session, {"patient_id": "PNEW", "patient_name": "N"})
            create_item(
                session,
                patient,
                {"accession_number": "NEW1", "sps_id": "SNEW1", "modality": "MR"},
            )
        (row,) = worklist.search(loaded, query, STATUSES)
        assert row.AccessionNumber == "NEW1" and row.Modality == "MR"
        with other.write() as session:
            session.execute(
                update(WorklistItem)
                .where(WorklistItem.accession_number == "NEW1")
                .values(modality="CT")
            )
        (row,) = worklist.search(loaded, query, STATUSES)
        assert row.Modality == "CT"
        with other.write() as session:
            session.execute(
                update(WorklistItem)
                .where(WorklistItem.accession_number == "NEW1")
                .values(sps_status="DISCONTINUED")
            )
        assert worklist.search(loaded, query, ("SCHEDULED",)) == []
    finally:
        other.dispose()


def _kept(db: Database) -> list:
    """The DB-API connections the reader keeps."""
    return [c.driver_connection for c in sql_cursor.reader(db).idle]


def test_no_transaction_stays_open(loaded):
    """SQLite: the SELECT is the only statement (no BEGIN), the connection is out of any
    transaction after it, and a checkpoint finds no reader in the way. PostgreSQL: the
    backends of the kept connections are 'idle', not 'idle in transaction'."""
    query = worklist.parse_identifier(QUERIES["bench keys"]())
    worklist.search(loaded, query, STATUSES)
    kept = _kept(loaded)
    assert kept
    if loaded.is_sqlite:
        seen: list[str] = []
        for conn in kept:
            conn.set_trace_callback(lambda sql: seen.append(sql.split()[0].upper()))
        try:
            assert worklist.search(loaded, query, STATUSES)
        finally:
            for conn in kept:
                conn.set_trace_callback(None)
        assert seen == ["SELECT"]
        assert not any(conn.in_transaction for conn in _kept(loaded))
        path = loaded.engine.url.database
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE worklist_items SET sps_location = sps_location")
            other.execute("COMMIT")
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        other.close()
        assert busy == 0
        return
    pids = [conn.info.backend_pid for conn in _kept(loaded)]
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            states = conn.execute(
                text(
                    "SELECT state, xact_start IS NULL FROM pg_stat_activity WHERE pid = ANY(:pids)"
                ),
                {"pids": pids},
            ).all()
    finally:
        admin.dispose()
    assert states and all(state == "idle" and no_xact for state, no_xact in states), states


def test_a_database_error_is_raised_as_sqlalchemys(loaded):
    """What Connection.execute raised, so the C-FIND handler answers 0xC001 as before
    (dimse/worklist.py); the search works again once the table is back."""
    query = worklist.parse_identifier(QUERIES["bench keys"]())
    assert worklist.search(loaded, query, STATUSES)
    with loaded.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE worklist_items RENAME TO worklist_items_hidden")
    try:
        with pytest.raises(DBAPIError) as raised:
            worklist.search(loaded, query, STATUSES)
        assert isinstance(raised.value, (OperationalError, ProgrammingError))
        assert describe_db_error(raised.value).problem == SCHEMA
        assert raised.value.statement == next(iter(query.compiled.values())).sql
    finally:
        with loaded.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE worklist_items_hidden RENAME TO worklist_items")
    assert_same(worklist.search(loaded, query, STATUSES), plain(loaded, query, STATUSES))


def _lose_connections(db: Database) -> None:
    """The kept connections die as in a database restart."""
    if db.is_sqlite:
        for conn in _kept(db):
            conn.close()
        return
    pids = [conn.info.backend_pid for conn in _kept(db)]
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM unnest(:p) AS pid"), {"p": pids}
            )
    finally:
        admin.dispose()


def test_a_lost_connection_is_retried_once(loaded):
    query = worklist.parse_identifier(QUERIES["bench keys"]())
    before = worklist.search(loaded, query, STATUSES)
    lost = _kept(loaded)
    _lose_connections(loaded)
    assert tuple(map(tuple, worklist.search(loaded, query, STATUSES))) == tuple(map(tuple, before))
    assert not set(map(id, lost)) & set(map(id, _kept(loaded)))


def test_a_connection_lost_twice_is_a_database_error(loaded, monkeypatch):
    """When the fresh connection fails too, the error goes up (0xC001), flagged as a
    lost connection."""
    query = worklist.parse_identifier(QUERIES["bench keys"]())
    worklist.search(loaded, query, STATUSES)
    reader = sql_cursor.reader(loaded)
    take = reader._take
    taken: list = []

    def dead() -> object:
        conn = take()
        conn.driver_connection.close()
        taken.append(conn)
        return conn

    monkeypatch.setattr(reader, "_take", dead)
    with pytest.raises(DBAPIError) as raised:
        worklist.search(loaded, query, STATUSES)
    assert raised.value.connection_invalidated and len(taken) == 2
    monkeypatch.undo()
    assert worklist.search(loaded, query, STATUSES)


def test_dispose_closes_the_kept_connections(loaded):
    query = worklist.parse_identifier(QUERIES["bench keys"]())
    other = _another(loaded)
    worklist.search(other, query, STATUSES)
    kept = _kept(other)
    assert kept
    other.dispose()
    assert sql_cursor.reader(other).idle == []
    assert all(getattr(conn, "closed", True) for conn in kept)
    if other.is_sqlite:
        with pytest.raises(sqlite3.ProgrammingError):
            kept[0].execute("SELECT 1")
    assert worklist.search(other, query, STATUSES)  # the engine still works, as after dispose
    other.dispose()


def test_rows_by_position_label_and_mapping(loaded):
    query = worklist.parse_identifier(QUERIES["bench keys"]())
    (row, *_) = worklist.search(loaded, query, STATUSES)
    labels = list(worklist._columns(query))
    assert row._fields == tuple(labels)
    assert list(row._mapping) == labels and len(row._mapping) == len(row)
    assert [row._mapping[name] for name in labels] == list(row)
    assert row.PatientID == row[labels.index("PatientID")]
    assert row._mapping.get("NoSuchColumn") is None
    with pytest.raises(AttributeError):
        _ = row.NoSuchColumn


def test_concurrent_searches(loaded):
    """Threads share the kept connections, each used by one thread at a time; at most
    Reader.KEEP stay open."""
    query = worklist.parse_identifier(QUERIES["every key"]())
    expected = [tuple(r) for r in plain(loaded, query, STATUSES)]
    results: list = []
    errors: list = []

    def run() -> None:
        try:
            for _ in range(20):
                results.append([tuple(r) for r in worklist.search(loaded, query, STATUSES)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 240
    assert all(found == expected for found in results)
    assert len(sql_cursor.reader(loaded).idle) <= sql_cursor.Reader.KEEP


@pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
def test_the_sqlalchemy_internals_it_compiles_with_are_there(dialect_name):
    """services/sql_cursor.py ``Compiled`` reads SQLAlchemy internals (the execution
    context's own way of rendering a statement); a release that renames one fails here,
    naming it, before any query returns wrong rows."""
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.types import JSON

    dialect = (sqlite if dialect_name == "sqlite" else postgresql).dialect()
    compiled = select(WorklistItem.id).where(WorklistItem.id == 1).compile(dialect=dialect)
    missing = [
        name
        for name in (
            "_bind_processors",
            "_result_columns",
            "escaped_bind_names",
            "positiontup",
            "positional",
            "construct_params",
        )
        if not hasattr(compiled, name)
    ]
    missing += [n for n in ("execute_sequence_format", "is_disconnect") if not hasattr(dialect, n)]
    if not hasattr(JSON(), "_cached_result_processor"):
        missing.append("TypeEngine._cached_result_processor")
    if not hasattr(DBAPIError, "instance"):
        missing.append("DBAPIError.instance")
    assert not missing, f"SQLAlchemy internals sql_cursor relies on are gone: {missing}"
    # each result column is (label, ..., ..., type), as Compiled.of unpacks it
    assert [(c[0], type(c[3]).__name__) for c in compiled._result_columns] == [("id", "Integer")]
