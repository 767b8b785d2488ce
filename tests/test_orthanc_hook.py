"""The Orthanc hook against a real Orthanc: state, completeness, outages."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from conftest import wait_for
from dicom_clients import associate
from orthanc_server import PASSWORD, USER, Orthanc, new_uids
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    n_create,
    n_set_completed,
)

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def hooked(live_server, orthanc, tmp_path):
    """A worklist-mpps server notifying the test Orthanc (short timeouts)."""
    url = f"sqlite:///{tmp_path / 'hook.db'}"
    server = live_server(
        url,
        "--load-sample-data",
        "false",
        "--orthanc-url",
        orthanc.url,
        "--orthanc-username",
        USER,
        "--completeness-timeout",
        # long enough that a loaded CI machine still sees "checking" between the late
        # images (test_late_images...), short enough for the "incomplete" test
        "12",
        "--outbox-retry-min",
        "0.3",
        "--outbox-retry-max",
        "1",
        env={"WORKLIST_MPPS_ORTHANC_PASSWORD": PASSWORD},
    )
    server.url = url
    return server


def send(
    port: int, uid: str, study: str, series: list[Series] | None = None, complete: bool = True
) -> None:
    assoc = associate(port, MPPS, ae_title="CT01")
    try:
        status, _ = assoc.send_n_create(
            n_create(
                [ScheduledStep(study, "ACC-H")],
                modality="CT",
                station_ae_title="CT01",
                patient_id="PID-T",
            ),
            MPPS,
            uid,
        )
        assert status.Status == 0
        if complete:
            status = assoc.send_n_set(n_set_completed(series or []), MPPS, uid)[0]
            assert status.Status == 0, status
    finally:
        assoc.release()


def cli(server, *args) -> list | dict:
    proc = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", *args, "--json", "--database-url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_state_and_completeness_reach_the_orthanc_study(hooked, orthanc):
    study, s1, s2 = new_uids(3)
    images = new_uids(3)
    orthanc.upload(study, s1, images[0])
    orthanc.upload(study, s1, images[1])
    orthanc.upload(study, s2, images[2])
    uid = generate_uid()
    send(hooked.port, uid, study, complete=False)
    assert wait_for(lambda: orthanc.metadata(study).get("MppsStatus")) == "IN PROGRESS"
    assert orthanc.metadata(study)["MppsInstanceUID"] == uid

    assoc = associate(hooked.port, MPPS, ae_title="CT01")
    series = [
        Series(s1, [Instance(CTImageStorage, images[0]), Instance(CTImageStorage, images[1])]),
        Series(s2, [Instance(CTImageStorage, images[2])]),
    ]
    assert assoc.send_n_set(n_set_completed(series), MPPS, uid)[0].Status == 0
    assoc.release()
    meta = wait_for(
        lambda: (m := orthanc.metadata(study)).get("MppsCompleteness") == "complete" and m
    )
    assert meta["MppsStatus"] == "COMPLETED"
    assert (meta["MppsExpected"], meta["MppsReceived"], json.loads(meta["MppsMissing"])) == (
        "3",
        "3",
        [],
    )
    shown = cli(hooked, "mpps", "show", uid)
    assert (shown["completeness"], shown["received"], shown["missing"]) == ("complete", 3, [])
    assert PASSWORD not in hooked.log(), "credentials are never logged"


def test_a_missing_image_is_reported_missing(hooked, orthanc):
    study, series_uid = new_uids(2)
    present, absent = new_uids(2)
    orthanc.upload(study, series_uid, present)
    uid = generate_uid()
    send(
        hooked.port,
        uid,
        study,
        [Series(series_uid, [Instance(CTImageStorage, present), Instance(CTImageStorage, absent)])],
    )
    assert wait_for(lambda: orthanc.metadata(study).get("MppsCompleteness")) == "checking"
    meta = wait_for(
        lambda: (m := orthanc.metadata(study)).get("MppsCompleteness") == "incomplete" and m,
        timeout=40,
    )
    assert (meta["MppsExpected"], meta["MppsReceived"]) == ("2", "1")
    assert json.loads(meta["MppsMissing"]) == [absent]
    shown = cli(hooked, "mpps", "show", uid)
    assert (shown["completeness"], shown["missing"]) == ("incomplete", [absent])
    rows = [r for r in cli(hooked, "outbox", "list") if r["mpps_uid"] == uid]
    assert {r["state"] for r in rows} <= {"delivered", "superseded"}


def test_late_images_and_late_study_are_waited_for(hooked, orthanc):
    study, series_uid = new_uids(2)
    first, second = new_uids(2)
    uid = generate_uid()
    send(
        hooked.port,
        uid,
        study,
        [Series(series_uid, [Instance(CTImageStorage, first), Instance(CTImageStorage, second)])],
    )
    time.sleep(1.5)  # the study is not in Orthanc yet: the notification waits
    pending = [
        r for r in cli(hooked, "outbox", "list") if r["mpps_uid"] == uid and r["state"] == "pending"
    ]
    assert pending and "not in Orthanc yet" in (pending[0]["last_error"] or "")
    orthanc.upload(study, series_uid, first)
    assert wait_for(lambda: orthanc.metadata(study).get("MppsCompleteness")) == "checking"
    orthanc.upload(study, series_uid, second)
    assert wait_for(lambda: orthanc.metadata(study).get("MppsCompleteness") == "complete")


def test_orthanc_down_delays_and_loses_nothing(hooked, orthanc):
    """Orthanc stopped while MPPS arrive: every notification delivered, in order, once."""
    cases = []
    for _ in range(3):
        study, series_uid, image = new_uids(3)
        orthanc.upload(study, series_uid, image)
        cases.append(
            (generate_uid(), study, [Series(series_uid, [Instance(CTImageStorage, image)])])
        )
    orthanc.stop()
    started = time.monotonic()
    for uid, study, series in cases:
        send(hooked.port, uid, study, series)  # every DIMSE answer is a success
    assert time.monotonic() - started < 20, "the hook must not delay DIMSE replies"
    time.sleep(2)
    waiting = [r for r in cli(hooked, "outbox", "list") if r["state"] == "pending"]
    assert waiting and all(
        "unreachable" in (r["last_error"] or "") for r in waiting if r["attempts"]
    )
    orthanc.start()
    for uid, study, _ in cases:
        meta = wait_for(
            lambda s=study: (m := orthanc.metadata(s)).get("MppsCompleteness") == "complete" and m,
            timeout=45,
        )
        assert (meta["MppsStatus"], meta["MppsInstanceUID"]) == ("COMPLETED", uid)
    rows = cli(hooked, "outbox", "list")
    for uid, _, _ in cases:
        mine = sorted((r for r in rows if r["mpps_uid"] == uid), key=lambda r: r["id"])
        assert [(r["event"], r["pps_status"]) for r in mine] == [
            ("N-CREATE", "IN PROGRESS"),
            ("N-SET", "COMPLETED"),
        ]
        # the older state was dropped, not delivered after the newer one; the newest once
        assert [r["state"] for r in mine] in (
            ["superseded", "delivered"],
            ["delivered", "delivered"],
        )
        delivered = [r for r in mine if r["state"] == "delivered"]
        assert delivered == sorted(delivered, key=lambda r: r["delivered_at"])
    log = hooked.log()
    for uid, _, _ in cases:
        assert log.count(f"orthanc {uid} N-SET COMPLETED: delivered") == 1


def test_outbox_retry_command_redelivers_a_failed_notification(hooked, orthanc, tmp_path):
    """A notification that failed (study never appeared in time) is retried on request."""
    study, series_uid, image = new_uids(3)
    uid = generate_uid()
    send(hooked.port, uid, study, complete=False)
    time.sleep(1)
    import sqlite3

    db_path = hooked.url.removeprefix("sqlite:///")
    with sqlite3.connect(db_path) as conn:  # an operator-visible failure, as after a timeout
        conn.execute(
            "UPDATE outbox SET state = 'failed', last_error = 'gave up' WHERE mpps_uid = ?", (uid,)
        )
    orthanc.upload(study, series_uid, image)
    time.sleep(1.5)
    assert orthanc.metadata(study).get("MppsStatus") is None  # failed rows are not retried
    failed = [r for r in cli(hooked, "outbox", "list", "--state", "failed") if r["mpps_uid"] == uid]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            "outbox",
            "retry",
            str(failed[0]["id"]),
            "--database-url",
            hooked.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "1 message(s) due again" in proc.stdout
    assert wait_for(lambda: orthanc.metadata(study).get("MppsStatus")) == "IN PROGRESS"
