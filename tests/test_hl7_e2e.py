"""Issue 14 end to end, with real peers only: python-hl7's `mllp_send` sends an OMI^O23
order to the live listener; DCMTK `findscu` sees the item with the mapped attributes;
an MPPS from `dicom-mpps` (pynetdicom) starts and completes it; python-hl7's MLLP server,
standing in for the RIS, receives the status messages (ORC-1 SC, ORC-5 IP then CM) and
acknowledges them; `worklist-mpps outbox list` shows them delivered."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import hl7
import pytest
from pydicom.uid import generate_uid

from conftest import free_port, require_tool
from dicom_clients import dicom_mpps, findscu_files
from hl7_clients import Receiver, mllp_send, wait_for

STUDY_UID = "1.2.826.0.1.3680043.10.543.14.1"


def omi(today: str) -> str:
    segments = [
        "MSH|^~\\&|RIS|HOSP|WORKLIST-MPPS|HOSP|20261201083000||OMI^O23^OMI_O23|E2E0001|P|2.5.1"
        "||||||UNICODE UTF-8",
        "PID|1||E2E-PID-1^^^HOSP^MR||Dvořák^Antonín||19650312|M",
        "PV1|1|O|RAD^^^HOSP",
        "ORC|NW|PLC-E2E-1^RIS|FIL-E2E-1^DSS||SC",
        f"TQ1|1||||||{today}0930",
        "OBR|1|PLC-E2E-1^RIS|FIL-E2E-1^DSS|CTHEAD^CT Head^L",
        f"IPC|ACC-E2E-1|RP-E2E-1|{STUDY_UID}|SPS-E2E-1|CT||||MODALITY1",
    ]
    return "\r".join(segments) + "\r"


@pytest.fixture
def ris():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def test_order_in_status_out(live_server, ris, tmp_path):
    require_tool("findscu")
    hl7_port = free_port()
    destinations = [{"name": "ris", "host": "127.0.0.1", "port": ris.port}]
    server = live_server(
        None,
        *("--hl7-enabled", "true", "--hl7-port", str(hl7_port)),
        *("--hl7-destinations", json.dumps(destinations), "--outbox-retry-min", "0.2"),
    )
    today = dt.date.today().strftime("%Y%m%d")

    order = tmp_path / "omi.hl7"
    order.write_bytes(omi(today).encode("utf-8"))
    ack = mllp_send(hl7_port, order).decode("utf-8")
    assert "MSA|AA|E2E0001" in ack, ack

    found = findscu_files(
        server.port,
        tmp_path / "find",
        "AccessionNumber=ACC-E2E-1",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "StudyInstanceUID",
        "RequestedProcedureID",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        "(0040,0100)[0].Modality",
        "(0040,0100)[0].ScheduledStationAETitle",
        "(0040,0100)[0].ScheduledProcedureStepID",
        "(0040,0100)[0].ScheduledProcedureStepStartDate",
        "(0040,0100)[0].ScheduledProcedureStepStartTime",
    )
    assert len(found) == 1
    item = found[0]
    assert str(item.PatientName) == "Dvořák^Antonín"
    assert (item.PatientID, item.IssuerOfPatientID) == ("E2E-PID-1", "HOSP")
    assert item.StudyInstanceUID == STUDY_UID
    assert item.RequestedProcedureID == "RP-E2E-1"
    assert item.PlacerOrderNumberImagingServiceRequest == "PLC-E2E-1"
    assert item.FillerOrderNumberImagingServiceRequest == "FIL-E2E-1"
    step = item.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle) == ("CT", "MODALITY1")
    assert step.ScheduledProcedureStepID == "SPS-E2E-1"
    assert step.ScheduledProcedureStepStartDate == today
    assert step.ScheduledProcedureStepStartTime.startswith("0930")

    url = f"pacs://WORKLISTS@127.0.0.1:{server.port}"
    mpps_uid = dicom_mpps(
        "create", url, "--aet", "MODALITY1", "--from-worklist", "--accession", "ACC-E2E-1"
    )
    started = wait_for(lambda: len(ris.messages) >= 1)
    assert started and len(ris.messages) == 1, server.log()
    series, image = generate_uid(), generate_uid()
    dicom_mpps(
        "update",
        url,
        *("--aet", "MODALITY1", "--mpps-uid", mpps_uid, "--status", "COMPLETED"),
        *("--study-uid", STUDY_UID, "--series-uid", series, "--image-uid", image),
    )
    wait_for(lambda: len(ris.messages) >= 2)
    messages = ris.messages
    assert len(messages) == 2, server.log()
    for message, status in zip(messages, ("IP", "CM"), strict=True):
        assert str(message.segment("MSH")[9]).startswith(("ORM^O01", "OMI^O23"))
        orc = message.segment("ORC")
        assert (str(orc[1]), str(orc[5])) == ("SC", status)
        assert str(orc[2]).split("^")[0] == "PLC-E2E-1"
        assert str(message.segment("PID")[3]).split("^")[0] == "E2E-PID-1"
        assert "Dvořák" in str(message.segment("PID")[5])

    done = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "outbox", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"WORKLIST_MPPS_DATABASE_URL": server.database_url, "PATH": "/usr/bin:/bin"},
    )
    rows = [r for r in json.loads(done.stdout) if r["target"] == "hl7:ris"]
    assert sorted(r["pps_status"] for r in rows) == ["COMPLETED", "IN PROGRESS"]
    assert all(r["state"] == "delivered" for r in rows), rows
    assert isinstance(messages[0], hl7.Message)
