"""Access control: known devices, their addresses and services; the called AE title."""

from __future__ import annotations

import json
import subprocess

import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from conftest import SAMPLE
from dicom_clients import associate, find, worklist_query
from worklist_mpps.client.messages import ScheduledStep, n_create
from worklist_mpps.client.scu import Association, Peer, Rejected
from worklist_mpps.config import ConfigError, load_config

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

DEVICES = [
    {"ae_title": "CT01", "hosts": ["127.0.0.1"]},
    {"ae_title": "RIS1", "hosts": ["127.0.0.0/8"], "services": ["worklist"]},
    {"ae_title": "US01", "hosts": ["10.1.2.0/24"]},
    {"ae_title": "MPPSONLY", "services": ["mpps"]},
]


@pytest.fixture
def guarded(live_server):
    return live_server(
        None, "--sample-file", str(SAMPLE), env={"WORKLIST_MPPS_DEVICES": json.dumps(DEVICES)}
    )


def rejection(port: int, calling: str, called: str = "WORKLISTS") -> str:
    with pytest.raises(Rejected) as exc, Association(Peer("127.0.0.1", port, called), calling, 10):
        pass
    return exc.value.message


def test_unknown_calling_ae_title_is_rejected(guarded):
    assert "Calling AE title not recognised" in rejection(guarded.port, "NOPE")
    proc = subprocess.run(
        ["echoscu", "-aet", "NOPE", "-aec", "WORKLISTS", "127.0.0.1", str(guarded.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "Rejected" in proc.stdout + proc.stderr
    assert "Association rejected from NOPE@127.0.0.1: unknown calling AE title" in guarded.log()


def test_known_title_from_the_wrong_host_is_rejected(guarded):
    assert "Calling AE title not recognised" in rejection(guarded.port, "US01")
    assert "US01@127.0.0.1: not allowed from here" in guarded.log()


def test_called_ae_title_must_be_the_servers_with_a_device_list(guarded):
    assert "Called AE title not recognised" in rejection(guarded.port, "CT01", "ANY-SCP")


def test_allowed_devices_get_their_services_only(guarded):
    statuses, found = find(guarded.port, worklist_query(AccessionNumber="A10001"), ae_title="CT01")
    assert statuses[-1].Status == 0 and len(found) == 1
    statuses, found = find(guarded.port, worklist_query(AccessionNumber="A10001"), ae_title="RIS1")
    assert statuses[-1].Status == 0 and len(found) == 1
    statuses, found = find(guarded.port, worklist_query(), ae_title="MPPSONLY")
    assert statuses[-1].Status == 0x0124 and found == []

    create = n_create([ScheduledStep("1.2.3")], modality="CT", station_ae_title="X")
    for title, expected in (("CT01", 0x0000), ("RIS1", 0x0124), ("MPPSONLY", 0x0000)):
        assoc = associate(guarded.port, MPPS, ae_title=title)
        status = assoc.send_n_create(create, MPPS, generate_uid())[0]
        assoc.release()
        assert status.Status == expected, title
        if expected:
            assert status.ErrorComment == "Not authorized for MPPS"
    # a C-ECHO needs a known title too
    assert "Calling AE title not recognised" in rejection(guarded.port, "TESTSCU")


def test_without_a_device_list_any_caller_is_accepted(live_server):
    server = live_server(None, "--sample-file", str(SAMPLE))
    statuses, _ = find(server.port, worklist_query(), ae_title="ANYONE")
    assert statuses[-1].Status == 0
    with Association(Peer("127.0.0.1", server.port, "ANY-SCP"), "WHOEVER", 10):
        pass


@pytest.mark.parametrize(
    "value,names",
    [
        ('[{"hosts": ["127.0.0.1"]}]', "ae_title"),
        ('[{"ae_title": "A", "hosts": ["not-an-ip"]}]', "not-an-ip"),
        ('[{"ae_title": "A", "services": ["storage"]}]', "storage"),
        ('[{"ae_title": "A"}, {"ae_title": "A"}]', "unique"),
        ('[{"ae_title": "A", "colour": 1}]', "colour"),
    ],
)
def test_bad_device_lists_are_named(value, names):
    with pytest.raises(ConfigError) as exc:
        load_config(env={"WORKLIST_MPPS_DEVICES": value})
    assert "devices" in str(exc.value) and names in str(exc.value)
