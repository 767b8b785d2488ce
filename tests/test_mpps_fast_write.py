"""The stored-instance writing fast path of N-SET (issue 18) gives what pydicom gives.

``dicom._write`` copies the elements of a stored instance that are still raw (read from
its Explicit VR Little Endian bytes, character set unchanged) as header and value bytes,
instead of pydicom's ``write_dataset`` doing the same element by element. The same
requests, over character sets (none, ISO_IR 100, ISO_IR 144, ISO_IR 192, ISO 2022 IR 87)
and N-SET shapes (sequences replaced, nested, of undefined length, emptied; create-only
attributes refused; character set of the instance changing), are run through the MPPS
service with the fast path on and off: stored bytes, indexed columns, audit rows, the
answers (status, Error Comment, Attribute Identifier List) and N-GET's attributes agree.
"""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from sqlalchemy import select

from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    discontinuation_reason,
    n_create,
    n_set_completed,
    n_set_discontinued,
    n_set_progress,
)
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import AuditEvent, MPPSTracking
from worklist_mpps.services import audit, dicom, mpps
from worklist_mpps.services.status import MPPSError

CT = "1.2.840.10008.5.1.4.1.1.2"
END = dt.datetime(2026, 3, 4, 10, 20, 30)

# (Specific Character Set, a patient name, a comment) in that set's repertoire
CHARSETS = [
    (None, "Doe^John", "plain ASCII"),
    ("ISO_IR 100", "Müller^Hans", "Zwölf Bilder, ça va"),
    ("ISO_IR 144", "Иванов^Иван", "Пациент спокоен"),
    ("ISO_IR 192", "Müller^Hans", "Пациент спокоен 患者"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "撮影は問題なし"),
]


def wire(ds: Dataset, implicit: bool = True) -> Dataset:
    """As pynetdicom hands a request to the handler: written, read lazily from bytes."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    return read_dataset(BytesIO(fp.getvalue()), implicit, True)


def series(uid: str, n: int) -> Series:
    return Series(uid, [Instance(CT, f"{uid}.{i}") for i in range(1, n + 1)])


def in_charset(ds: Dataset, charset: str | list[str] | None) -> Dataset:
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def n_sets(charset: str | list[str] | None, name: str, comment: str) -> list[Dataset]:
    """One instance's N-SETs of many shapes, the last one final."""
    progress = in_charset(n_set_progress([series("1.2.3.5", 1)]), charset)
    progress.CommentsOnThePerformedProcedureStep = comment
    codes = in_charset(Dataset(), charset)  # nested sequences, text in the charset
    codes.ProcedureCodeSequence = [code("P1", comment[:16])]
    codes.ProcedureCodeSequence[0].ModifierCodeSequence = [code("M1", "modifier")]
    codes.PerformedProtocolCodeSequence = [code("PR1", "protocol"), code("PR2", comment[:8])]
    refused = in_charset(Dataset(), charset)  # a create-only change: 0x0107, rest applied
    refused.PatientID = "OTHER"
    refused.PatientName = name + "X"
    refused.PerformedProcedureStepDescription = "desc " + comment[:8]
    refused.add_new(0x00091010, "LO", "private")
    ascii_only = Dataset()  # replaces the text outside ASCII of the N-SETs before
    ascii_only.CommentsOnThePerformedProcedureStep = "ascii"
    ascii_only.PerformedProcedureStepDescription = "ascii"
    ascii_only.ProcedureCodeSequence = [code("P2", "ascii")]
    ascii_only.PerformedProtocolCodeSequence = []
    undefined = in_charset(Dataset(), charset)  # undefined-length sequence and items
    undefined.PerformedSeriesSequence = [Dataset()]
    undefined.PerformedSeriesSequence[0].SeriesInstanceUID = "1.2.3.6"
    undefined.PerformedSeriesSequence[0].OperatorsName = [name, "Other^One"]
    undefined.PerformedSeriesSequence[0].ReferencedImageSequence = []
    undefined["PerformedSeriesSequence"].is_undefined_length = True
    undefined.PerformedSeriesSequence[0].is_undefined_length_sequence_item = True
    completed = in_charset(
        n_set_completed([series("1.2.3.5", 3), series("1.2.3.7", 2)], END), charset
    )
    return [progress, codes, refused, ascii_only, undefined, completed]


def create_request(charset: str | list[str] | None, name: str, comment: str) -> Dataset:
    ds = n_create(
        [ScheduledStep("1.2.3.4", "A1", "RP1", sps_id="S1")],
        modality="CT",
        station_ae_title="CT01",
        **({"charset": charset} if charset else {}),
    )
    ds.PatientName = name
    ds.CommentsOnThePerformedProcedureStep = comment
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20260304", "101010"
    ds.PerformedProcedureStepID = "PPS1"  # not the time of the run: both runs alike
    return ds


def observe(db: Database, uid: str, outcome: object) -> tuple:
    """What a change left: the answer, the stored row, N-GET's attributes, the audit."""
    with db.read() as session:
        row = session.scalars(
            select(MPPSTracking).where(MPPSTracking.sop_instance_uid == uid)
        ).one()
        columns = {k: getattr(row, k) for k in mpps._TRACKING_KEYS}
        data, version = row.dataset, row.version
        last = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).one()
    status, got = mpps.get(db, uid, [0x00400252, 0x00400340, 0x00081032, 0x00100010])
    answer = (
        outcome
        if isinstance(outcome, tuple)
        else (outcome.status, outcome.comment, outcome.attributes, outcome.pps_status)  # type: ignore[attr-defined]
    )
    return (answer, data, columns, version, status, str(got), last.action, last.detail)


def run(db: Database, flows: list[tuple[str, Dataset, list[Dataset]]]) -> list[tuple]:
    seen = []
    for uid, create, sets in flows:
        outcome = mpps.create(db, wire(create), uid, "CT01", actor=audit.Actor("CT01"))
        seen.append(observe(db, uid, outcome))
        for request in sets:
            try:
                outcome = mpps.update(db, uid, wire(request), "CT01", actor=audit.Actor("CT01"))
            except MPPSError as exc:
                outcome = (exc.status, exc.comment, exc.attributes)
            seen.append(observe(db, uid, outcome))
    return seen


def flows() -> list[tuple[str, Dataset, list[Dataset]]]:
    out = []
    for n, (charset, name, comment) in enumerate(CHARSETS, start=1):
        out.append(
            (
                f"1.2.826.0.1.{n}",
                create_request(charset, name, comment),
                n_sets(charset, name, comment),
            )
        )
        stopped = in_charset(
            n_set_discontinued(reason=discontinuation_reason("110514"), end=END), charset
        )
        stopped.CommentsOnThePerformedProcedureStep = comment
        late = in_charset(Dataset(), charset)  # after the final state: 0x0110
        late.PerformedProcedureStepDescription = "late"
        out.append((f"1.2.826.0.2.{n}", create_request(charset, name, comment), [stopped, late]))
    return out


@pytest.fixture
def two_dbs(tmp_path):
    dbs = []
    for name in ("fast", "plain"):
        db = Database(f"sqlite:///{tmp_path / name}.db")
        migrate.upgrade(db.engine)
        dbs.append(db)
    yield dbs
    for db in dbs:
        db.dispose()


def test_n_set_stores_what_pydicom_writes(two_dbs, monkeypatch):
    fast_db, plain_db = two_dbs
    copied = []
    real = dicom._write_copying_raw
    monkeypatch.setattr(
        dicom, "_write_copying_raw", lambda fp, ds: copied.append(1) or real(fp, ds)
    )
    fast = run(fast_db, flows())
    assert len(copied) >= 30  # the fast path did write most N-SETs
    monkeypatch.setattr(dicom, "COPY_RAW_ELEMENTS", False)
    copied.clear()
    plain = run(plain_db, flows())
    assert not copied
    assert len(fast) == len(plain)
    for n, (a, b) in enumerate(zip(fast, plain, strict=True)):
        assert a == b, f"step {n}"


def stored_shapes() -> list[Dataset]:
    """Stored instances as N-SET holds them before writing: read from their bytes, some
    elements replaced, some only read (sequences decoded)."""
    shapes = []
    for charset, name, comment in CHARSETS:
        ds = dicom.as_unicode(wire(create_request(charset, name, comment)))
        ds.SOPInstanceUID = "1.2.3"
        dicom.charset_for_storage(ds)
        for request in n_sets(charset, name, comment):
            stored = dicom.decode_dataset(dicom.encode_dataset(ds))
            _ = stored.ScheduledStepAttributesSequence[0].AccessionNumber  # decoded, kept
            for elem in dicom.as_unicode(wire(request)):
                if elem.keyword in mpps.SET_ALLOWED:
                    stored[elem.tag] = elem
            dicom.charset_for_storage(stored)
            shapes.append(stored)
            ds = stored
    return shapes


@pytest.mark.parametrize("n", range(len(CHARSETS) * 6))
def test_raw_copy_is_write_dataset(n):
    stored = stored_shapes()[n]
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, stored)
    assert dicom._write(stored) == fp.getvalue()
