"""The live DIMSE worklist service: bad input, database failure, cancel, restart."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian

from conftest import SAMPLE
from dicom_clients import echo, find, worklist_query
from worklist_mpps.config import Config
from worklist_mpps.context import AppContext
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.dimse.worklist import handle_find
from worklist_mpps.services.loader import load_file

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


query = worklist_query


@pytest.fixture
def server(live_server):
    return live_server(None, "--sample-file", str(SAMPLE))


def test_echo_and_find(server):
    assert echo(server.port) == 0x0000
    statuses, found = find(server.port, query(AccessionNumber="A10001"))
    assert [s.Status for s in statuses] == [0xFF00, 0x0000]
    assert found[0].AccessionNumber == "A10001"


def test_identifier_that_does_not_fit_gets_a900_and_the_server_goes_on(server):
    bad = query()
    bad.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
    statuses, found = find(server.port, bad)
    assert found == []
    assert statuses[-1].Status == 0xA900
    assert "ScheduledProcedureStepSequence" in statuses[-1].ErrorComment
    bad = query()
    bad.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "20261399"
    statuses, _ = find(server.port, bad)
    assert statuses[-1].Status == 0xA900 and "invalid date" in statuses[-1].ErrorComment
    assert echo(server.port) == 0x0000
    statuses, found = find(server.port, query(AccessionNumber="A10002"))
    assert statuses[-1].Status == 0x0000 and len(found) == 1


def test_unsupported_optional_key_gives_ff01_and_an_empty_value(server):
    ds = query(AccessionNumber="A10003")
    ds.PatientMotherBirthName = ""
    statuses, found = find(server.port, ds)
    assert [s.Status for s in statuses] == [0xFF01, 0x0000]
    assert "PatientMotherBirthName" in found[0] and not found[0].PatientMotherBirthName


def test_database_failure_gets_c001_and_loses_nothing(live_server, tmp_path):
    path = tmp_path / "fail.db"
    server = live_server(f"sqlite:///{path}", "--sample-file", str(SAMPLE))
    _, before = find(server.port, query())
    with sqlite3.connect(path) as conn:  # the table vanishes under the server
        conn.execute("ALTER TABLE worklist_items RENAME TO worklist_items_hidden")
    statuses, found = find(server.port, query())
    assert found == [] and len(statuses) == 1
    assert statuses[0].Status == 0xC001
    assert "Database error" in statuses[0].ErrorComment
    assert echo(server.port) == 0x0000
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE worklist_items_hidden RENAME TO worklist_items")
    _, after = find(server.port, query())
    assert sorted(d.StudyInstanceUID for d in after) == sorted(d.StudyInstanceUID for d in before)
    assert "0xC001 database error" in server.log()


def test_restart_returns_the_same_study_instance_uids(live_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    server = live_server(url, "--sample-file", str(SAMPLE))
    _, first = find(server.port, query())
    server.stop()
    server = live_server(url, "--sample-file", str(SAMPLE))
    _, second = find(server.port, query())
    assert len(first) >= 20
    uids = lambda found: {d.AccessionNumber: d.StudyInstanceUID for d in found}  # noqa: E731
    assert uids(first) == uids(second)


def test_calling_ae_filter(live_server):
    server = live_server(
        None, "--sample-file", str(SAMPLE), "--worklist-filter-by-calling-ae", "true"
    )
    _, found = find(server.port, query(), ae_title="CT01")
    assert found and all(d.ScheduledProcedureStepSequence[0].Modality == "CT" for d in found)
    _, none = find(server.port, query(), ae_title="NOSUCHSTATION")
    assert none == []


def test_c_cancel_stops_the_response_stream(tmp_path):
    """The handler checks for C-CANCEL between responses (PS3.4 C.4.1.2.3)."""
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    migrate.upgrade(db.engine)
    load_file(db, SAMPLE)
    sent = []

    class Event(SimpleNamespace):
        @property
        def is_cancelled(self) -> bool:
            return len(sent) >= 3

    requestor = SimpleNamespace(ae_title="SCU", address="127.0.0.1", port=1)
    # big endian: pynetdicom's own response path, the one that yields each response
    context = SimpleNamespace(context_id=1, transfer_syntax=ExplicitVRBigEndian)
    event = Event(identifier=query(), assoc=SimpleNamespace(requestor=requestor), context=context)
    for status, ds in handle_find(event, AppContext(Config(), db)):
        sent.append((status, ds))
    assert [s for s, _ in sent][:3] == [0xFF00] * 3
    assert sent[-1] == (0xFE00, None) and len(sent) == 4
    db.dispose()


def test_ping_command_for_healthchecks(server, tmp_path):
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "ping", "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "answers C-ECHO" in ok.stdout
    from conftest import free_port

    down = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "ping", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "cannot connect" in down.stderr
