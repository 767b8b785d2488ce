"""The HL7 v2 order feed at the service level (services/orders.py): receive() and refuse()
called directly on SQLite and PostgreSQL with messages written as real senders write them
(v2.3.1 ORM^O01 with ZDS, v2.5.1 OMI^O23 with TQ1 and IPC, 8859/1 and UTF-8 names), and
every refusal answered precisely (HL7 v2.5.1 2.9.2 original mode, Table 0357) with nothing
applied and the message kept in hl7_messages. The names then reach DCMTK findscu.

Over 400 lines: one test per behaviour of the feed, sharing the message texts at the top.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import hl7
import pytest
from pydicom import Dataset
from sqlalchemy import select

from conftest import ROOT
from dicom_clients import findscu_files
from worklist_mpps.client.messages import ScheduledStep, n_create
from worklist_mpps.config import Config, HL7Sender, load_config
from worklist_mpps.context import AppContext
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import HL7Message, MPPSTracking, Patient
from worklist_mpps.services import hl7_log, hl7_mapping, mpps, orders, schedule, worklist

# --- messages, as senders write them ----------------------------------------------------

# A v2.3.1 RIS (ORM^O01) with the Study Instance UID in a ZDS segment (IHE RAD TF-2 4.4)
ORM_231 = [
    "MSH|^~\\&|RIS|RADIOLOGY|WORKLIST|MODALITY|20240611093000||ORM^O01|{cid}|P|2.3.1",
    "PID|1||PAT001^^^HOSPITAL^MR||DOE^JOHN^Q^JR^DR||19650412|M",
    "PV1|1|O|RAD^R101^1|||||REF01^HOUSE^GREGORY|||||||||||VIS0001",
    "ORC|{orc1}|PLC0001|FIL0001||SC||^^^20240612081500^^R||20240611093000|||REQ01^WILSON^JAMES",
    "OBR|1|PLC0001|FIL0001|CTHEAD^CT Head without contrast^LOCAL||||||||||||"
    "REQ01^WILSON^JAMES||ACC0001|RP0001|SPS0001||||CT",
    "ZDS|1.2.826.0.1.3680043.10.99.1^RIS^Application^DICOM",
]

# A v2.5.1 order filler (OMI^O23, RAD-4): TQ1 timing, one IPC per Scheduled Procedure Step
OMI_251 = [
    "MSH|^~\\&|OF|RADIOLOGY|WORKLIST|MODALITY|20240611100000||OMI^O23^OMI_O23|{cid}|P|2.5.1",
    "PID|1||PAT002^^^HOSPITAL^MR||ROE^JANE||19800229|F",
    "PV1|1|I|WARD2^205^B",
    "ORC|NW|PLC0002|FIL0002||SC",
    "TQ1|1||||||20240613143000|20240613153000|S",
    "OBR|1|PLC0002|FIL0002|MRKNEE^MR Knee^LOCAL",
    "IPC|ACC0002|RP0002|1.2.826.0.1.3680043.10.99.2|SPS0002A|MR||MR_ROOM1|MR01|MRAE01",
    "IPC|ACC0002|RP0002|1.2.826.0.1.3680043.10.99.2|SPS0002B|MR||MR_ROOM1|MR01|MRAE01",
]


def order(
    cid: str,
    *,
    orc1: str = "NW",
    pid: str = "PAT100^^^HOSPITAL",
    name: str = "SMITH^ANNA",
    number: str = "PLC100",
    acc: str = "ACC100",
    sps: str = "SPS100",
    modality: str = "CT",
    start: str = "20240612081500",
    orc5: str = "",
    orc16: str = "",
    version: str = "2.3.1",
    charset: str = "",
    mtype: str = "ORM^O01",
    sender: str = "RIS|RADIOLOGY",
    processing: str = "P",
    obr3: str = "",
    code: str = "CTCHEST^CT Chest^LOCAL",
) -> str:
    """A one-step ORM^O01 in the v2.3.1 style, its fields overridable."""
    return "\r".join(
        [
            f"MSH|^~\\&|{sender}|WORKLIST|MODALITY|20240611093000||{mtype}|{cid}|{processing}|"
            f"{version}||||||{charset}",
            f"PID|1||{pid}||{name}||19700101|F",
            "PV1|1|O",
            f"ORC|{orc1}|{number}|||{orc5}||^^^{start}^^R|||||||||{orc16}",
            f"OBR|1|{number}|{obr3}|{code}||||||||||||||{acc}|RP100|{sps}||||{modality}",
        ]
    )


def lines(template: list[str], **kw: str) -> str:
    return "\r".join(template).format(**kw)


def ctx_for(db: Database, **config) -> AppContext:
    return AppContext(Config(**config), db)


def ack_of(received: orders.Received, codec: str = "ascii") -> hl7.Message:
    return hl7.parse(received.ack.decode(codec))


def items(db: Database) -> list[dict]:
    return schedule.search_items(db, limit=1000).rows


def log_rows(db: Database) -> list[dict]:
    return hl7_log.list_messages(db, limit=1000)


def refused(
    db: Database,
    received: orders.Received,
    ack_code: str,
    error_code: int,
    location: str | None,
    before: list[dict],
    control_id: str | None = "",
) -> hl7.Message:
    """The AE/AR answer: MSA-1, MSA-2 echoing MSH-10, ERR-3 code and ERR-2 location; the
    worklist unchanged; the message kept with its outcome."""
    ack = ack_of(received, "latin-1")
    assert received.code == ack_code, received.error
    assert str(ack.segment("MSA")(1)) == ack_code
    if control_id != "":
        assert str(ack.segment("MSA")(2)) == (control_id or "")
    err = ack.segment("ERR")
    assert str(err(3)(1)(1)) == str(error_code), str(err)
    assert str(err(3)(1)(3)) == "HL70357"
    assert str(err(4)) == "E"
    if location is not None:
        assert str(err(2)) == location
    assert items(db) == before
    with db.read() as session:
        row = session.get(HL7Message, received.message_id)
        assert row is not None and row.ack_code == ack_code and row.ack == received.ack
        assert row.error and row.item_ids is None
    [event] = [e for e in _audit(db) if e["target"] == f"hl7:{received.message_id}"]
    assert (event["action"], event["channel"]) == ("hl7.message", "HL7")
    assert (event["detail"]["ack"], event["detail"]["error"]) == (ack_code, received.error)
    return ack


@pytest.fixture
def ctx(db) -> AppContext:
    return ctx_for(db)


# --- orders -----------------------------------------------------------------------------


def test_orm_231_with_zds_schedules_the_mapped_item(ctx, db):
    raw = lines(ORM_231, cid="ORM231-0001", orc1="NW").encode()
    received = orders.receive(ctx, raw, "127.0.0.1")
    assert received.code == "AA", received.error
    ack = ack_of(received)
    assert str(ack.segment("MSA")(1)) == "AA"
    assert str(ack.segment("MSA")(2)) == "ORM231-0001"
    assert str(ack.segment("MSH")(3)) == "WORKLIST-MPPS"
    assert str(ack.segment("MSH")(5)) == "RIS"
    assert str(ack.segment("MSH")(12)) == "2.3.1"
    [item] = items(db)
    assert item["accession_number"] == "ACC0001"
    assert item["requested_procedure_id"] == "RP0001"
    assert item["sps_id"] == "SPS0001"
    assert item["modality"] == "CT"
    assert item["placer_order_number"] == "PLC0001"
    assert item["filler_order_number"] == "FIL0001"
    assert item["study_instance_uid"] == "1.2.826.0.1.3680043.10.99.1"
    assert (item["sps_start_date"], item["sps_start_time"]) == ("20240612", "081500")
    assert item["requested_procedure_priority"] == "ROUTINE"
    assert item["requested_procedure_codes"] == [
        {"value": "CTHEAD", "scheme": "LOCAL", "meaning": "CT Head without contrast"}
    ]
    assert item["requested_procedure_description"] == "CT Head without contrast"
    assert item["sps_description"] == "CT Head without contrast"
    assert item["requesting_physician"] == "WILSON^JAMES"
    assert item["referring_physician_name"] == "HOUSE^GREGORY"
    assert item["current_patient_location"] == "RAD R101 1"
    assert item["admission_id"] == "VIS0001"
    assert item["sps_status"] == "SCHEDULED"
    patient = item["patient"]
    assert patient["patient_id"] == "PAT001"
    assert patient["issuer_of_patient_id"] == "HOSPITAL"
    assert patient["patient_name"] == "DOE^JOHN^Q^DR^JR"  # XPN suffix/prefix -> PN order
    assert (patient["birth_date"], patient["sex"]) == ("19650412", "M")
    [row] = log_rows(db)
    assert row["ack_code"] == "AA" and row["item_ids"] == [item["id"]]
    assert (row["control_id"], row["message_type"], row["order_control"]) == (
        "ORM231-0001",
        "ORM^O01",
        "NW",
    )
    assert (row["placer_order_number"], row["filler_order_number"]) == ("PLC0001", "FIL0001")
    shown = hl7_log.show_message(db, row["id"])
    assert shown is not None and shown["message"].startswith("MSH|") and "MSA|AA" in shown["ack"]
    events = [e for e in _audit(db) if e["channel"] == "HL7"]
    assert [e["action"] for e in events] == ["item.create", "hl7.message"]
    assert all(e["actor"] == "RIS^RADIOLOGY" and e["address"] == "127.0.0.1" for e in events)
    assert events[1]["target"] == f"hl7:{row['id']}"
    assert events[1]["detail"] == {
        "type": "ORM^O01",
        "control_id": "ORM231-0001",
        "ack": "AA",
        "error": None,
        "items": [item["id"]],
    }


def _audit(db: Database) -> list[dict]:
    from worklist_mpps.services import audit

    return audit.query(db, limit=1000)[::-1]


def test_omi_251_schedules_one_step_per_ipc(ctx, db):
    received = orders.receive(ctx, lines(OMI_251, cid="OMI251-0001").encode(), "127.0.0.1")
    assert received.code == "AA", received.error
    ack = ack_of(received)
    assert str(ack.segment("MSH")(9)) == "ACK^O23^ACK"
    steps = sorted(items(db), key=lambda i: i["sps_id"])
    assert [i["sps_id"] for i in steps] == ["SPS0002A", "SPS0002B"]
    for item in steps:
        assert item["accession_number"] == "ACC0002"
        assert item["study_instance_uid"] == "1.2.826.0.1.3680043.10.99.2"
        assert item["modality"] == "MR"
        assert item["scheduled_station_ae_title"] == "MRAE01"
        assert (item["sps_start_date"], item["sps_start_time"]) == ("20240613", "143000")
        assert item["requested_procedure_priority"] == "STAT"
        assert item["patient"]["birth_date"] == "19800229"
    assert log_rows(db)[0]["item_ids"] == sorted(i["id"] for i in steps)


def test_omi_change_matches_steps_and_adds_one(ctx, db):
    assert orders.receive(ctx, lines(OMI_251, cid="OMI-X1").encode(), "h").code == "AA"
    change = lines(OMI_251, cid="OMI-X2").replace("ORC|NW|", "ORC|XO|").split("\r")
    change[-2] = change[-2].replace("MRAE01", "MRAE02")  # step A moves to another station
    change[-1] = change[-1].replace("SPS0002B", "SPS0002C")  # a step the order did not have
    received = orders.receive(ctx, "\r".join(change).encode(), "h")
    assert received.code == "AA", received.error
    steps = {i["sps_id"]: i for i in items(db)}
    assert sorted(steps) == ["SPS0002A", "SPS0002B", "SPS0002C"]
    assert steps["SPS0002A"]["scheduled_station_ae_title"] == "MRAE02"
    assert steps["SPS0002B"]["scheduled_station_ae_title"] == "MRAE01"
    assert steps["SPS0002C"]["study_instance_uid"] == steps["SPS0002A"]["study_instance_uid"]


def test_one_bad_order_in_a_message_applies_none(ctx, db):
    good = order("M1", number="PLC300", acc="ACC300").split("\r")
    bad = order("M1", number="PLC301", acc="ACC301", modality="").split("\r")
    raw = "\r".join(good + bad[3:]).encode()  # MSH PID PV1, then two ORC/OBR groups
    received = orders.receive(ctx, raw, "h")
    refused(db, received, "AE", 101, "OBR^2^24", [], "M1")  # the second OBR
    with db.read() as session:
        assert session.scalars(select(Patient)).all() == []


def test_study_uid_assigned_once_when_the_order_has_none(ctx, db):
    assert orders.receive(ctx, order("U1").encode(), "h").code == "AA"
    [item] = items(db)
    assert re.fullmatch(r"[0-9.]+", item["study_instance_uid"])
    xo = order("U2", orc1="XO", start="20240701090000").encode()
    assert orders.receive(ctx, xo, "h").code == "AA"
    [after] = items(db)
    assert after["study_instance_uid"] == item["study_instance_uid"]


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [
        ("8859/1", "latin-1", "Müller^Jürgen"),
        ("UNICODE UTF-8", "utf-8", "Dvořák^Antonín"),
        ("UNICODE UTF-8", "utf-8", "山田^太郎"),
    ],
)
def test_msh18_decodes_names(ctx, db, charset, codec, name):
    raw = order("CS1", name=name, charset=charset).encode(codec)
    received = orders.receive(ctx, raw, "h")
    assert received.code == "AA", received.error
    assert str(ack_of(received, codec).segment("MSH")(18)) == charset
    assert items(db)[0]["patient"]["patient_name"] == name


def test_empty_msh18_with_non_ascii_bytes(db):
    raw = order("CS2", name="Müller^Jürgen").encode("latin-1")
    received = orders.receive(ctx_for(db), raw, "h")
    ack = refused(db, received, "AE", 101, "MSH^1^18", [], "CS2")
    assert "hl7_default_charset" in str(ack.segment("ERR")(8))
    # with the site's default the same bytes (a new MSH-10) are read as 8859/1
    raw = order("CS3", name="Müller^Jürgen").encode("latin-1")
    received = orders.receive(ctx_for(db, hl7_default_charset="8859/1"), raw, "h")
    assert received.code == "AA", received.error
    assert items(db)[0]["patient"]["patient_name"] == "Müller^Jürgen"


def test_bytes_not_in_the_declared_charset(ctx, db):
    raw = order("CS4", name="Müller^Jürgen", charset="UNICODE UTF-8").encode("latin-1")
    refused(db, orders.receive(ctx, raw, "h"), "AE", 102, "MSH^1^18", [], "CS4")


def test_unknown_charset(ctx, db):
    raw = order("CS5", charset="EBCDIC").encode()
    refused(db, orders.receive(ctx, raw, "h"), "AR", 103, "MSH^1^18", [], "CS5")


def test_newline_separators_accepted(ctx, db):
    raw = order("NL1").replace("\r", "\r\n").encode()
    assert orders.receive(ctx, raw, "h").code == "AA"
    raw = order("NL2", number="PLC101", acc="ACC101").replace("\r", "\n").encode()
    assert orders.receive(ctx, raw, "h").code == "AA"
    assert len(items(db)) == 2


def _default_worklist(db: Database) -> list[str]:
    ds = Dataset()
    ds.AccessionNumber = ""
    query = worklist.parse_identifier(ds)
    with db.read() as session:
        return [r.AccessionNumber for r in session.execute(worklist.statement(query))]


def test_new_change_cancel_of_one_order(ctx, db):
    assert orders.receive(ctx, order("C1").encode(), "h").code == "AA"
    assert _default_worklist(db) == ["ACC100"]
    xo = order("C2", orc1="XO", start="20240614110000", modality="MR", name="SMITH^ANNA^B")
    received = orders.receive(ctx, xo.encode(), "h")
    assert received.code == "AA", received.error
    [item] = items(db)
    assert (item["sps_start_date"], item["sps_start_time"], item["modality"]) == (
        "20240614",
        "110000",
        "MR",
    )
    assert item["patient"]["patient_name"] == "SMITH^ANNA^B"
    ca = order("C3", orc1="CA", orc16="RSN^Patient refused^LOCAL")
    assert orders.receive(ctx, ca.encode(), "h").code == "AA"
    [item] = items(db)  # kept, never deleted
    assert item["sps_status"] == "DISCONTINUED"
    assert item["status_reason"] == "Patient refused"
    assert _default_worklist(db) == []
    assert [r["order_control"] for r in log_rows(db)] == ["CA", "XO", "NW"]
    actions = [e["action"] for e in _audit(db) if e["channel"] == "HL7"]
    assert actions == [
        "item.create",
        "hl7.message",
        "item.update",
        "hl7.message",
        "item.cancel",
        "hl7.message",
    ]


def test_explicit_null_leaves_a_value(ctx, db):
    assert orders.receive(ctx, order("Z1").encode(), "h").code == "AA"
    xo = order("Z2", orc1="XO", modality='""').replace("PV1|1|O", 'PV1|1|O|""').encode()
    assert orders.receive(ctx, xo, "h").code == "AA"
    [item] = items(db)
    assert item["modality"] == "CT" and item["current_patient_location"] is None


def test_discontinue_without_reason(ctx, db):
    assert orders.receive(ctx, order("D1").encode(), "h").code == "AA"
    assert orders.receive(ctx, order("D2", orc1="DC").encode(), "h").code == "AA"
    [item] = items(db)
    assert item["sps_status"] == "DISCONTINUED"
    assert item["status_reason"] == "discontinued by order placer (ORC-1 DC)"


@pytest.mark.parametrize(
    ("orc5", "status"),
    [("CM", "COMPLETED"), ("IP", "IN PROGRESS"), ("CA", "DISCONTINUED"), ("SC", "SCHEDULED")],
)
def test_sc_with_order_status(ctx, db, orc5, status):
    assert orders.receive(ctx, order("S1").encode(), "h").code == "AA"
    received = orders.receive(ctx, order("S2", orc1="SC", orc5=orc5).encode(), "h")
    assert received.code == "AA", received.error
    assert items(db)[0]["sps_status"] == status


def test_sc_with_unknown_order_status(ctx, db):
    assert orders.receive(ctx, order("S3").encode(), "h").code == "AA"
    before = items(db)
    received = orders.receive(ctx, order("S4", orc1="SC", orc5="ZZ").encode(), "h")
    refused(db, received, "AE", 103, "ORC^1^5^1^1", before, "S4")


def test_order_without_accession_is_scheduled_when_identified_otherwise(ctx, db):
    received = orders.receive(ctx, order("N1", acc="").encode(), "h")
    assert received.code == "AA", received.error
    [item] = items(db)
    assert item["accession_number"] is None and item["placer_order_number"] == "PLC100"


def test_order_that_names_no_procedure_step(ctx, db):
    raw = order("N2", acc="", number="", modality="").replace("|RP100|", "||").encode()
    received = orders.receive(ctx, raw, "h")
    ack = refused(db, received, "AE", 101, None, [], "N2")
    text = str(ack.segment("ERR")(8))
    for name in ("accession_number", "requested_procedure_id", "placer_order_number", "modality"):
        assert name in text


# --- ADT ----------------------------------------------------------------------------------


def adt(cid: str, event: str, pid: str, name: str, mrg: str = "") -> bytes:
    segments = [
        f"MSH|^~\\&|HIS|HOSPITAL|WORKLIST|MODALITY|20240611120000||ADT^{event}|{cid}|P|2.5.1",
        f"EVN|{event}|20240611120000",
        f"PID|1||{pid}||{name}||19700101|F",
        "PV1|1|O",
    ]
    if mrg:
        segments.insert(3, f"MRG|{mrg}")
    return "\r".join(segments).encode()


def test_a08_then_a40(ctx, db):
    assert orders.receive(ctx, order("A1", pid="OLD1^^^HOSPITAL").encode(), "h").code == "AA"
    [item] = items(db)
    step = ScheduledStep(item["study_instance_uid"], "ACC100", "RP100", sps_id="SPS100")
    uid = "1.2.826.0.1.3680043.10.99.77"
    mpps.create(db, n_create([step], modality="CT", station_ae_title="CT01"), uid, "CT01")
    received = orders.receive(ctx, adt("A2", "A08", "OLD1^^^HOSPITAL", "SMITH^ANNE"), "h")
    assert received.code == "AA", received.error
    assert items(db)[0]["patient"]["patient_name"] == "SMITH^ANNE"
    # A31 of a patient nobody scheduled: accepted, nothing created
    assert orders.receive(ctx, adt("A3", "A31", "NOBODY^^^HOSPITAL", "X^Y"), "h").code == "AA"
    merge = adt("A4", "A40", "NEW1^^^HOSPITAL", "SMITH^ANNE", mrg="OLD1^^^HOSPITAL")
    received = orders.receive(ctx, merge, "h")
    assert received.code == "AA", received.error
    [moved] = items(db)
    assert moved["id"] == item["id"]
    assert (moved["patient"]["patient_id"], moved["patient"]["issuer_of_patient_id"]) == (
        "NEW1",
        "HOSPITAL",
    )
    with db.read() as session:
        assert session.scalars(select(MPPSTracking.patient_id)).all() == ["NEW1"]
    _, stored = mpps.get(db, uid)
    assert (stored.PatientID, stored.IssuerOfPatientID) == ("NEW1", "HOSPITAL")
    assert str(stored.PatientName) == "SMITH^ANNE"
    with db.read() as session:
        ids = session.scalars(select(Patient.patient_id)).all()
    assert sorted(ids) == ["NEW1"]  # the prior patient is gone, NOBODY was never created
    actions = [e["action"] for e in _audit(db) if e["channel"] == "HL7"]
    assert actions[-4:] == ["item.update", "mpps.patient", "patient.merge", "hl7.message"]
    # a merge of a prior patient that does not exist (any more)
    before = items(db)
    received = orders.receive(ctx, merge.replace(b"|A4|", b"|A5|"), "h")
    refused(db, received, "AE", 204, "MRG^1^1", before, "A5")


# --- idempotency ----------------------------------------------------------------------------


def test_repeated_control_id_gets_the_same_ack(ctx, db):
    raw = order("R1").encode()
    first = orders.receive(ctx, raw, "h")
    again = orders.receive(ctx, raw, "h")
    assert first.code == again.code == "AA"
    assert again.duplicate and not first.duplicate
    assert again.ack == first.ack and again.message_id == first.message_id
    assert len(items(db)) == 1 and len(log_rows(db)) == 1
    # a refused message resent: the same AE, still nothing applied
    bad = order("R2", pid="").encode()
    ae = orders.receive(ctx, bad, "h")
    assert orders.receive(ctx, bad, "h").ack == ae.ack
    assert len(items(db)) == 1 and len(log_rows(db)) == 2


# --- refusals (AE: content wrong; AR: cannot be processed) ----------------------------------


def test_missing_pid3(ctx, db):
    received = orders.receive(ctx, order("E1", pid="").encode(), "h")
    refused(db, received, "AE", 101, "PID^1^3", [], "E1")


def test_impossible_date_in_tq1(ctx, db):
    raw = lines(OMI_251, cid="E2").replace("20240613143000", "20240231143000").encode()
    received = orders.receive(ctx, raw, "h")
    ack = refused(db, received, "AE", 102, "TQ1^1^7^1^1", [], "E2")
    assert "20240231143000" in str(ack.segment("ERR")(8))


def test_unknown_order_control(ctx, db):
    received = orders.receive(ctx, order("E3", orc1="ZZ").encode(), "h")
    refused(db, received, "AE", 103, "ORC^1^1^1^1", [], "E3")


def test_cancel_of_unknown_order(ctx, db):
    received = orders.receive(ctx, order("E4", orc1="CA").encode(), "h")
    refused(db, received, "AE", 204, "ORC^1^2^1^1", [], "E4")


def test_new_order_that_exists(ctx, db):
    assert orders.receive(ctx, order("E5").encode(), "h").code == "AA"
    before = items(db)
    received = orders.receive(ctx, order("E6").encode(), "h")
    refused(db, received, "AE", 205, "ORC^1^2^1^1", before, "E6")


def test_accession_and_step_used_by_another_order(ctx, db):
    assert orders.receive(ctx, order("E7").encode(), "h").code == "AA"
    before = items(db)
    received = orders.receive(ctx, order("E8", number="PLC999").encode(), "h")
    refused(db, received, "AE", 205, "OBR^1^18^1^1", before, "E8")


def test_study_uid_that_is_no_uid(ctx, db):
    raw = lines(ORM_231, cid="E14", orc1="NW").replace("1.2.826.0.1.3680043.10.99.1", "1.2.abc")
    refused(db, orders.receive(ctx, raw.encode(), "h"), "AE", 102, "ZDS^1^1^1^1", [], "E14")


def test_change_onto_another_items_key(ctx, db):
    assert orders.receive(ctx, order("E11").encode(), "h").code == "AA"
    assert orders.receive(ctx, order("E12", number="PLC2", acc="ACC2").encode(), "h").code == "AA"
    before = items(db)
    received = orders.receive(ctx, order("E13", orc1="XO", number="PLC2").encode(), "h")
    refused(db, received, "AE", 205, "OBR^1^18^1^1", before, "E13")


def test_value_too_long_is_refused_not_truncated(ctx, db):
    received = orders.receive(ctx, order("E9", acc="A" * 17).encode(), "h")
    ack = refused(db, received, "AE", 102, "OBR^1^18^1^1", [], "E9")
    assert "accession_number" in str(ack.segment("ERR")(8))


def test_v231_error_also_in_err1(ctx, db):
    received = orders.receive(ctx, order("E10", pid="").encode(), "h")
    ack = refused(db, received, "AE", 101, "PID^1^3", [], "E10")
    assert str(ack.segment("ERR")(1)) == "PID^1^3^101&Required field missing&HL70357"


@pytest.mark.parametrize(
    ("mtype", "code", "location"),
    [("ADT^A01", 201, "MSH^1^9^1^2"), ("ORU^R01", 200, "MSH^1^9^1^1")],
)
def test_unsupported_type_or_event(ctx, db, mtype, code, location):
    received = orders.receive(ctx, order("T1", mtype=mtype).encode(), "h")
    ack = refused(db, received, "AR", code, location, [], "T1")
    assert mtype in ack.unescape(str(ack.segment("MSA")(3)))


def test_sender_not_allowed(db):
    allowed = ctx_for(db, hl7_senders=[HL7Sender("RIS", "RADIOLOGY", ("10.0.0.0/8",))])
    received = orders.receive(allowed, order("T2", sender="OTHER|ELSEWHERE").encode(), "10.1.1.1")
    refused(db, received, "AR", 207, "MSH^1^3", [], "T2")
    received = orders.receive(allowed, order("T3").encode(), "192.168.1.1")
    refused(db, received, "AR", 207, "MSH^1^3", [], "T3")
    assert orders.receive(allowed, order("T4").encode(), "10.1.1.1").code == "AA"


def test_wrong_version(ctx, db):
    received = orders.receive(ctx, order("T5", version="2.2").encode(), "h")
    refused(db, received, "AR", 203, "MSH^1^12", [], "T5")


def test_debug_processing_id(ctx, db):
    received = orders.receive(ctx, order("T6", processing="D").encode(), "h")
    refused(db, received, "AR", 202, "MSH^1^11", [], "T6")


@pytest.mark.parametrize(
    "raw", [b"\x00\xff garbage \x0b\x1c", b"PID|1||X", b"MSH", b"", b"MSH|^~\\&|RIS\rbad segment"]
)
def test_garbage(ctx, db, raw):
    received = orders.receive(ctx, raw, "h")
    refused(db, received, "AR", 100, None, [], None if raw[:4] != b"MSH|" else "")
    with db.read() as session:
        assert session.get(HL7Message, received.message_id).control_id is None


def test_refuse_keeps_a_truncated_copy(ctx, db):
    raw = order("F1").encode() + b"X" * 100_000
    received = orders.refuse(ctx, raw, "h", "message over hl7_max_message_size")
    ack = refused(db, received, "AR", 100, None, [], "F1")
    assert "hl7_max_message_size" in str(ack.segment("MSA")(3))
    with db.read() as session:
        row = session.get(HL7Message, received.message_id)
        assert len(row.raw) == orders.RAW_LIMIT and row.control_id is None
    # the same MSH-10, complete this time, is processed
    assert orders.receive(ctx, order("F1").encode(), "h").code == "AA"


# --- per-site overrides ---------------------------------------------------------------------


def test_site_overrides(db):
    site = ctx_for(
        db,
        hl7_field_map={"accession_number": "OBR-3"},
        hl7_procedure_modalities={"CTCHEST": "CT", "MRKNEE": "MR"},
    )
    raw = order("O1", acc="", obr3="SITEACC1", modality="", code="MRKNEE^MR Knee^LOCAL")
    received = orders.receive(site, raw.encode(), "h")
    assert received.code == "AA", received.error
    [item] = items(db)
    assert (item["accession_number"], item["modality"]) == ("SITEACC1", "MR")
    # the default locations read the same message differently
    raw2 = order("O2", acc="", obr3="SITEACC2", modality="", number="PLC200")
    received = orders.receive(ctx_for(db), raw2.encode(), "h")
    assert received.code == "AE"  # no modality: OBR-24 empty, no procedure map


def test_readme_override_example_is_a_valid_configuration(tmp_path, db):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Per-site overrides", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "site.yaml"
    path.write_text(example)
    config = load_config(path, env={})
    assert config.hl7_field_map["accession_number"] == "OBR-3"
    site = AppContext(config, db)
    raw = order("O3", acc="", obr3="SITEACC3", modality="", code="CTHEAD^CT Head^LOCAL")
    assert orders.receive(site, raw.encode(), "h").code == "AA"
    [item] = items(db)
    assert (item["accession_number"], item["modality"]) == ("SITEACC3", "CT")


def test_concurrent_copies_of_one_message_apply_once(db):
    """The same message on two connections at once: one applies it, the other gets the
    stored ACK (the unique sender + MSH-10 of hl7_messages decides the race)."""
    ctx = ctx_for(db)
    raws = [order(f"K{n}", number=f"PLCK{n}", acc=f"ACCK{n}").encode() for n in range(10)]
    results: list[orders.Received] = []
    lock = threading.Lock()

    def send(raw: bytes) -> None:
        got = orders.receive(ctx, raw, "h")
        with lock:
            results.append(got)

    threads = [threading.Thread(target=send, args=(raw,)) for raw in raws for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    by_control: dict[bytes, set[bytes]] = {}
    for got in results:
        assert got.code == "AA", got.error
        by_control.setdefault(ack_of(got).segment("MSA")(2)[0].encode(), set()).add(got.ack)
    assert all(len(acks) == 1 for acks in by_control.values())
    assert len(items(db)) == 10 and len(log_rows(db)) == 10


# --- the README ---------------------------------------------------------------------------


def test_readme_mapping_table_is_the_mapping():
    readme = (ROOT / "README.md").read_text()
    assert hl7_mapping.readme_table() in readme
    from worklist_mpps.config import HL7_MAPPED_FIELDS

    assert tuple(f.name for f in hl7_mapping.MAPPING) == HL7_MAPPED_FIELDS


# --- names into DICOM: findscu --------------------------------------------------------------


@pytest.mark.dcmtk
@pytest.mark.dimse
def test_names_reach_findscu_in_their_character_set(tmp_path: Path, live_server):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    database = Database(url)
    migrate.upgrade(database.engine)
    ctx = ctx_for(database)
    names = {
        "HL7L1": ("8859/1", "latin-1", "Müller^Jürgen", "ISO_IR 100"),
        "HL7U1": ("UNICODE UTF-8", "utf-8", "Dvořák^Antonín", "ISO_IR 192"),
        "HL7U2": ("UNICODE UTF-8", "utf-8", "山田^太郎", "ISO_IR 192"),
    }
    for n, (acc, (charset, codec, name, _)) in enumerate(names.items()):
        raw = order(f"FS{n}", acc=acc, number=f"P{acc}", pid=f"PID{n}", name=name, charset=charset)
        assert orders.receive(ctx, raw.encode(codec), "h").code == "AA"
    database.dispose()
    server = live_server(url)
    for acc, (*_, name, dicom_charset) in names.items():
        [rsp] = findscu_files(server.port, tmp_path / acc, f"AccessionNumber={acc}", "PatientName")
        assert rsp.SpecificCharacterSet == dicom_charset
        assert str(rsp.PatientName) == name


def test_one_log_line_per_message(ctx, db, caplog):
    caplog.set_level(logging.INFO, logger="worklist_mpps.services.orders")
    orders.receive(ctx, order("L1").encode(), "h")
    orders.receive(ctx, order("L2", orc1="ZZ").encode(), "h")
    lines_ = [r.getMessage() for r in caplog.records if r.name == "worklist_mpps.services.orders"]
    assert len(lines_) == 2
    assert lines_[0].startswith("hl7 RIS^RADIOLOGY control=L1 type=ORM^O01 orc1=NW -> AA")
    assert "control=L2" in lines_[1] and "-> AE" in lines_[1] and "ORC-1" in lines_[1]
    assert not any(r.exc_info for r in caplog.records)  # bad input: no traceback


def test_database_unreachable_is_ar_207_not_an_exception(caplog):
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    try:
        received = orders.receive(ctx_for(down), order("DB1").encode(), "h")
    finally:
        down.dispose()
    assert (received.code, received.message_id) == ("AR", None)
    ack = ack_of(received)
    assert str(ack.segment("MSA")(2)) == "DB1"
    assert str(ack.segment("ERR")(3)(1)(1)) == "207"
