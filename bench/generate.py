"""Realistic worklist data for the benchmark, loaded into our database and as .wl files.

A department schedules PER_DAY steps a day on STATIONS; N items are N / PER_DAY
days of that, centred on today (history and the coming days), so a query for
today returns the same amount of work at every N and the figures show how the
cost grows with the size of the table alone. Items carry the IHE Scheduled
Workflow attributes, accented and non-Latin names included.

Two loaders store the same rows: load(), one dict a row through SQLAlchemy (the plain
path), and bulk_load(), which `make bench` uses: PostgreSQL COPY, SQLite executemany,
indexes made after the rows, 1,000,000 items in about 3 to 4 minutes on 2 busy cores
(tests/test_bench_generate.py keeps the two, and the application's own upsert_item,
equal). Longer than ~400 lines for that reason: the fast load sits beside the rows it
must reproduce.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import JSON, Table, insert

from worklist_mpps import timezone
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import Patient, WorklistItem, utcnow
from worklist_mpps.services.schedule_values import FOLDED, normalize_item, normalize_patient

PER_DAY = 200
STATIONS = {  # station AE title -> modality (20 stations)
    **{f"CT0{i}": "CT" for i in range(1, 5)},
    **{f"MR0{i}": "MR" for i in range(1, 4)},
    **{f"US0{i}": "US" for i in range(1, 5)},
    **{f"CR0{i}": "CR" for i in range(1, 4)},
    **{f"DX0{i}": "DX" for i in range(1, 4)},
    "MG01": "MG",
    "XA01": "XA",
    "NM01": "NM",
}
FAMILY = [
    "Müller",
    "Sánchez",
    "Lefèvre",
    "Øster",
    "Dvořák",
    "Nuñez",
    "Björk",
    "Smith",
    "O'Brien",
    "Nguyen",
    "Kowalski",
    "Rossi",
    "Schmidt",
    "García",
    "Martin",
    "Yılmaz",
    "Papadopoulos",
    "Ivanova",
    "Haddad",
    "Novak",
    "Иванов",
    "山田",
    "Παπαδόπουλος",
]
GIVEN = [
    "Hans",
    "María",
    "Zoé",
    "Søren",
    "Antonín",
    "José",
    "Åsa",
    "John",
    "Liam",
    "Anh",
    "Ewa",
    "Giulia",
    "Jürgen",
    "Lucía",
    "Élodie",
    "Ayşe",
    "Giorgos",
    "Olga",
    "Karim",
    "Иван",
    "太郎",
    "Γιώργος",
]
PROCEDURES = {
    "CT": ["CT Thorax", "CT Abdomen", "CT Head", "CT Angio"],
    "MR": ["MR Knee", "MR Brain"],
    "US": ["US Abdomen", "US Thyroid"],
    "CR": ["Chest PA"],
    "DX": ["Hand 2 views", "Ankle"],
    "MG": ["Mammography screening"],
    "XA": ["Coronary angiography"],
    "NM": ["Bone scan"],
}


def days_for(n: int) -> list[int]:
    """Day offsets holding n items: about 40 % history, 60 % future."""
    count = max(1, -(-n // PER_DAY))
    first = -int(count * 0.4)
    return list(range(first, first + count))


def make_items(n: int, today: dt.date, seed: int = 7) -> list[tuple[dict, dict]]:
    """N (patient, item) pairs as the YAML loader reads them (services/loader.py).

    A patient's items share one patient dict, and equal values (names, codes, times)
    are one object: 1,000,000 pairs stay around 1 GB and take seconds to make.
    """
    rng = random.Random(seed)
    stations = list(STATIONS)
    dates = [(today + dt.timedelta(days=day)).strftime("%Y%m%d") for day in days_for(n)]
    pairs = []
    patients = max(1, n * 3 // 4)
    people: dict[int, dict] = {}
    shared: dict[tuple, Any] = {}
    for i in range(n):
        station = stations[i % len(stations)]
        modality = STATIONS[station]
        minute = 7 * 60 + 30 + (i % PER_DAY // len(stations)) * 60 // 2 + rng.randrange(0, 25)
        pid = rng.randrange(patients)
        description = rng.choice(PROCEDURES[modality])
        patient = people.get(pid)
        if patient is None:
            patient = people[pid] = {
                "patient_id": f"P{pid:07d}",
                "patient_name": f"{FAMILY[pid % len(FAMILY)]}^{GIVEN[pid % len(GIVEN)]}",
                "birth_date": f"{1930 + pid % 90}{1 + pid % 12:02d}{1 + pid % 28:02d}",
                "sex": "MFO"[pid % 3 if pid % 50 else 2],
            }
        key = (i % 2520, description)  # 2520: i % 360, % 5, % 4, % 7 and % 9 at once
        values = shared.get(key)
        if values is None:
            values = shared[key] = (
                [{"value": f"{30000 + i % 40}-{i % 9}", "scheme": "LN", "meaning": description}],
                _one(shared, f"{FAMILY[i % 7]}^{GIVEN[i % 5]}^^Dr."),
                _one(shared, f"{FAMILY[(i + 3) % 9]}^{GIVEN[i % 4]}"),
                _one(
                    shared,
                    [
                        {
                            "value": f"P-{modality}-{i % 5}",
                            "scheme": "99LOCAL",
                            "meaning": description,
                        }
                    ],
                    ("protocol", modality, i % 5, description),
                ),
            )
        codes, referring, performing, protocol = values
        item = {
            "accession_number": f"B{i:08d}",
            "sps_id": f"S{i:08d}",
            "requested_procedure_id": f"RP{i:08d}",
            "requested_procedure_description": description,
            "requested_procedure_priority": "STAT" if i % 97 == 0 else "ROUTINE",
            "requested_procedure_codes": codes,
            "referring_physician_name": referring,
            "sps_description": description,
            "modality": modality,
            "scheduled_station_ae_title": station,
            "scheduled_station_name": _one(shared, station + "-ROOM"),
            "sps_location": "Radiology",
            "sps_start_date": dates[i // PER_DAY],
            "sps_start_time": _one(shared, f"{min(minute // 60, 23):02d}{minute % 60:02d}00"),
            "scheduled_performing_physician_name": performing,
            "scheduled_protocol_codes": protocol,
        }
        pairs.append((patient, item))
    return pairs


def _one(shared: dict, value: Any, key: Any = None) -> Any:
    """The one object of ``value`` (equal strings and code lists are stored once)."""
    return shared.setdefault(("one", value if key is None else key), value)


def load(
    db: Database, pairs: list[tuple[dict, dict]], batch: int = 5000, now: dt.datetime | None = None
) -> None:
    """Bulk insert, normalized and derived as services/schedule_values.py does (the
    ordinary path, ORM-free but one dict a row: 92 s for 100,000 items on PostgreSQL;
    bulk_load below is the fast one, tests/test_bench_generate.py keeps them equal)."""
    now = now or utcnow()
    patient_rows: dict[str, dict] = {}
    for patient, _ in pairs:
        if patient["patient_id"] not in patient_rows:
            row = normalize_patient(patient)
            row["patient_name_folded"] = fold(row["patient_name"])
            patient_rows[row["patient_id"]] = {**row, "created_at": now, "updated_at": now}
    with db.write() as session:
        rows = list(patient_rows.values())
        for start in range(0, len(rows), batch):
            session.execute(insert(Patient), rows[start : start + batch])
        ids = dict(
            session.execute(
                Patient.__table__.select().with_only_columns(Patient.patient_id, Patient.id)
            ).all()
        )
        items = []
        for patient, item in pairs:
            row = normalize_item(item)
            pid = normalize_patient({"patient_id": patient["patient_id"]})["patient_id"]
            for name, folded in FOLDED.items():
                if name in row:
                    row[folded] = fold(row[name])
            row.update(
                patient_pk=ids[pid],
                sps_status="SCHEDULED",
                study_instance_uid=generate_uid(prefix=None),
                created_at=now,
                updated_at=now,
                sps_start=row["sps_start_date"] + row["sps_start_time"],
            )
            row["sps_start_utc"] = timezone.to_utc(row["sps_start"])
            items.append(row)
        for start in range(0, len(items), batch):
            session.execute(insert(WorklistItem), items[start : start + batch])


def fold(value: str | None) -> str | None:
    from worklist_mpps.services.matching import fold_pn

    return fold_pn(value)


def export_wl(pairs: list[tuple[dict, dict]], folder: Path) -> None:
    """The same items as DCMTK worklist files (wlmscpfs's data folder, AE WORKLISTS)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    for patient, item in pairs:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID = patient["patient_name"], patient["patient_id"]
        ds.PatientBirthDate, ds.PatientSex = patient["birth_date"], patient["sex"]
        ds.AccessionNumber = item["accession_number"]
        ds.RequestedProcedureID = item["requested_procedure_id"]
        ds.RequestedProcedureDescription = item["requested_procedure_description"]
        ds.RequestedProcedurePriority = item["requested_procedure_priority"]
        ds.ReferringPhysicianName = item["referring_physician_name"]
        ds.StudyInstanceUID = generate_uid(prefix=None)
        sps = Dataset()
        sps.ScheduledStationAETitle = item["scheduled_station_ae_title"]
        sps.ScheduledStationName = item["scheduled_station_name"]
        sps.ScheduledProcedureStepStartDate = item["sps_start_date"]
        sps.ScheduledProcedureStepStartTime = item["sps_start_time"]
        sps.Modality = item["modality"]
        sps.ScheduledPerformingPhysicianName = item["scheduled_performing_physician_name"]
        sps.ScheduledProcedureStepDescription = item["sps_description"]
        sps.ScheduledProcedureStepID = item["sps_id"]
        sps.ScheduledProcedureStepLocation = item["sps_location"]
        sps.ScheduledProcedureStepStatus = "SCHEDULED"
        ds.ScheduledProcedureStepSequence = Sequence([sps])
        ds.save_as(folder / f"{item['accession_number']}.wl", enforce_file_format=False)


# --- the fast load: 1,000,000 items in minutes (issue 18) ----------------------------------
# Rows are tuples in table-column order, values normalized one field at a time by the same
# normalize_item / normalize_patient (memoized: most values repeat), derived as create_item
# derives them (schedule_values.py), and passed through the columns' own bind processors.


class _FieldWise:
    """``normalize(data)`` one field at a time, memoized. Every field of normalize_item
    and normalize_patient is normalized on its own (the one cross-field rule, a start's
    ``timezone_offset``, is refused here), so {k: v} gives what the whole mapping gives
    for k. A field whose values do not repeat (accession numbers) stops being memoized."""

    LIMIT = 20_000

    def __init__(self, normalize: Callable[[dict], dict]) -> None:
        self.normalize = normalize
        self.memo: dict[str, dict] = {}

    def __call__(self, key: str, value: Any) -> Any:
        memo = self.memo.setdefault(key, {})
        token = value if isinstance(value, str) or value is None else id(value)
        hit = memo.get(token)
        if hit is not None:
            return hit[1]
        out = self.normalize({key: value}).get(key)
        if len(memo) < self.LIMIT:
            memo[token] = (value, out)  # the value kept: its id() stays its own
        return out


class _Memo(dict):
    """fn(value) once per distinct value (folding, UTC starts, JSON text of a code list),
    for the first LIMIT distinct values (memory stays bounded when values do not repeat)."""

    LIMIT = 100_000

    def __init__(self, fn: Callable[[Any], Any], by_id: bool = False) -> None:
        super().__init__()
        self.fn, self.by_id = fn, by_id

    def __call__(self, value: Any) -> Any:
        if value is None:
            return None
        token = id(value) if self.by_id else value
        hit = self.get(token)
        if hit is not None:
            return hit[1]
        out = self.fn(value)
        if len(self) < self.LIMIT:
            self[token] = (value, out)  # the value kept: its id() stays its own
        return out


def _columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


def _processors(db: Database, table: Table, cols: list[str], con: Any = None) -> list:
    """The bind processor of each column, as SQLAlchemy applies it to an ordinary insert
    (SQLite: DateTime and JSON to text). For COPY (``con``, a psycopg connection), the
    Json wrapper of a JSON column is made text by psycopg's own dumper, as it is for the
    ordinary insert (the json type keeps that text as it is)."""
    dialect = db.engine.dialect
    out: list = []
    for name in cols:
        proc = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None and con is not None and isinstance(table.c[name].type, JSON):
            proc = functools.partial(_json_text, proc, con)
        out.append(proc)
    return out


def _json_text(proc: Callable, con: Any, value: Any) -> str | None:
    from psycopg.adapt import PyFormat

    wrapped = proc(value)
    if wrapped is None:
        return None
    dumper = con.adapters.get_dumper(type(wrapped), PyFormat.TEXT)(type(wrapped), con)
    return bytes(dumper.dump(wrapped)).decode()


def patient_rows(
    pairs: list[tuple[dict, dict]], now: dt.datetime, keys: dict[str, str]
) -> Iterator[tuple]:
    """One tuple per distinct patient, in order of first appearance (as load()); ``keys``
    gets each given Patient ID's normalized one."""
    cols = _columns(Patient.__table__)
    at = {name: n for n, name in enumerate(cols)}
    norm, fold_memo, seen = _FieldWise(normalize_patient), _Memo(fold), set()
    for patient, _ in pairs:
        given = patient["patient_id"]
        if given in keys:
            continue
        row: list[Any] = [None] * len(cols)
        for key, value in patient.items():
            row[at[key]] = norm(key, value)
        keys[given] = row[at["patient_id"]]
        if keys[given] in seen:
            continue
        seen.add(keys[given])
        row[at["patient_name_folded"]] = fold_memo(row[at["patient_name"]])
        row[at["created_at"]] = row[at["updated_at"]] = now
        yield tuple(row)


def item_rows(
    pairs: list[tuple[dict, dict]], ids: dict[str, int], now: dt.datetime
) -> Iterator[tuple]:
    """One tuple per item: normalize_item's values, the folded names, the combined start
    and its UTC copy, a new Study Instance UID (create_item in schedule_values.py)."""
    cols = _columns(WorklistItem.__table__)
    at = {name: n for n, name in enumerate(cols)}
    norm, fold_memo, utc = _FieldWise(normalize_item), _Memo(fold), _Memo(timezone.to_utc)
    folded = [(at[name], at[twin]) for name, twin in FOLDED.items() if name in at]
    date, time_, start, start_utc = (
        at[c] for c in ("sps_start_date", "sps_start_time", "sps_start", "sps_start_utc")
    )
    for patient, item in pairs:
        if "timezone_offset" in item:
            raise ValueError("bulk_load takes no timezone_offset: use load()")
        row: list[Any] = [None] * len(cols)
        for key, value in item.items():
            row[at[key]] = norm(key, value)
        for name, twin in folded:
            row[twin] = fold_memo(row[name])
        if row[date]:
            row[start] = row[date] + (row[time_] or "000000")
            row[start_utc] = utc(row[start])
        row[at["patient_pk"]] = ids[patient["patient_id"]]  # the normalized ID's
        row[at["sps_status"]] = "SCHEDULED"
        row[at["study_instance_uid"]] = generate_uid(prefix=None)
        row[at["created_at"]] = row[at["updated_at"]] = now
        yield tuple(row)


def _processed(rows: Iterable[tuple], procs: list) -> Iterator[tuple]:
    """Rows through the bind processors; equal inputs (one ``now``, shared code lists)
    processed once."""
    memos = [None if p is None else _Memo(p, by_id=True) for p in procs]
    active = [(n, m) for n, m in enumerate(memos) if m is not None]
    if not active:
        yield from rows
        return
    for row in rows:
        out = list(row)
        for n, memo in active:
            out[n] = memo(out[n])
        yield tuple(out)


def bulk_load(db: Database, pairs: list[tuple[dict, dict]], now: dt.datetime | None = None) -> None:
    """What load() stores, fast: PostgreSQL by COPY FROM STDIN, SQLite by executemany in
    one transaction, the tables' plain indexes dropped while they fill and made again
    from their own definitions (one sorted build each instead of a million random
    inserts: PostgreSQL manual 14.4.3); then ANALYZE as the YAML loader does after a bulk
    load (services/loader.py, ANALYZE_AFTER; Database.analyze, a no-op on SQLite)."""
    now = now or utcnow()
    write = _copy if not db.is_sqlite else _executemany
    raw = db.engine.raw_connection()
    try:
        con = raw.driver_connection
        if db.is_sqlite:
            # a bench-only file, made again on every run: no journal and no fsync while it
            # fills (a crash leaves a file nobody reuses), and 256 MiB of page cache for
            # the index builds; the server opens it with its own settings (WAL,
            # synchronous FULL: db/engine.py), which are set back here afterwards
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-262144"):
                con.execute(f"PRAGMA {pragma}")
            con.execute("BEGIN")
        else:  # memory for each index build, this session only (default 64 MB)
            con.execute("SET maintenance_work_mem = '256MB'")
        indexes = _plain_indexes(con, db.is_sqlite)
        for name, _ in indexes:
            con.execute(f'DROP INDEX "{name}"')
        keys: dict[str, str] = {}
        write(db, con, Patient.__table__, patient_rows(pairs, now, keys))
        pk = dict(con.execute("SELECT patient_id, id FROM patients").fetchall())
        ids = {given: pk[key] for given, key in keys.items()}
        write(db, con, WorklistItem.__table__, item_rows(pairs, ids, now))
        for _, definition in indexes:
            con.execute(definition)
        con.commit() if not db.is_sqlite else con.execute("COMMIT")
        if db.is_sqlite:
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-2000"):
                con.execute(f"PRAGMA {pragma}")
    finally:
        raw.close()
    db.analyze("patients", "worklist_items")


def _plain_indexes(con: Any, sqlite: bool) -> list[tuple[str, str]]:
    """(name, its CREATE INDEX statement) of the two tables' indexes that no constraint
    owns (primary keys and UNIQUE constraints stay, and are checked as rows come)."""
    if sqlite:
        query = (
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name IN ('patients', 'worklist_items') ORDER BY name"
        )
    else:
        query = (
            "SELECT i.indexname, i.indexdef FROM pg_indexes i"
            " WHERE i.schemaname = current_schema() AND i.tablename IN"
            " ('patients', 'worklist_items') AND NOT EXISTS (SELECT 1 FROM pg_constraint c"
            " WHERE c.conindid = (quote_ident(i.schemaname) || '.' ||"
            " quote_ident(i.indexname))::regclass) ORDER BY i.indexname"
        )
    return [tuple(row) for row in con.execute(query).fetchall()]


def _copy(db: Database, con: Any, table: Table, rows: Iterable[tuple]) -> None:
    cols = _columns(table)
    names = ", ".join(f'"{c}"' for c in cols)
    procs = _processors(db, table, cols, con)
    with con.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for row in _processed(rows, procs):
            copy.write_row(row)


def _executemany(db: Database, con: Any, table: Table, rows: Iterable[tuple]) -> None:
    cols = _columns(table)
    compiled = insert(table).compile(dialect=db.engine.dialect, column_keys=cols)
    if list(compiled.positiontup or ()) != cols:
        raise RuntimeError(f"unexpected parameter order {compiled.positiontup}")
    procs = _processors(db, table, cols)
    rows = _processed(rows, procs)
    while chunk := list(itertools.islice(rows, 20_000)):
        con.executemany(str(compiled), chunk)
