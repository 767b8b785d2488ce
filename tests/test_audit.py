"""Audit trail: every worklist and MPPS change records who, what and when."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
import requests
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from conftest import SAMPLE
from dicom_clients import associate, find, worklist_query
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    n_create,
    n_set_completed,
    n_set_progress,
)

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


def audit(server, *args) -> list[dict]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            "audit",
            "--json",
            "--database-url",
            server.database_url,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_dimse_and_http_changes_are_audited(live_server):
    server = live_server(
        None, "--sample-file", str(SAMPLE), "--http-username", "alice", "--http-password", "pw"
    )
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    load = audit(server, "--action", "worklist.load")
    assert load and load[0]["detail"]["created"] == 30 and load[0]["channel"] == "CLI"

    [item] = find(server.port, worklist_query(AccessionNumber="A10001"))[1]
    uid = generate_uid()
    assoc = associate(server.port, MPPS, ae_title="CT01")
    step = ScheduledStep(str(item.StudyInstanceUID), "A10001", sps_id="S10001")
    assert (
        assoc.send_n_create(n_create([step], modality="CT", station_ae_title="CT01"), MPPS, uid)[
            0
        ].Status
        == 0
    )
    series = Series(generate_uid(), [Instance("1.2.840.10008.5.1.4.1.1.2", generate_uid())])
    assert assoc.send_n_set(n_set_progress([series]), MPPS, uid)[0].Status == 0
    assert assoc.send_n_set(n_set_completed([series]), MPPS, uid)[0].Status == 0
    refused = assoc.send_n_set(n_set_completed([series]), MPPS, uid)[0]
    assert refused.Status == 0x0110  # nothing changed: nothing audited
    local_port = assoc.local["port"]
    assoc.release()

    events = list(reversed(audit(server, "--target", uid)))
    assert [(e["action"], e["channel"], e["actor"]) for e in events] == [
        ("mpps.create", "DIMSE", "CT01"),
        ("mpps.update", "DIMSE", "CT01"),
        ("mpps.update", "DIMSE", "CT01"),
    ]
    assert all(e["address"] == f"127.0.0.1:{local_port}" for e in events)
    assert events[0]["detail"]["worklist_items"] == {"A10001/S10001": "IN PROGRESS"}
    assert (events[2]["detail"]["from"], events[2]["detail"]["to"]) == ("IN PROGRESS", "COMPLETED")
    assert "PerformedSeriesSequence" in events[2]["detail"]["applied"]
    assert all(dt.datetime.fromisoformat(e["at"]) >= started for e in events)

    api = requests.Session()
    api.auth = ("alice", "pw")
    created = api.post(
        f"{server.http_url}/api/worklist-items",
        timeout=15,
        json={"accession_number": "AUD1", "patient": {"patient_id": "PAUD"}},
    ).json()
    assert (
        api.patch(
            f"{server.http_url}/api/worklist-items/{created['id']}",
            timeout=15,
            json={"modality": "MR"},
        ).status_code
        == 200
    )
    assert (
        api.delete(f"{server.http_url}/api/worklist-items/{created['id']}", timeout=15).status_code
        == 200
    )
    web = list(reversed(audit(server, "--actor", "alice")))
    assert [(e["action"], e["target"]) for e in web] == [
        ("item.create", f"item:{created['id']}"),
        ("item.update", f"item:{created['id']}"),
        ("item.cancel", f"item:{created['id']}"),
    ]
    assert web[0]["detail"]["study_instance_uid"] == created["study_instance_uid"]
    assert web[1]["detail"]["fields"] == ["modality"]
    assert all(e["channel"] == "HTTP" and e["address"].startswith("127.0.0.1:") for e in web)

    assert audit(server, "--since", "2999-01-01") == []
    table = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "audit", "--database-url", server.database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "mpps.create" in table.stdout and "alice" in table.stdout


def test_a_refused_change_leaves_no_audit_event(live_server):
    server = live_server(None, "--sample-file", str(SAMPLE))
    assoc = associate(server.port, MPPS, ae_title="CT02")
    bad = n_create(
        [ScheduledStep("1.2.3")], modality="CT", station_ae_title="CT02", status="COMPLETED"
    )
    assert assoc.send_n_create(bad, MPPS, generate_uid())[0].Status == 0x0106
    assoc.release()
    assert audit(server, "--actor", "CT02") == []
