"""The MLLP listener of the HL7 order feed, against a live ``serve``: a real sender
(python-hl7's ``mllp_send``) schedules an order that DCMTK findscu then sees, several
senders at once, the README's command, ``hl7 list|show``, a graceful stop.

Hostile input and crash safety: tests/test_hl7_hostile.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from conftest import ROOT
from dicom_clients import findscu_files
from hl7_clients import (
    MLLPClient,
    ack_code,
    acked_control,
    error_code,
    mllp_send,
    order,
    wait_for,
)

# the README, whose "Sending an order" shows the mllp_send command
README = ROOT / "README.md"
SAMPLE_ORDER = ROOT / "sample_data" / "orm_o01.hl7"
HL7 = ("--hl7-enabled", "true")
# no pytest-timeout here: every wait is bounded (socket and subprocess timeouts, joins)


def cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worklist_mpps", *args, "--database-url", server.database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def items(server, **query: str) -> list[dict]:
    """Worklist items through the HTTP API (every status)."""
    url = f"{server.http_url}/api/worklist-items?limit=500&" + "&".join(
        f"{k}={v}" for k, v in query.items()
    )
    with urllib.request.urlopen(url, timeout=10) as rsp:
        return json.load(rsp)["items"]


def sample_control_id() -> str:
    msh = SAMPLE_ORDER.read_bytes().split(b"\r")[0].decode().split("|")
    return msh[9]


@pytest.mark.dimse
def test_mllp_send_order_reaches_findscu(live_server, tmp_path):
    """The sample v2.3.1 ORM^O01 (with ZDS) sent by mllp_send: AA, then the item is in
    DCMTK findscu's answer with the mapped attributes (the station from OBR-21 by the
    site's hl7_field_map)."""
    server = live_server(None, *HL7, "--hl7-field-map", '{"scheduled_station_ae_title": "OBR-21"}')
    output = mllp_send(server.hl7_port, SAMPLE_ORDER)
    assert output.startswith(b"\x0b") and ack_code(output) == "AA", output
    assert acked_control(output) == sample_control_id() == "MSG00001"
    sps = "(0040,0100)[0]."
    [ds] = findscu_files(
        server.port,
        tmp_path / "find",
        "PatientID=PAT1001",
        "PatientName",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureID",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        sps + "Modality",
        sps + "ScheduledStationAETitle",
        sps + "ScheduledProcedureStepID",
        sps + "ScheduledProcedureStepStartDate",
        sps + "ScheduledProcedureStepStartTime",
    )
    step = ds.ScheduledProcedureStepSequence[0]
    assert ds.PatientID == "PAT1001"
    assert str(ds.PatientName) == "Doe^Jane"
    assert ds.AccessionNumber == "ACC1001"
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1001"  # ZDS-1
    assert ds.RequestedProcedureID == "RP1001"
    assert ds.PlacerOrderNumberImagingServiceRequest == "PLC1001"
    assert ds.FillerOrderNumberImagingServiceRequest == "FIL1001"
    assert step.Modality == "CT"
    assert step.ScheduledStationAETitle == "CT01"
    assert step.ScheduledProcedureStepID == "SPS1001"
    assert step.ScheduledProcedureStepStartDate == "20261201"
    assert step.ScheduledProcedureStepStartTime.startswith("0930")
    # the connection's two log lines: opened, closed with its message count
    assert re.search(r"MLLP connection from 127\.0\.0\.1:\d+ closed .* 1 message", server.log())


def readme_mllp_send_command() -> str:
    """The README's mllp_send command line (in a sh block)."""
    [command] = re.findall(r"^\.venv/bin/mllp_send .*$", README.read_text(), re.M)
    return command


def test_readme_mllp_send_command_works(live_server):
    """The README's command, as written but for the port, from the project root: it
    prints the ACK the README shows, MSA|AA with the sample's MSH-10."""
    server = live_server(None, *HL7)
    command = readme_mllp_send_command()
    assert " --port 2575 localhost" in command and "sample_data/orm_o01.hl7" in command
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command.replace("2575", str(server.hl7_port))],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode("latin-1")
    expected = f"MSA|AA|{sample_control_id()}"
    assert re.search(rf"^{re.escape(expected)}$", out, re.M), out  # a line of its own
    assert re.search(rf"^{re.escape(expected)}$", README.read_text(), re.M)
    [item] = items(server, accession="ACC1001")
    assert item["patient"]["patient_id"] == "PAT1001"
    assert f"MLLP (HL7) on 127.0.0.1:{server.hl7_port}" in server.log()  # "listening on"


def test_concurrent_senders_all_acknowledged(live_server):
    """Six connections at once, ten orders each: every one AA, every item there once."""
    server = live_server(None, *HL7)
    answers: dict[str, bytes] = {}
    failures: list[BaseException] = []

    def sender(k: int) -> None:
        try:
            with MLLPClient(server.hl7_port) as client:
                for i in range(10):
                    n = f"{k}{i:02d}"
                    answers[n] = client.send(order(n))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert len(answers) == 60
    assert {n: ack_code(a) for n, a in answers.items()} == dict.fromkeys(answers, "AA")
    assert all(acked_control(a) == f"MSG{n}" for n, a in answers.items())
    found = [i["accession_number"] for i in items(server, modality="CT")]
    ours = sorted(a for a in found if a.startswith("ACC"))  # beside the sample worklist
    assert ours == sorted(f"ACC{n}" for n in answers)


def test_hl7_list_and_show(live_server):
    """hl7 list shows AA, AE and AR rows with their reasons; --ack filters; hl7 show
    prints the message a segment a line, its ACK and the item; --raw the bytes."""
    server = live_server(None, *HL7)
    with MLLPClient(server.hl7_port) as client:
        assert ack_code(client.send(order(1))) == "AA"
        assert error_code(client.send(order(2, patient_id=""))) == "101"
    with MLLPClient(server.hl7_port) as client:
        client.sock.sendall(b"not HL7 at all\r\n")
        assert ack_code(client.read_block()) == "AR"
    listed = cli(server, "hl7", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "RECEIVED"] and len(lines) == 4
    ar, ae, aa = lines[1:]
    assert " AR " in ar and "no MLLP start block (0x0B)" in ar
    assert " AE " in ae and "MSG2" in ae and "PID-3" in ae
    assert " AA " in aa and "MSG1" in aa and "RIS/HOSPITAL" in aa and "PAT1" in aa
    only_ae = cli(server, "hl7", "list", "--ack", "AE", "--json")
    rows = json.loads(only_ae.stdout)
    assert [(r["control_id"], r["ack_code"]) for r in rows] == [("MSG2", "AE")]
    aa_id = aa.split()[0]
    shown = cli(server, "hl7", "show", aa_id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert re.search(r"^ack_code +AA$", out, re.M) and re.search(
        r"^address +127\.0\.0\.1", out, re.M
    )
    assert re.search(r"^items +\d+ \(accession ACC1, SCHEDULED\)$", out, re.M), out
    assert re.search(r"^MSH\|.*\|MSG1\|", out, re.M) and re.search(r"^PID\|1\|\|PAT1", out, re.M)
    assert re.search(r"^OBR\|1\|PLC1", out, re.M) and re.search(r"^MSA\|AA\|MSG1$", out, re.M)
    raw = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            "hl7",
            "show",
            aa_id,
            "--raw",
            "--database-url",
            server.database_url,
        ],
        capture_output=True,
        timeout=60,
    )
    assert raw.stdout == order(1)
    missing = cli(server, "hl7", "show", "9999")
    assert missing.returncode == 1 and "no HL7 message 9999" in missing.stderr


def test_sigterm_acknowledges_what_it_committed(live_server):
    """SIGTERM while a sender sends orders one after the other: the server stops
    (exit 0), and the orders it committed are exactly those the sender got AA for: the
    message in progress is committed and acknowledged, or neither."""
    server = live_server(None, *HL7)
    acked: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        try:
            with MLLPClient(server.hl7_port) as client:
                for n in range(1, 2000):
                    if stop.is_set():
                        return
                    answer = client.send(order(n))
                    if not answer:
                        return
                    assert ack_code(answer) == "AA", answer
                    acked.append(f"MSG{n}")
        except OSError:
            return

    thread = threading.Thread(target=sender)
    thread.start()
    assert wait_for(lambda: len(acked) >= 20, 30)
    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(30) == 0
    stop.set()
    thread.join(30)
    assert "server stopping" in server.log()
    listed = cli(server, "hl7", "list", "--json", "--limit", "5000")
    committed = [r["control_id"] for r in json.loads(listed.stdout) if r["ack_code"] == "AA"]
    assert sorted(committed) == sorted(acked)


def test_mllp_port_in_use_is_exit_7(live_server, tmp_path):
    """A bind failure of the MLLP port: one line naming it, exit code 7."""
    server = live_server(None, *HL7)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            "serve",
            "--port",
            "0",
            "--http-enabled",
            "false",
            "--database-url",
            f"sqlite:///{tmp_path / 'other.db'}",
            "--hl7-enabled",
            "true",
            "--hl7-port",
            str(server.hl7_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 7, proc.stderr
    assert f"MLLP port 127.0.0.1:{server.hl7_port} cannot be bound" in proc.stderr
    assert "Traceback" not in proc.stderr
