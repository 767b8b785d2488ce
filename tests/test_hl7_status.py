"""Procedure status back to the order placer (issue 14, deliverable 5; IHE RAD TF-2 RAD-3:
ORC-1 SC with ORC-5 IP / CM / DC), delivered over MLLP to a real receiver that is not our
code: python-hl7's asyncio MLLP server, answering with python-hl7's create_ack."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import hl7
import hl7.mllp
import pytest
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from sqlalchemy import select

from conftest import free_port, wait_for
from dicom_clients import associate
from hl7_clients import Receiver
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    n_create,
    n_set_completed,
    n_set_discontinued,
)
from worklist_mpps.config import Config, HL7Destination
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import OutboxMessage
from worklist_mpps.delivery.hl7_out import (
    HL7StatusTarget,
    build_message,
    control_id,
    escape,
    read_ack,
)
from worklist_mpps.delivery.worker import Failed, OutboxWorker, Retry
from worklist_mpps.services import mpps, schedule
from worklist_mpps.services.outbox import (
    enqueue,
    list_messages,
    mpps_targets,
    retry,
    status_targets,
)


@pytest.fixture
def receiver():
    started: list[Receiver] = []

    def start(port: int | None = None, code: str = "AA") -> Receiver:
        r = Receiver(port, code).start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def field(message: hl7.Message, where: str) -> str:
    """A value of a received message, unescaped by python-hl7's accessor ('PID.F3.R1.C4')."""
    return str(message[where])


def whole(message: hl7.Message, segment: str, number: int) -> str:
    """A whole field of the first such segment, as sent (components and escapes)."""
    return str(message.segment(segment)(number))


def outbox_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "outbox", *args, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def outbox_rows(url: str) -> list[dict]:
    done = outbox_cli(url, "list", "--json")
    assert done.returncode == 0, done.stderr
    return list(reversed(json.loads(done.stdout)))


# --- the worklist item from an order, and the modality's MPPS ----------------------------


def schedule_order(url: str, n: int = 1, name: str = "Dvořák^Antonín", **extra) -> dict:
    db = Database(url)
    try:
        data = {
            "accession_number": f"ACC-H{n}",
            "requested_procedure_id": f"RP-H{n}",
            "requested_procedure_codes": [{"value": "CTHD", "scheme": "L", "meaning": "CT head"}],
            "sps_id": f"SPS-H{n}",
            "modality": "CT",
            "scheduled_station_ae_title": "CT01",
            "scheduled_station_name": "CTROOM1",
            "sps_start_date": "20261201",
            "sps_start_time": "120000",
            "placer_order_number": f"PL-{n}",
            "filler_order_number": f"FI-{n}",
        }
        data.update(extra)
        patient = {"patient_id": f"PID-H{n}", "issuer_of_patient_id": "HOSP", "patient_name": name}
        return schedule.create_item(db, None, patient, data)
    finally:
        db.dispose()


def perform(port: int, item: dict, final: str = "COMPLETED") -> str:
    """N-CREATE then N-SET COMPLETED (or DISCONTINUED) of the item; the MPPS UID."""
    uid, series_uid = generate_uid(), generate_uid()
    images = [Instance(CTImageStorage, generate_uid()) for _ in range(3)]
    step = ScheduledStep(
        item["study_instance_uid"],
        item["accession_number"],
        requested_procedure_id=item["requested_procedure_id"],
        sps_id=item["sps_id"],
    )
    assoc = associate(port, MPPS, ae_title="CT01")
    try:
        create = n_create(
            [step],
            modality="CT",
            station_ae_title="CT01",
            patient_name=item["patient"]["patient_name"],
            patient_id=item["patient"]["patient_id"],
        )
        assert assoc.send_n_create(create, MPPS, uid)[0].Status == 0
        if final:
            done = (
                n_set_completed([Series(series_uid, images)])
                if final == "COMPLETED"
                else n_set_discontinued([Series(series_uid, images)])
            )
            assert assoc.send_n_set(done, MPPS, uid)[0].Status == 0
    finally:
        assoc.release()
    return uid


def serve(live_server, url: str, port: int, *extra: str, fmt: str = "ORM^O01"):
    destinations = [
        {"name": "ris", "host": "127.0.0.1", "port": port, "format": fmt, "application": "RIS"},
        {"name": "off", "host": "127.0.0.1", "port": port, "enabled": False},
    ]
    return live_server(
        url,
        "--load-sample-data",
        "false",
        "--outbox-retry-min",
        "0.3",
        "--outbox-retry-max",
        "1",
        "--hl7-ack-timeout",
        "5",
        "--hl7-destinations",
        json.dumps(destinations),
        *extra,
    )


# --- live: a server, a modality, a receiver ----------------------------------------------


def test_live_orm_status_in_order_with_unicode_name(live_server, receiver, tmp_path):
    rx = receiver()
    url = f"sqlite:///{tmp_path / 'live.db'}"
    server = serve(live_server, url, rx.port)
    item = schedule_order(url)
    mpps_uid = perform(server.port, item)
    wait_for(lambda: len(rx.messages) >= 2)
    ip, cm = rx.messages[:2]
    for msg in (ip, cm):
        assert field(msg, "MSH.F9.R1.C1") == "ORM" and field(msg, "MSH.F9.R1.C2") == "O01"
        assert field(msg, "MSH.F3") == "WORKLIST-MPPS" and field(msg, "MSH.F5") == "RIS"
        assert field(msg, "MSH.F11") == "P" and field(msg, "MSH.F12") == "2.3.1"
        assert field(msg, "MSH.F18") == "UNICODE UTF-8"
        assert field(msg, "PID.F3.R1.C1") == "PID-H1" and field(msg, "PID.F3.R1.C4") == "HOSP"
        assert field(msg, "PID.F5.R1.C1") == "Dvořák" and field(msg, "PID.F5.R1.C2") == "Antonín"
        assert field(msg, "ORC.F1") == "SC"
        assert (field(msg, "ORC.F2"), field(msg, "ORC.F3")) == ("PL-1", "FI-1")
        assert (field(msg, "OBR.F2"), field(msg, "OBR.F3")) == ("PL-1", "FI-1")
        assert field(msg, "OBR.F4.R1.C1") == "CTHD" and field(msg, "OBR.F4.R1.C3") == "L"
        assert field(msg, "OBR.F18") == "ACC-H1" and field(msg, "OBR.F19") == "RP-H1"
        assert field(msg, "OBR.F20") == "SPS-H1" and field(msg, "OBR.F24") == "CT"
    assert [field(m, "ORC.F5") for m in (ip, cm)] == ["IP", "CM"]
    counts = {field(cm, f"OBX{n}.F3.R1.C1"): field(cm, f"OBX{n}.F5") for n in (1, 2)}
    assert counts == {"SERIES": "1", "INSTANCES": "3"}
    with pytest.raises(KeyError):
        ip.segments("OBX")  # IP: no counts yet
    rows = wait_for(
        lambda: (r := outbox_rows(url)) and all(x["state"] == "delivered" for x in r) and r
    )
    assert [(r["target"], r["event"], r["pps_status"]) for r in rows] == [
        ("hl7:ris", "SC^IP", "IN PROGRESS"),
        ("hl7:ris", "SC^CM", "COMPLETED"),
    ]
    assert {r["mpps_uid"] for r in rows} == {f"item:{item['id']}"}
    assert [field(m, "MSH.F10") for m in (ip, cm)] == [control_id(r["id"]) for r in rows]
    assert rows[1]["last_error"] == f"ORM^O01 AA {control_id(rows[1]['id'])}"
    table = outbox_cli(url, "list").stdout
    assert "hl7:ris" in table and "SC^CM" in table and f"item:{item['id']}" in table
    assert mpps_uid not in table  # no MPPS target configured: no MPPS rows
    assert "hl7:off" not in table


def test_live_omi_destination_gets_ipc(live_server, receiver, tmp_path):
    rx = receiver()
    url = f"sqlite:///{tmp_path / 'live.db'}"
    server = serve(live_server, url, rx.port, fmt="OMI^O23")
    item = schedule_order(url, 2, name="Smith^Anna")
    perform(server.port, item, final="DISCONTINUED")
    wait_for(lambda: len(rx.messages) >= 2)
    ip, dc = rx.messages[:2]
    assert [field(m, "ORC.F5") for m in (ip, dc)] == ["IP", "DC"]
    for msg in (ip, dc):
        assert whole(msg, "MSH", 9) == "OMI^O23^OMI_O23"
        assert field(msg, "MSH.F12") == "2.5.1"
        assert field(msg, "MSH.F18") == ""  # ASCII only
        assert field(msg, "TQ1.F7") == "20261201120000"
        assert field(msg, "IPC.F1") == "ACC-H2" and field(msg, "IPC.F2") == "RP-H2"
        assert field(msg, "IPC.F3") == item["study_instance_uid"]
        assert field(msg, "IPC.F4") == "SPS-H2" and field(msg, "IPC.F5") == "CT"
        assert field(msg, "IPC.F7") == "CTROOM1" and field(msg, "IPC.F9") == "CT01"
    assert [s[0][0] for s in dc] == ["MSH", "PID", "ORC", "TQ1", "OBR", "OBX", "OBX", "IPC"]


def test_live_ae_keeps_the_row_failed_and_holds_the_order_until_retried(
    live_server, receiver, tmp_path
):
    rx = receiver(code="AE")
    url = f"sqlite:///{tmp_path / 'live.db'}"
    server = serve(live_server, url, rx.port)
    item = schedule_order(url, 3)
    perform(server.port, item)
    rows = wait_for(lambda: (r := outbox_rows(url)) and r[0]["state"] == "failed" and r)
    assert [r["pps_status"] for r in rows] == ["IN PROGRESS", "COMPLETED"]
    error = rows[0]["last_error"]
    assert error.startswith(f"AE {control_id(rows[0]['id'])}: Unknown placer order")
    assert "204" in error and "Unknown key identifier" in error
    time.sleep(1.5)  # several backoff periods: a failed row is not retried by itself
    rows = outbox_rows(url)
    assert [(r["state"], r["attempts"]) for r in rows] == [("failed", 1), ("pending", 0)]
    assert len(rx.messages) == 1  # CM waits behind the refused IP
    rx.code = "AA"
    done = outbox_cli(url, "retry", "--all-failed")
    assert done.returncode == 0 and "1 message(s) due again" in done.stdout
    wait_for(lambda: all(r["state"] == "delivered" for r in outbox_rows(url)))
    assert [field(m, "ORC.F5") for m in rx.messages] == ["IP", "IP", "CM"]
    assert field(rx.messages[1], "MSH.F10") == field(rx.messages[0], "MSH.F10")


def test_live_receiver_down_then_up_gets_ip_before_cm(live_server, receiver, tmp_path):
    port = free_port()
    url = f"sqlite:///{tmp_path / 'live.db'}"
    server = serve(live_server, url, port)
    item = schedule_order(url, 4)
    perform(server.port, item)
    wait_for(lambda: "hl7:ris" in server.log() and "retry in" in server.log())
    rows = outbox_rows(url)
    assert [r["state"] for r in rows] == ["pending", "pending"]
    assert rows[0]["attempts"] >= 1 and rows[1]["attempts"] == 0  # CM waits behind IP
    assert "Connection refused" in rows[0]["last_error"]
    rx = receiver(port)
    wait_for(lambda: all(r["state"] == "delivered" for r in outbox_rows(url)))
    assert [field(m, "ORC.F5") for m in rx.messages] == ["IP", "CM"]


# --- the service layer: what is queued, for whom ------------------------------------------


def test_only_items_from_orders_get_status_rows_and_target_kinds_stay_apart(db):
    targets = ["forward:peer", "hl7:ris", "hl7:pacsris"]
    assert mpps_targets(targets) == ["forward:peer"]
    assert status_targets(targets) == ["hl7:ris", "hl7:pacsris"]
    ordered = schedule.create_item(
        db, None, {"patient_id": "P1"}, {"accession_number": "A1", "placer_order_number": "PL1"}
    )
    manual = schedule.create_item(db, None, {"patient_id": "P2"}, {"accession_number": "A2"})
    for n, item in enumerate((ordered, manual)):
        steps = [ScheduledStep(item["study_instance_uid"], item["accession_number"])]
        ds = n_create(steps, modality="CT", station_ae_title="CT01")
        mpps.create(db, ds, f"9.{n}", targets=targets)
        mpps.update(db, f"9.{n}", n_set_completed([Series("9.9.{n}")]), targets=targets)
    with db.read() as s:
        rows = [
            (r.target, r.mpps_uid, r.event, r.pps_status)
            for r in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        ]
    key = f"item:{ordered['id']}"
    assert [r for r in rows if r[0].startswith("hl7:")] == [
        ("hl7:ris", key, "SC^IP", "IN PROGRESS"),
        ("hl7:pacsris", key, "SC^IP", "IN PROGRESS"),
        ("hl7:ris", key, "SC^CM", "COMPLETED"),
        ("hl7:pacsris", key, "SC^CM", "COMPLETED"),
    ]
    assert [r for r in rows if r[0] == "forward:peer"] == [
        ("forward:peer", "9.0", "N-CREATE", "IN PROGRESS"),
        ("forward:peer", "9.0", "N-SET", "COMPLETED"),
        ("forward:peer", "9.1", "N-CREATE", "IN PROGRESS"),
        ("forward:peer", "9.1", "N-SET", "COMPLETED"),
    ]
    assert len(rows) == 8


def test_an_unchanged_status_queues_nothing(db):
    item = schedule.create_item(
        db, None, {"patient_id": "P3"}, {"accession_number": "A3", "filler_order_number": "F3"}
    )
    steps = [ScheduledStep(item["study_instance_uid"], "A3")]
    mpps.create(
        db, n_create(steps, modality="CT", station_ae_title="CT01"), "8.1", targets=["hl7:r"]
    )
    # a second step of the same item while the first runs: still IN PROGRESS, no message
    mpps.create(
        db, n_create(steps, modality="CT", station_ae_title="CT01"), "8.2", targets=["hl7:r"]
    )
    assert [(m["event"], m["mpps_uid"]) for m in list_messages(db)] == [
        ("SC^IP", f"item:{item['id']}")
    ]


class Refusing:
    """A status target that refuses what it is told to (the worker's rule, not MLLP)."""

    name, supersede, hold_after_failure = "hl7:t", False, True

    def __init__(self):
        self.refuse: set[str] = set()
        self.delivered: list[str] = []

    def deliver(self, message):
        if message.pps_status in self.refuse:
            raise Failed("AE")
        self.delivered.append(message.pps_status)
        return None


def test_a_failed_status_holds_the_later_states_of_its_order_only(db):
    with db.write() as s:
        for key in ("item:1", "item:2"):
            enqueue(s, ["hl7:t"], key, "SC", "IN PROGRESS", b"{}")
            enqueue(s, ["hl7:t"], key, "SC", "COMPLETED", b"{}")
    target = Refusing()
    target.refuse = {"IN PROGRESS"}
    w = OutboxWorker(db, Config(), {target.name: target})
    while w.run_once():
        pass
    assert target.delivered == []  # both IP refused, both CM held
    assert [(m["mpps_uid"], m["state"]) for m in reversed(list_messages(db))] == [
        ("item:1", "failed"),
        ("item:1", "pending"),
        ("item:2", "failed"),
        ("item:2", "pending"),
    ]
    target.refuse = set()
    first = min(m["id"] for m in list_messages(db) if m["mpps_uid"] == "item:1")
    assert retry(db, [first]) == 1
    while w.run_once():
        pass
    assert target.delivered == ["IN PROGRESS", "COMPLETED"]  # item:2 still held


# --- the message builder and the ACK reader -------------------------------------------------

PAYLOAD = {
    "order_status": "CM",
    "queued_at": "20261201170000+0000",
    "patient": {
        "id": "P|1",
        "issuer": "HOSP&X",
        "name": "Dvořák^Antonín^^Dr^Jr",
        "birth_date": "19410908",
        "sex": "M",
    },
    "admission_id": "ADM^1",
    "placer_order_number": "PL~1",
    "filler_order_number": "FI\\1",
    "accession_number": "ACC1",
    "requested_procedure_id": "RP1",
    "requested_procedure_codes": [{"value": "CTHD", "scheme": "L", "meaning": "CT head"}],
    "study_instance_uid": "1.2.3",
    "sps_id": "SPS1",
    "sps_start": "20261201120000",
    "modality": "CT",
    "scheduled_station_ae_title": "CT01",
    "scheduled_station_name": "CTROOM1",
    "sps_location": "ROOM 1",
    "mpps": {
        "uid": "1.2.9",
        "start": "20261201120500",
        "end": "20261201121000",
        "series": 2,
        "instances": 30,
        "discontinuation_reason": None,
    },
}


def test_builder_escapes_every_separator_and_maps_the_fields():
    dest = HL7Destination("ris", "h", 1, application="RIS", facility="RAD")
    text, data = build_message(PAYLOAD, dest, "WLM7", "WORKLIST-MPPS", "SITE")
    assert data == text.encode("utf-8") and text.endswith("\r")
    msg = hl7.parse(data.decode("utf-8"))
    assert [s[0][0] for s in msg] == ["MSH", "PID", "PV1", "ORC", "OBR", "OBX", "OBX"]
    assert str(msg.segment("MSH")).startswith("MSH|^~\\&|WORKLIST-MPPS|SITE|RIS|RAD|")
    assert field(msg, "MSH.F10") == "WLM7" and field(msg, "MSH.F18") == "UNICODE UTF-8"
    assert whole(msg, "MSH", 9) == "ORM^O01" and field(msg, "MSH.F12") == "2.3.1"
    assert field(msg, "PID.F3.R1.C1") == "P|1" and field(msg, "PID.F3.R1.C4") == "HOSP&X"
    # DICOM PN family^given^middle^prefix^suffix -> XPN family^given^middle^suffix^prefix
    assert whole(msg, "PID", 5) == "Dvořák^Antonín^^Jr^Dr"
    assert field(msg, "PV1.F19") == "ADM^1"
    assert field(msg, "ORC.F2") == "PL~1" and field(msg, "ORC.F3") == "FI\\1"
    assert field(msg, "ORC.F5") == "CM" and field(msg, "ORC.F9") == "20261201170000+0000"
    assert field(msg, "OBR.F7") == "20261201120500" and field(msg, "OBR.F8") == "20261201121000"
    assert field(msg, "OBR.F25") == ""
    assert escape("a|b^c~d\\e&f\ng") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\X0A\\g"


def test_builder_ascii_message_has_no_msh18_and_omi_structure():
    payload = {**PAYLOAD, "order_status": "IP", "patient": {"id": "P1", "name": "Smith^Ann"}}
    dest = HL7Destination("ris", "h", 1, format="OMI^O23")
    text, data = build_message(payload, dest, "WLM8", "WORKLIST-MPPS")
    assert data == text.encode("ascii")
    msg = hl7.parse(text)
    assert [s[0][0] for s in msg] == ["MSH", "PID", "PV1", "ORC", "TQ1", "OBR", "IPC"]
    assert field(msg, "MSH.F18") == "" and field(msg, "MSH.F12") == "2.5.1"
    assert field(msg, "OBR.F8") == ""  # IP: no end
    assert field(msg, "IPC.F8") == "ROOM 1" and field(msg, "IPC.F9") == "CT01"
    version = HL7Destination("ris", "h", 1, version="2.4")
    assert whole(hl7.parse(build_message(payload, version, "W", "A")[0]), "MSH", 9) == (
        "ORM^O01^ORM_O01"
    )


def test_read_ack_codes():
    base = hl7.parse(build_message(PAYLOAD, HL7Destination("r", "h", 1), "WLM9", "A")[0])
    assert read_ack(str(base.create_ack("AA")).encode(), "WLM9") == "AA WLM9"
    ae = base.create_ack("AR")
    ae.segment("MSA").assign_field("Unsupported", 3)
    with pytest.raises(Failed, match="AR WLM9: Unsupported"):
        read_ack(str(ae).encode(), "WLM9")
    with pytest.raises(Retry, match="not 'WLM10'"):
        read_ack(str(base.create_ack("AA")).encode(), "WLM10")
    for garbage in (b"", b"garbage", b"MSH|^~\\&|X\rPID|1\r", b"MSH"):
        with pytest.raises(Retry):
            read_ack(garbage, "WLM9")


def test_a_silent_receiver_is_a_retry_not_a_hang(db):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        dest = HL7Destination("ris", "127.0.0.1", silent.getsockname()[1])
        cfg = Config(hl7_ack_timeout=0.5)
        target = HL7StatusTarget(dest, cfg)
        message = OutboxMessage(id=5, payload=json.dumps(PAYLOAD).encode())
        with pytest.raises(Retry, match=r"no ACK within 0\.5 s"):
            target.deliver(message)
    with pytest.raises(Failed, match="cannot build"):
        target.deliver(OutboxMessage(id=6, payload=b"not json"))
    assert OutboxWorker(db, cfg, {target.name: target}).targets == {"hl7:ris": target}
