"""Timezone Offset From UTC (0008,0201): worklist queries at +0100 and -0500 against steps
stored at +0000 (the server's ``timezone_offset``), a step scheduled with its own offset,
MPPS times with an offset (issue 16, deliverable 5; README "Time zones").

PS3.4 C.2.2.2.1.3 / C.2.2.2.5.2 / C.2.2.2.5.4: the request's offset says in which zone
its date and time keys are, and the SCP may adjust them to UTC; K.4.1.1.3.2: a response
whose times are in a designated zone carries (0008,0201). Each case runs with the
services called directly (SQLite and PostgreSQL) and with DCMTK findscu against a live
server; the DICOMweb search shares the matching.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom.sop_class import ModalityPerformedProcedureStep
from sqlalchemy import text

from conftest import module_server, require_tool
from dicom_clients import findscu_files
from worklist_mpps import timezone
from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.config import Config
from worklist_mpps.context import AppContext
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import MPPSTracking, WorklistItem
from worklist_mpps.services import mpps, orders, schedule, today, worklist
from worklist_mpps.services.schedule_values import ItemError

SPS = "(0040,0100)[0]."
TZ = "(0008,0201)"
# (accession, date, time, offset as scheduled); the server is at +0000
STEPS = [
    ("TZ1", "20261201", "233000", None),  # 12-02 00:30 at +0100, 12-01 18:30 at -0500
    ("TZ2", "20261202", "003000", None),  # 12-02 01:30 at +0100, 12-01 19:30 at -0500
    ("TZ3", "20261202", "120000", None),  # 12-02 13:00 at +0100, 12-02 07:00 at -0500
    ("TZ4", "20261202", "093000", "+0100"),  # stored 08:30 +0000; 03:30 at -0500
    ("TZ5", "20261202", "233000", None),  # 12-03 00:30 at +0100, 12-02 18:30 at -0500
]


@pytest.fixture
def utc_server() -> Iterator[None]:
    """The process's server offset at +0000, as the live server's --timezone-offset."""
    before = timezone.server_offset()
    timezone.configure("+0000")
    yield
    timezone.configure(before)


def _item_data(accession: str, date: str, time: str, offset: str | None) -> dict:
    data = {
        "accession_number": accession,
        "sps_id": accession,
        "modality": "CT",
        "scheduled_station_ae_title": "CT01",
        "sps_start_date": date,
        "sps_start_time": time,
    }
    if offset:
        data["timezone_offset"] = offset
    return data


@pytest.fixture
def steps(db, utc_server):
    for n, (accession, date, time, offset) in enumerate(STEPS, start=1):
        schedule.create_item(
            db, None, {"patient_id": f"TZP{n}"}, _item_data(accession, date, time, offset)
        )
    return db


def identifier(date: str = "", time: str = "", offset: str | None = None) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = ""
    item = Dataset()
    item.ScheduledProcedureStepStartDate = date
    item.ScheduledProcedureStepStartTime = time
    ds.ScheduledProcedureStepSequence = Sequence([item])
    if offset is not None:
        ds.TimezoneOffsetFromUTC = offset
    return ds


def find(db, date: str = "", time: str = "", offset: str | None = None) -> list[Dataset]:
    query = worklist.parse_identifier(identifier(date, time, offset))
    rows = worklist.search(db, query, ("SCHEDULED", "IN PROGRESS"))
    return [worklist.response(row, query) for row in rows]


def found(responses: list[Dataset]) -> dict[str, tuple[str, str, str | None]]:
    """accession -> (date, time, offset of the response)."""
    out = {}
    for r in responses:
        step = r.ScheduledProcedureStepSequence[0]
        out[r.AccessionNumber] = (
            step.ScheduledProcedureStepStartDate,
            step.ScheduledProcedureStepStartTime,
            r.get("TimezoneOffsetFromUTC"),
        )
    return out


# --- the services, SQLite and PostgreSQL ------------------------------------------------


def test_explicit_offset_is_stored_in_the_servers(steps):
    with steps.read() as session:
        item = session.query(WorklistItem).filter_by(accession_number="TZ4").one()
        assert (item.sps_start_date, item.sps_start_time) == ("20261202", "083000")
        assert item.sps_start_utc == "20261202083000"
    assert schedule.get_item(steps, item.id)["timezone_offset"] == "+0000"


def test_date_at_plus_0100_matches_the_instants_of_that_day(steps):
    got = found(find(steps, "20261202", offset="+0100"))
    assert got == {
        "TZ1": ("20261202", "003000", "+0100"),  # 23:30 +0000 on 12-01
        "TZ2": ("20261202", "013000", "+0100"),
        "TZ3": ("20261202", "130000", "+0100"),
        "TZ4": ("20261202", "093000", "+0100"),  # as scheduled
    }  # TZ5 is 12-03 00:30 at +0100


def test_date_at_minus_0500(steps):
    assert found(find(steps, "20261201", offset="-0500")) == {
        "TZ1": ("20261201", "183000", "-0500"),
        "TZ2": ("20261201", "193000", "-0500"),  # 00:30 +0000 on 12-02
    }
    assert set(found(find(steps, "20261202", offset="-0500"))) == {"TZ3", "TZ4", "TZ5"}


def test_combined_range_crossing_midnight_utc(steps):
    # 12-01 19:00-20:00 at -0500 is 12-02 00:00-01:00 UTC
    assert set(found(find(steps, "20261201", "1900-2000", "-0500"))) == {"TZ2"}
    # 12-02 00:00-01:00 at +0100 is 12-01 23:00-24:00 UTC
    assert set(found(find(steps, "20261202", "0000-0100", "+0100"))) == {"TZ1"}
    # an open date range: from 12-02 at +0100 (12-01 23:00 UTC) on
    assert set(found(find(steps, "20261202-", offset="+0100"))) == {
        "TZ1",
        "TZ2",
        "TZ3",
        "TZ4",
        "TZ5",
    }


def test_time_range_without_date_in_the_querys_midnight(steps):
    # 18:00-20:00 at -0500 is 23:00-01:00 UTC: two ranges of UTC time of day
    assert found(find(steps, time="1800-2000", offset="-0500")) == {
        "TZ1": ("20261201", "183000", "-0500"),
        "TZ2": ("20261201", "193000", "-0500"),
        "TZ5": ("20261202", "183000", "-0500"),
    }


def test_query_without_offset_is_unchanged(steps):
    got = found(find(steps, "20261202"))
    assert got == {
        "TZ2": ("20261202", "003000", None),
        "TZ3": ("20261202", "120000", None),
        "TZ4": ("20261202", "083000", None),
        "TZ5": ("20261202", "233000", None),
    }
    assert set(found(find(steps, "20261202", "0000-0100"))) == {"TZ2"}


def test_step_with_explicit_offset_answered_in_another(steps):
    assert found(find(steps, "20261202", "0300-0400", "-0500")) == {
        "TZ4": ("20261202", "033000", "-0500")
    }


def test_invalid_offsets_are_refused(steps):
    with pytest.raises(worklist.MatchError, match="TimezoneOffsetFromUTC"):
        worklist.parse_identifier(identifier("20261202", offset="+1500"))
    with pytest.raises(ItemError, match="timezone_offset"):
        schedule.create_item(
            steps, None, {"patient_id": "X"}, _item_data("TZX", "20261202", "0930", "0100")
        )
    with pytest.raises(ItemError, match="timezone_offset"):  # an offset without a time
        schedule.create_item(
            steps,
            None,
            {"patient_id": "X"},
            {"accession_number": "TZY", "sps_start_date": "20261202", "timezone_offset": "+0100"},
        )


def mpps_attributes(offset: str | None) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = "20261202"
    ds.PerformedProcedureStepStartTime = "093000"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PatientName = "Zone^Test"
    ds.PatientID = "TZP4"
    step = Dataset()
    step.AccessionNumber = "TZ4"
    step.StudyInstanceUID = "1.2.3.4.5.16"
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PerformedSeriesSequence = Sequence()
    if offset:
        ds.TimezoneOffsetFromUTC = offset
    return ds


def test_mpps_with_offset_is_stored_with_it(steps):
    uid = mpps.create(steps, mpps_attributes("+0100"), "1.2.3.4.5.16.1").uid
    with steps.read() as session:
        record = session.query(MPPSTracking).filter_by(sop_instance_uid=uid).one()
        assert record.timezone_offset == "+0100"
        assert record.start_datetime == "20261202083000"  # the server's local time
    # Today shows the step (08:30 +0000) and its MPPS at the same local time
    [row] = [r for r in today.day_view(steps, dt.date(2026, 12, 2)).rows if r.accession == "TZ4"]
    assert (row.start_time, [p.start for p in row.mpps]) == ("083000", ["20261202083000"])
    _, stored = mpps.get(steps, uid)
    assert stored.TimezoneOffsetFromUTC == "+0100"  # the data set as sent
    assert stored.PerformedProcedureStepStartTime == "093000"
    # the N-SET's end is in the same offset
    end = Dataset()
    end.PerformedProcedureStepStatus = "DISCONTINUED"
    end.PerformedProcedureStepEndDate = "20261202"
    end.PerformedProcedureStepEndTime = "100000"
    end.TimezoneOffsetFromUTC = "+0100"  # the same value again: accepted silently
    outcome = mpps.update(steps, uid, end)
    assert outcome.status == 0x0000
    with steps.read() as session:
        record = session.query(MPPSTracking).filter_by(sop_instance_uid=uid).one()
        assert record.end_datetime == "20261202090000"


def test_hl7_order_time_with_offset(db, utc_server):
    """An HL7 TS with +/-ZZZZ (TQ1-7 / ORC-7.4) is stored in the server's offset."""
    ctx = AppContext(Config(), db)
    msg = "\r".join(
        [
            "MSH|^~\\&|RIS|RADIOLOGY|WORKLIST|MODALITY|20261201090000||ORM^O01|TZ-1|P|2.3.1",
            "PID|1||TZPAT^^^HOSPITAL||ZONE^ANNA||19700101|F",
            "PV1|1|O",
            "ORC|NW|PLCTZ|||||^^^20261201093000-0500^^R",
            "OBR|1|PLCTZ||CTCHEST^CT Chest^LOCAL||||||||||||||ACCTZ|RP1|SPSTZ||||CT",
        ]
    )
    received = orders.receive(ctx, msg.encode(), "127.0.0.1")
    assert received.code == "AA", received.error
    [item] = schedule.search_items(db, limit=10).rows
    assert (item["sps_start_date"], item["sps_start_time"]) == ("20261201", "143000")
    got = found(find(db, "20261201", "0900-1000", "-0500"))
    assert got == {"ACCTZ": ("20261201", "093000", "-0500")}


def test_migration_fills_the_utc_start_in_the_offset_at_migration_time(db_url):
    """Steps stored before revision 0009 get their UTC start from the server's offset
    when the migration runs (README "Time zones": the trade-off)."""
    database = Database(db_url)
    before = timezone.server_offset()
    try:
        migrate.upgrade(database.engine, "0008")
        with database.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO patients (patient_id, created_at, updated_at) "
                    "VALUES ('M1', :t, :t)"
                ),
                {"t": dt.datetime(2026, 12, 1, tzinfo=dt.UTC)},
            )
            conn.execute(
                text(
                    "INSERT INTO worklist_items (patient_pk, accession_number, "
                    "study_instance_uid, sps_status, sps_start_date, sps_start_time, "
                    "sps_start, created_at, updated_at) "
                    "SELECT id, 'MIG1', '1.2.3', 'SCHEDULED', '20261201', '233000', "
                    "'20261201233000', created_at, created_at FROM patients"
                )
            )
        timezone.configure("-0500")
        migrate.upgrade(database.engine)
        with database.engine.connect() as conn:
            utc = conn.execute(text("SELECT sps_start_utc FROM worklist_items")).scalar_one()
        assert utc == "20261202043000"
    finally:
        timezone.configure(before)
        database.dispose()


# --- a live server: DCMTK findscu, DICOMweb, an MPPS over DIMSE --------------------------

YAML = "items:\n" + "".join(
    f"  - accession_number: {acc}\n"
    f"    sps_id: {acc}\n"
    "    modality: CT\n"
    "    scheduled_station_ae_title: CT01\n"
    f"    date: '{date}'\n"
    f"    time: '{time}'\n"
    + (f"    timezone_offset: '{offset}'\n" if offset else "")
    + f"    patient: {{patient_id: TZP{n}}}\n"
    for n, (acc, date, time, offset) in enumerate(STEPS, start=1)
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    require_tool("findscu")
    sample = tmp_path_factory.mktemp("tzdata") / "timezone.yaml"
    sample.write_text(YAML)
    with module_server(
        tmp_path_factory, "timezone", "--sample-file", str(sample), "--timezone-offset", "+0000"
    ) as server:
        server.calls = itertools.count(1)
        yield server


def findscu(server, *keys: str) -> dict[str, tuple[str, str, str | None]]:
    outdir = Path(server.workdir) / f"q{next(server.calls):03d}"
    keys = (
        "AccessionNumber",
        f"{SPS}ScheduledProcedureStepStartDate",
        f"{SPS}ScheduledProcedureStepStartTime",
        *keys,
    )
    return found(findscu_files(server.port, outdir, *keys))


@pytest.mark.dcmtk
@pytest.mark.dimse
def test_findscu_date_at_plus_0100(live):
    got = findscu(live, f"{TZ}=+0100", f"{SPS}ScheduledProcedureStepStartDate=20261202")
    assert got == {
        "TZ1": ("20261202", "003000", "+0100"),
        "TZ2": ("20261202", "013000", "+0100"),
        "TZ3": ("20261202", "130000", "+0100"),
        "TZ4": ("20261202", "093000", "+0100"),
    }


@pytest.mark.dcmtk
@pytest.mark.dimse
def test_findscu_at_minus_0500_across_midnight(live):
    got = findscu(
        live,
        f"{TZ}=-0500",
        f"{SPS}ScheduledProcedureStepStartDate=20261201",
        f"{SPS}ScheduledProcedureStepStartTime=1900-2000",
    )
    assert got == {"TZ2": ("20261201", "193000", "-0500")}
    got = findscu(live, f"{TZ}=-0500", f"{SPS}ScheduledProcedureStepStartTime=1800-2000")
    assert set(got) == {"TZ1", "TZ2", "TZ5"}


@pytest.mark.dcmtk
@pytest.mark.dimse
def test_findscu_without_offset_unchanged(live):
    got = findscu(live, f"{SPS}ScheduledProcedureStepStartDate=20261202")
    assert got == {
        "TZ2": ("20261202", "003000", None),
        "TZ3": ("20261202", "120000", None),
        "TZ4": ("20261202", "083000", None),
        "TZ5": ("20261202", "233000", None),
    }


@pytest.mark.dcmtk
@pytest.mark.dimse
def test_findscu_explicit_offset_step_in_another_offset(live):
    got = findscu(
        live,
        f"{TZ}=-0500",
        f"{SPS}ScheduledProcedureStepStartDate=20261202",
        f"{SPS}ScheduledProcedureStepStartTime=0300-0400",
    )
    assert got == {"TZ4": ("20261202", "033000", "-0500")}


def test_dicomweb_search_in_an_offset(live):
    rsp = requests.get(
        f"{live.http_url}/modality-scheduled-procedure-steps",
        params={
            "TimezoneOffsetFromUTC": "+0100",
            "ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate": "20261202",
        },
        timeout=30,
    )
    assert rsp.status_code == 200, rsp.text
    got = found([Dataset.from_json(doc) for doc in rsp.json()])
    assert set(got) == {"TZ1", "TZ2", "TZ3", "TZ4"}
    assert got["TZ1"] == ("20261202", "003000", "+0100")
    # a '+' left unencoded in the URL reads as a space: taken as the '+' it was
    raw = requests.get(
        f"{live.http_url}/modality-scheduled-procedure-steps?TimezoneOffsetFromUTC=+0100"
        "&ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate=20261202",
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    assert set(found([Dataset.from_json(doc) for doc in raw.json()])) == set(got)


@pytest.mark.dimse
def test_mpps_n_create_with_offset_over_dimse(live):
    ae = RequestorAE(ae_title="CT01")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", live.port, ae_title="WORKLISTS")
    assert assoc.is_established
    try:
        uid = "1.2.3.4.5.16.2"
        status, _ = assoc.send_n_create(
            mpps_attributes("-0500"), ModalityPerformedProcedureStep, uid
        )
        assert status.Status == 0x0000
        status, got = assoc.send_n_get(
            [0x00080201, 0x00400244, 0x00400245], ModalityPerformedProcedureStep, uid
        )
        assert status.Status == 0x0000
        assert (got.TimezoneOffsetFromUTC, got.PerformedProcedureStepStartTime) == (
            "-0500",
            "093000",
        )
    finally:
        assoc.release()
    # the indexed start is the server's local time: 09:30 -0500 is 14:30 +0000
    db = Database(live.database_url)
    try:
        with db.read() as session:
            record = session.query(MPPSTracking).filter_by(sop_instance_uid=uid).one()
            assert (record.start_datetime, record.timezone_offset) == ("20261202143000", "-0500")
    finally:
        db.dispose()
