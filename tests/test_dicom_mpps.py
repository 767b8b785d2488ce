"""End to end: the ``dicom-mpps`` command (create / update / get) against a live server.

Each call runs the command as a real subprocess (``python -m worklist_mpps.cli.dicom_mpps``)
and checks its exit code, stdout and stderr; what the server stored is read back with
``dicom-mpps get --json`` (DICOM JSON) and the worklist side with a pynetdicom C-FIND.
One server per module (sample worklist loaded); the called-AE-title checks use a second
one started with ``--require-called-ae-title true``.

Over 400 lines: the sections share the module server, the dicom_mpps runner and the Listener.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import ROOT, SAMPLE, LiveServer, free_port, module_server
from dicom_clients import find

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

CMD_TIMEOUT = 60
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
NO_LONGER_UPDATED = "may no longer be updated"

# DICOM JSON tags
SOP_INSTANCE_UID = "00080018"
MODALITY = "00080060"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
ACCESSION = "00080050"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SPS_ID = "00400009"
REQUESTED_PROCEDURE_ID = "00401001"
PPS_STATUS = "00400252"
STATION_AET = "00400241"
SSAS = "00400270"  # Scheduled Step Attributes Sequence
PERFORMED_SERIES = "00400340"
REFERENCED_IMAGES = "00081140"
REF_SOP_CLASS = "00081150"
REF_SOP_INSTANCE = "00081155"
PROTOCOL_NAME = "00181030"
DISCONTINUATION = "00400281"
CODE_VALUE = "00080100"
CODING_SCHEME = "00080102"


# --- helpers ------------------------------------------------------------------------------


def dicom_mpps(*args: str, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``dicom-mpps ARGS`` as a subprocess; stdout/stderr as text."""
    return subprocess.run(
        [sys.executable, "-m", "worklist_mpps.cli.dicom_mpps", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def show(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, show(proc)
    return proc


def fails(proc: subprocess.CompletedProcess, code: int, *texts: str) -> str:
    """Assert the exit code and that stderr names every text; return stderr."""
    assert proc.returncode == code, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert proc.stderr.startswith("dicom-mpps: "), show(proc)
    for text in texts:
        assert text in proc.stderr, f"{text!r} not in stderr\n{show(proc)}"
    return proc.stderr


def values(ds: dict, tag: str) -> list:
    return ds.get(tag, {}).get("Value", [])


def value(ds: dict, tag: str):
    found = values(ds, tag)
    return found[0] if found else None


def person(ds: dict, tag: str) -> str | None:
    found = value(ds, tag)
    return found.get("Alphabetic") if found else None


def query(**top) -> Dataset:
    """A worklist C-FIND identifier (as in test_dimse_worklist), asking the SPS status."""
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    item = Dataset()
    item.Modality = ""
    item.ScheduledProcedureStepID = ""
    item.ScheduledProcedureStepStatus = ""
    ds.ScheduledProcedureStepSequence = Sequence([item])
    for key, val in top.items():
        setattr(ds, key, val)
    return ds


def worklist(port: int, accession: str, status: str = "") -> list[Dataset]:
    """The worklist items of an accession number (status "": the server's default set)."""
    ds = query(AccessionNumber=accession)
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = status
    statuses, found = find(port, ds)
    assert statuses[-1].Status == 0x0000, statuses[-1]
    return found


def sps_status(item: Dataset) -> str:
    return item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus


def write_image(
    path: Path,
    study: str,
    series: str,
    sop: str,
    sop_class: str = CT_IMAGE,
    protocol: str = "CT Routine",
) -> None:
    """A small DICOM file (no pixel data) of one instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.PatientID = "PID00014"
    ds.ProtocolName = protocol
    ds.SeriesDescription = "Axial"
    ds.save_as(path, enforce_file_format=True)


class Listener:
    """A plain TCP listener on 127.0.0.1 that never sends a byte.

    mode "hold": accepts and keeps every connection open (the peer waits forever);
    mode "close": accepts and closes each connection at once.
    """

    def __init__(self, mode: str = "hold") -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "close":
                conn.close()
            else:
                self.accepted.append(conn)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()
        assert not self._thread.is_alive()


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    with module_server(tmp_path_factory, "mpps", "--sample-file", str(SAMPLE)) as live:
        yield live


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory) -> Iterator[LiveServer]:
    """A server that rejects any Called AE Title other than its own (WORKLISTS)."""
    with module_server(
        tmp_path_factory,
        "strict",
        "--sample-file",
        str(SAMPLE),
        "--require-called-ae-title",
        "true",
    ) as live:
        yield live


@pytest.fixture
def url(server) -> str:
    return f"pacs://127.0.0.1:{server.port}"


@pytest.fixture
def closed_url() -> str:
    """A URL on a loopback port nothing listens on."""
    return f"pacs://127.0.0.1:{free_port()}"


def create(url: str, *extra: str, study: str | None = None) -> str:
    """``create`` of an unscheduled step; the MPPS UID it printed."""
    proc = ok(
        dicom_mpps(
            "create", url, "--aet", "MODALITY", "--study-uid", study or generate_uid(), *extra
        )
    )
    uid = proc.stdout.strip()
    assert UID_RE.match(uid), show(proc)
    return uid


def get_json(url: str, uid: str, *extra: str) -> dict:
    proc = ok(dicom_mpps("get", url, "--aet", "MODALITY", "--mpps-uid", uid, "--json", *extra))
    return json.loads(proc.stdout)


# --- 1. the documented interface ----------------------------------------------------------


def test_create_prints_one_uid_and_get_shows_in_progress(url):
    proc = ok(
        dicom_mpps(
            "create",
            url,
            "--aet",
            "MODALITY",
            "--study-uid",
            "1.2.3.4.5.6.7.8.9",
            "--status",
            "IN PROGRESS",
        )
    )
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1, show(proc)
    uid = proc.stdout.strip()
    assert UID_RE.match(uid) and len(uid) <= 64, show(proc)
    assert proc.stderr == "", show(proc)

    ds = get_json(url, uid)
    assert value(ds, SOP_INSTANCE_UID) == uid
    assert value(ds, "00080016") == MPPS_CLASS
    assert value(ds, PPS_STATUS) == "IN PROGRESS"
    assert value(ds, STATION_AET) == "MODALITY"
    assert value(ds, MODALITY) == "OT"  # no worklist, no --modality
    [step] = values(ds, SSAS)
    assert value(step, STUDY_UID) == "1.2.3.4.5.6.7.8.9"


def test_update_completed_with_series_and_images(url):
    uid = create(url, study="1.2.3.4.5")
    proc = ok(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "COMPLETED",
            "--study-uid",
            "1.2.3.4.5",
            "--series-uid",
            "1.2.3.4.5.6",
            "--image-uid",
            "1.2.3.4.5.6.7",
            "--image-uid",
            "1.2.3.4.5.6.8",
        )
    )
    assert proc.stdout == f"{uid} COMPLETED\n", show(proc)

    ds = get_json(url, uid)
    assert value(ds, PPS_STATUS) == "COMPLETED"
    assert value(ds, "00400250") and value(ds, "00400251")  # end date and time were set
    [series] = values(ds, PERFORMED_SERIES)
    assert value(series, SERIES_UID) == "1.2.3.4.5.6"
    images = values(series, REFERENCED_IMAGES)
    assert [value(i, REF_SOP_INSTANCE) for i in images] == ["1.2.3.4.5.6.7", "1.2.3.4.5.6.8"]
    # the step's Modality defaulted to OT: no storage class by modality, Secondary Capture
    assert {value(i, REF_SOP_CLASS) for i in images} == {SECONDARY_CAPTURE}


def test_completed_without_any_series_is_refused_0121(url):
    uid = create(url)
    proc = dicom_mpps(
        "update", url, "--aet", "MODALITY", "--mpps-uid", uid, "--status", "COMPLETED"
    )
    fails(proc, 1, "0x0121", "PerformedSeriesSequence")
    assert proc.stdout == ""
    # the refused N-SET changed nothing
    assert value(get_json(url, uid), PPS_STATUS) == "IN PROGRESS"


def test_update_discontinued(url):
    uid = create(url)
    proc = ok(
        dicom_mpps(
            "update", url, "--aet", "MODALITY", "--mpps-uid", uid, "--status", "DISCONTINUED"
        )
    )
    assert proc.stdout == f"{uid} DISCONTINUED\n"
    ds = get_json(url, uid)
    assert value(ds, PPS_STATUS) == "DISCONTINUED"
    assert values(ds, DISCONTINUATION) == []


def test_update_discontinued_with_a_reason(url):
    uid = create(url)
    ok(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "DISCONTINUED",
            "--discontinuation-reason",
            "110514",
        )
    )
    ds = get_json(url, uid)
    assert value(ds, PPS_STATUS) == "DISCONTINUED"
    [code] = values(ds, DISCONTINUATION)
    assert value(code, CODE_VALUE) == "110514"
    assert value(code, CODING_SCHEME) == "DCM"
    assert value(code, "00080104") == "Incorrect worklist entry selected"


def test_create_with_server_assigned_uid(url):
    proc = ok(
        dicom_mpps(
            "create",
            url,
            "--aet",
            "MODALITY",
            "--study-uid",
            "1.2.3.4.5.6.7.8.9",
            "--server-assigns-uid",
        )
    )
    assert proc.stdout.count("\n") == 1, show(proc)
    uid = proc.stdout.strip()
    assert UID_RE.match(uid), show(proc)
    ds = get_json(url, uid)
    assert value(ds, SOP_INSTANCE_UID) == uid
    assert value(ds, PPS_STATUS) == "IN PROGRESS"


def test_create_with_a_given_uid_and_json(url):
    mpps_uid = generate_uid()
    proc = ok(
        dicom_mpps(
            "create",
            url,
            "--aet",
            "MODALITY",
            "--study-uid",
            "1.2.3.4.5.6.7.8.9",
            "--mpps-uid",
            mpps_uid,
            "--json",
        )
    )
    result = json.loads(proc.stdout)
    assert result["mpps_uid"] == mpps_uid
    assert result["status"] == "0x0000"
    assert result["pps_status"] == "IN PROGRESS"
    assert result["study_instance_uids"] == ["1.2.3.4.5.6.7.8.9"]
    # the same UID again: duplicate SOP instance
    fails(
        dicom_mpps(
            "create", url, "--aet", "MODALITY", "--study-uid", "1.2.3", "--mpps-uid", mpps_uid
        ),
        1,
        "0x0111",
    )


def test_create_with_another_status_than_in_progress_is_refused(url):
    fails(
        dicom_mpps(
            "create", url, "--aet", "MODALITY", "--study-uid", "1.2.3", "--status", "COMPLETED"
        ),
        1,
        "0x0106",
    )


# --- 2. from the worklist -----------------------------------------------------------------


def test_full_cycle_from_worklist_to_completed_with_images(url, server, tmp_path):
    [item] = worklist(server.port, "A10001")
    assert sps_status(item) == "SCHEDULED"
    study = item.StudyInstanceUID

    proc = ok(
        dicom_mpps("create", url, "--aet", "MODALITY", "--from-worklist", "--accession", "A10001")
    )
    uid = proc.stdout.strip()
    assert proc.stdout.count("\n") == 1 and UID_RE.match(uid), show(proc)

    # the N-CREATE carried what the worklist holds (IHE RAD-6)
    ds = get_json(url, uid)
    assert person(ds, PATIENT_NAME) == "Johnson^Emily" == str(item.PatientName)
    assert value(ds, PATIENT_ID) == "PID00014"
    assert value(ds, MODALITY) == "US"  # A10001 is scheduled on US01
    assert value(ds, PPS_STATUS) == "IN PROGRESS"
    [step] = values(ds, SSAS)
    assert value(step, ACCESSION) == "A10001"
    assert value(step, STUDY_UID) == study
    assert value(step, SPS_ID) == "S10001"
    assert value(step, REQUESTED_PROCEDURE_ID) == "RP10001"

    # the worklist item follows
    [item] = worklist(server.port, "A10001")
    assert sps_status(item) == "IN PROGRESS"

    # the acquisition: 3 CT images in 2 series of the worklist's study, and a text file
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    series_a, series_b = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    write_image(images / "IM1", study, series_a, sops[0])
    write_image(images / "IM2", study, series_a, sops[1])
    write_image(images / "sub" / "IM3.dcm", study, series_b, sops[2], protocol="CT Late")
    (images / "README.txt").write_text("not a DICOM file\n")

    proc = ok(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "COMPLETED",
            "--images",
            str(images),
            "--json",
        )
    )
    result = json.loads(proc.stdout)
    assert result == {
        "mpps_uid": uid,
        "pps_status": "COMPLETED",
        "status": "0x0000",
        "warning": None,
        "series": 2,
        "instances": 3,
    }

    ds = get_json(url, uid)
    assert value(ds, PPS_STATUS) == "COMPLETED"
    performed = {value(s, SERIES_UID): s for s in values(ds, PERFORMED_SERIES)}
    assert set(performed) == {series_a, series_b}
    refs = {
        value(s, SERIES_UID): {
            (value(i, REF_SOP_CLASS), value(i, REF_SOP_INSTANCE))
            for i in values(s, REFERENCED_IMAGES)
        }
        for s in performed.values()
    }
    assert refs == {
        series_a: {(CT_IMAGE, sops[0]), (CT_IMAGE, sops[1])},
        series_b: {(CT_IMAGE, sops[2])},
    }
    assert value(performed[series_b], PROTOCOL_NAME) == "CT Late"

    # finished: out of the default worklist query, found when asking for COMPLETED
    assert worklist(server.port, "A10001") == []
    [item] = worklist(server.port, "A10001", "COMPLETED")
    assert sps_status(item) == "COMPLETED"

    # and the finished step may no longer be updated
    proc = dicom_mpps(
        "update", url, "--aet", "MODALITY", "--mpps-uid", uid, "--status", "DISCONTINUED"
    )
    fails(proc, 1, "0x0110", NO_LONGER_UPDATED, "0xA710")


def test_create_from_worklist_json(url, server):
    [item] = worklist(server.port, "A10008")
    proc = ok(
        dicom_mpps(
            "create", url, "--aet", "CT01", "--from-worklist", "--accession", "A10008", "--json"
        )
    )
    result = json.loads(proc.stdout)
    assert UID_RE.match(result["mpps_uid"])
    assert result["status"] == "0x0000" and result["warning"] is None
    assert result["pps_status"] == "IN PROGRESS"
    assert result["accession_numbers"] == ["A10008"]
    assert result["study_instance_uids"] == [item.StudyInstanceUID]

    ds = get_json(url, result["mpps_uid"])
    assert person(ds, PATIENT_NAME) == "Müller^Hans"  # non-ASCII name kept
    assert value(ds, PATIENT_ID) == "PID00001"
    assert value(ds, MODALITY) == "CT"
    assert value(ds, STATION_AET) == "CT01"
    [step] = values(ds, SSAS)
    assert (value(step, ACCESSION), value(step, SPS_ID)) == ("A10008", "S10008")
    assert sps_status(worklist(server.port, "A10008")[0]) == "IN PROGRESS"


def test_create_from_worklist_by_patient_id_of_today(url):
    # PID00011 has A10014 today and A10021 tomorrow: --date defaults to today
    proc = ok(
        dicom_mpps(
            "create",
            url,
            "--aet",
            "MODALITY",
            "--from-worklist",
            "--patient-id",
            "PID00011",
            "--json",
        )
    )
    assert json.loads(proc.stdout)["accession_numbers"] == ["A10014"]


def test_create_from_worklist_no_item(url):
    proc = dicom_mpps("create", url, "--aet", "MODALITY", "--from-worklist", "--accession", "NOPE")
    fails(proc, 9, "no scheduled worklist item", "NOPE")
    assert proc.stdout == ""


def test_create_from_worklist_several_items_must_be_chosen(url):
    # No patient in the sample has two items on one day, and accession numbers are
    # unique; PID00011 has A10014 today and A10021 tomorrow, so a date range
    # (a valid SPS Start Date key) covering both days matches two items.
    today = dt.date.today()
    days = f"{today:%Y%m%d}-{today + dt.timedelta(days=1):%Y%m%d}"
    proc = dicom_mpps(
        "create",
        url,
        "--aet",
        "MODALITY",
        "--from-worklist",
        "--patient-id",
        "PID00011",
        "--date",
        days,
    )
    stderr = fails(proc, 9, "choose", "A10014", "A10021")
    assert "2 worklist items" in stderr
    proc = dicom_mpps(
        "create",
        url,
        "--aet",
        "MODALITY",
        "--from-worklist",
        "--patient-id",
        "PID00011",
        "--date",
        days,
        "--json",
    )
    assert proc.returncode == 9
    error = json.loads(proc.stdout)
    assert error["error"] == "worklist" and error["exit_code"] == 9
    assert "choose" in error["message"]


def test_create_from_worklist_without_a_key_is_a_bad_value(url):
    fails(
        dicom_mpps("create", url, "--aet", "MODALITY", "--from-worklist"),
        4,
        "--from-worklist needs",
    )


def test_create_without_study_uid_is_a_bad_value(url):
    fails(dicom_mpps("create", url, "--aet", "MODALITY"), 4, "--study-uid")


def test_one_mpps_for_two_accessions(url, server):
    # A10001 is completed by the full-cycle test; A10002 and A10003 are not used elsewhere
    proc = ok(
        dicom_mpps(
            "create",
            url,
            "--aet",
            "MODALITY",
            "--from-worklist",
            "--accession",
            "A10002",
            "--accession",
            "A10003",
        )
    )
    uid = proc.stdout.strip()
    ds = get_json(url, uid)
    steps = values(ds, SSAS)
    assert len(steps) == 2
    assert [value(s, ACCESSION) for s in steps] == ["A10002", "A10003"]
    assert [value(s, SPS_ID) for s in steps] == ["S10002", "S10003"]
    for accession in ("A10002", "A10003"):
        assert sps_status(worklist(server.port, accession)[0]) == "IN PROGRESS"


# --- 3. the storage SOP class of --image-uid ----------------------------------------------


@pytest.mark.parametrize(
    "extra, sop_class",
    [
        ((), CT_IMAGE),  # by the step's Modality CT
        (("--sop-class-uid", MR_IMAGE), MR_IMAGE),  # given explicitly
    ],
)
def test_referenced_sop_class_by_modality_or_option(url, extra, sop_class):
    uid = create(url, "--modality", "CT")
    series, image = generate_uid(), generate_uid()
    ok(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "COMPLETED",
            "--series-uid",
            series,
            "--image-uid",
            image,
            *extra,
        )
    )
    ds = get_json(url, uid)
    assert value(ds, MODALITY) == "CT"
    [performed] = values(ds, PERFORMED_SERIES)
    [ref] = values(performed, REFERENCED_IMAGES)
    assert (value(ref, REF_SOP_CLASS), value(ref, REF_SOP_INSTANCE)) == (sop_class, image)


def test_image_uid_without_series_uid_is_a_bad_value(url):
    uid = create(url)
    fails(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "COMPLETED",
            "--image-uid",
            generate_uid(),
        ),
        4,
        "--image-uid needs --series-uid",
    )


def test_images_with_study_uid_count_only_that_study(url, tmp_path):
    study, other = generate_uid(), generate_uid()
    uid = create(url, "--modality", "CT", study=study)
    keep = generate_uid()
    write_image(tmp_path / "a.dcm", study, generate_uid(), keep)
    write_image(tmp_path / "b.dcm", other, generate_uid(), generate_uid())
    proc = ok(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "COMPLETED",
            "--study-uid",
            study,
            "--images",
            str(tmp_path),
            "--json",
        )
    )
    assert json.loads(proc.stdout)["instances"] == 1
    [performed] = values(get_json(url, uid), PERFORMED_SERIES)
    assert [value(i, REF_SOP_INSTANCE) for i in values(performed, REFERENCED_IMAGES)] == [keep]


def test_images_without_dicom_files_exit_10(url, tmp_path):
    uid = create(url)
    (tmp_path / "notes.txt").write_text("no images here\n")
    proc = dicom_mpps(
        "update",
        url,
        "--aet",
        "MODALITY",
        "--mpps-uid",
        uid,
        "--status",
        "COMPLETED",
        "--images",
        str(tmp_path),
        "--json",
    )
    fails(proc, 10, "no DICOM instances")
    assert json.loads(proc.stdout)["error"] == "images"
    fails(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "COMPLETED",
            "--images",
            str(tmp_path / "missing"),
        ),
        10,
        "not a directory",
    )
    assert value(get_json(url, uid), PPS_STATUS) == "IN PROGRESS"


# --- 4. get -------------------------------------------------------------------------------


def test_get_readable_json_and_selected_tags(url):
    uid = create(url, "--modality", "MR", "--patient-name", "Doe^Jane")
    proc = ok(dicom_mpps("get", url, "--aet", "MODALITY", "--mpps-uid", uid))
    assert "Performed Procedure Step Status" in proc.stdout
    assert "IN PROGRESS" in proc.stdout and uid in proc.stdout

    ds = get_json(url, uid)
    assert all(re.fullmatch(r"[0-9A-F]{8}", tag) and "vr" in elem for tag, elem in ds.items())
    assert person(ds, PATIENT_NAME) == "Doe^Jane"
    assert value(ds, MODALITY) == "MR"

    ds = get_json(url, uid, "--tag", "PatientName", "--tag", "0040,0252")
    assert set(ds) <= {PATIENT_NAME, PPS_STATUS, "00080005"}, ds
    assert person(ds, PATIENT_NAME) == "Doe^Jane"
    assert value(ds, PPS_STATUS) == "IN PROGRESS"
    assert set(get_json(url, uid, "--tag", "(0008,0060)")) <= {MODALITY, "00080005"}

    fails(
        dicom_mpps("get", url, "--aet", "MODALITY", "--mpps-uid", uid, "--tag", "NoSuchThing"),
        4,
        "unknown attribute",
    )


# --- 5. errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "http://127.0.0.1:104",
        "pacs://127.0.0.1:notaport",
        "pacs://127.0.0.1:104/path",
        "pacs://",
    ],
)
def test_bad_url_exit_3(bad):
    proc = dicom_mpps("create", bad, "--aet", "MODALITY", "--study-uid", "1.2.3", "--json")
    fails(proc, 3, "bad URL")
    error = json.loads(proc.stdout)
    assert (error["error"], error["exit_code"]) == ("bad-url", 3)


def test_closed_port_exit_5(closed_url):
    port = closed_url.rsplit(":", 1)[1]
    proc = dicom_mpps("get", closed_url, "--aet", "MODALITY", "--mpps-uid", "1.2.3", "--json")
    fails(proc, 5, "cannot connect", f"127.0.0.1:{port}")
    error = json.loads(proc.stdout)
    assert set(error) >= {"error", "message", "exit_code"}
    assert (error["error"], error["exit_code"]) == ("unreachable", 5)
    assert "cannot connect" in error["message"]


def test_unknown_host_exit_5():
    proc = dicom_mpps(
        "create", "pacs://no-such-host.invalid:104", "--aet", "MODALITY", "--study-uid", "1.2.3"
    )
    fails(proc, 5, "cannot resolve host", "no-such-host.invalid")


@pytest.mark.parametrize(
    "args",
    [
        ("update", "--mpps-uid", "1.2.abc", "--status", "COMPLETED"),
        ("update", "--mpps-uid", "1.2.3", "--status", "COMPLETED", "--study-uid", "01.2"),
        (
            "update",
            "--mpps-uid",
            "1.2.3",
            "--status",
            "COMPLETED",
            "--series-uid",
            "1.2.3",
            "--image-uid",
            "1.2." + "3" * 70,
        ),
        ("create", "--study-uid", "01.2"),
        ("create", "--study-uid", "1.2.3", "--mpps-uid", "1..2"),
        ("get", "--mpps-uid", "1.2.abc"),
    ],
)
def test_invalid_uid_exit_4_without_network(closed_url, args):
    command, *rest = args
    proc = dicom_mpps(command, closed_url, "--aet", "MODALITY", *rest)
    fails(proc, 4, "invalid UID")  # 4, not 5: nothing was sent to the closed port


@pytest.mark.parametrize(
    "args, text",
    [
        (
            ("--status", "DISCONTINUED", "--discontinuation-reason", "999999"),
            "unknown discontinuation reason",
        ),
        (
            ("--status", "COMPLETED", "--discontinuation-reason", "110514"),
            "--discontinuation-reason goes with --status DISCONTINUED",
        ),
    ],
)
def test_bad_discontinuation_reason_exit_4(closed_url, args, text):
    proc = dicom_mpps("update", closed_url, "--aet", "MODALITY", "--mpps-uid", "1.2.3", *args)
    fails(proc, 4, text)


@pytest.mark.parametrize("aet", ["THIS-AE-TITLE-IS-TOO-LONG", "A\\B"])
def test_bad_calling_ae_title_exit_4(closed_url, aet):
    fails(dicom_mpps("get", closed_url, "--aet", aet, "--mpps-uid", "1.2.3"), 4, "calling AE title")


@pytest.mark.parametrize(
    "argv",
    [
        ("get", "pacs://127.0.0.1:104", "--mpps-uid", "1.2.3"),  # no --aet
        (
            "update",
            "pacs://127.0.0.1:104",
            "--aet",
            "X",
            "--mpps-uid",
            "1.2.3",
            "--status",
            "IN PROGRESS",
        ),  # not a final status
        ("frobnicate",),
    ],
)
def test_bad_command_line_exit_2(argv):
    proc = dicom_mpps(*argv)
    assert proc.returncode == 2, show(proc)
    assert "usage:" in proc.stderr


def test_unknown_instance_exit_1_0112(url):
    unknown = generate_uid()
    for proc in (
        dicom_mpps(
            "update", url, "--aet", "MODALITY", "--mpps-uid", unknown, "--status", "DISCONTINUED"
        ),
        dicom_mpps("get", url, "--aet", "MODALITY", "--mpps-uid", unknown),
    ):
        fails(proc, 1, "0x0112")
        assert proc.stdout == ""


def test_update_of_a_finished_step_exit_1_0110_with_json(url):
    uid = create(url)
    ok(
        dicom_mpps(
            "update",
            url,
            "--aet",
            "MODALITY",
            "--mpps-uid",
            uid,
            "--status",
            "COMPLETED",
            "--series-uid",
            generate_uid(),
            "--image-uid",
            generate_uid(),
        )
    )
    proc = dicom_mpps(
        "update",
        url,
        "--aet",
        "MODALITY",
        "--mpps-uid",
        uid,
        "--status",
        "COMPLETED",
        "--series-uid",
        generate_uid(),
        "--image-uid",
        generate_uid(),
    )
    fails(proc, 1, "0x0110", NO_LONGER_UPDATED, "0xA710")
    proc = dicom_mpps(
        "update", url, "--aet", "MODALITY", "--mpps-uid", uid, "--status", "DISCONTINUED", "--json"
    )
    fails(proc, 1, "0x0110", NO_LONGER_UPDATED, "0xA710")
    error = json.loads(proc.stdout)
    assert error["error"] == "dimse-failure" and error["exit_code"] == 1
    assert error["status"] == 0x0110 and error["error_id"] == 0xA710
    assert NO_LONGER_UPDATED in error["message"] and NO_LONGER_UPDATED in error["comment"]
    assert value(get_json(url, uid), PPS_STATUS) == "COMPLETED"


def test_silent_peer_times_out_exit_7():
    with Listener("hold") as listener:
        started = time.monotonic()
        proc = dicom_mpps(
            "create",
            f"pacs://127.0.0.1:{listener.port}",
            "--aet",
            "MODALITY",
            "--study-uid",
            "1.2.3",
            "--timeout",
            "2",
            "--json",
            timeout=30,
        )
        elapsed = time.monotonic() - started
    fails(proc, 7, "within 2 s")
    assert elapsed < 20, elapsed
    error = json.loads(proc.stdout)
    assert (error["error"], error["exit_code"]) == ("timeout", 7)


def test_peer_closing_the_connection_is_aborted_exit_8():
    with Listener("close") as listener:
        started = time.monotonic()
        proc = dicom_mpps(
            "get",
            f"pacs://127.0.0.1:{listener.port}",
            "--aet",
            "MODALITY",
            "--mpps-uid",
            "1.2.3",
            "--timeout",
            "10",
            timeout=30,
        )
        elapsed = time.monotonic() - started
    fails(proc, 8, "aborted")
    assert elapsed < 20, elapsed


def test_help_lists_the_exit_codes():
    for argv in (("--help",), ("create", "--help"), ("update", "--help"), ("get", "--help")):
        proc = ok(dicom_mpps(*argv))
        assert "exit codes:" in proc.stdout, show(proc)
        for code, text in (
            (1, "failure status"),
            (2, "bad command line"),
            (3, "bad URL"),
            (4, "bad value"),
            (5, "unreachable"),
            (6, "rejected"),
            (7, "timeout"),
            (8, "aborted"),
            (9, "--from-worklist"),
            (10, "--images"),
        ):
            assert re.search(rf"^\s+{code}\s+.*{re.escape(text)}", proc.stdout, re.M), (
                code,
                proc.stdout,
            )


# --- called AE title ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [("--called-aet", "WRONG"), ()])  # () : ANY-SCP
def test_wrong_called_ae_title_is_rejected_exit_6(strict_server, extra):
    url = f"pacs://127.0.0.1:{strict_server.port}"
    proc = dicom_mpps("create", url, "--aet", "MODALITY", "--study-uid", "1.2.3", *extra, "--json")
    fails(proc, 6, "rejected", "Called AE title not recognised")
    error = json.loads(proc.stdout)
    assert (error["error"], error["exit_code"]) == ("rejected", 6)
    assert "Called AE title not recognised" in error["message"]


def test_right_called_ae_title_is_accepted(strict_server):
    for url, extra in (
        (f"pacs://127.0.0.1:{strict_server.port}", ("--called-aet", "WORKLISTS")),
        (f"pacs://WORKLISTS@127.0.0.1:{strict_server.port}", ()),
    ):
        uid = create(url, *extra)
        assert value(get_json(url, uid, *extra), PPS_STATUS) == "IN PROGRESS"


# --- association slots ----------------------------------------------------------------------


def test_consecutive_commands_fit_in_max_associations(live_server):
    """A client that holds one association at a time must not exhaust the server's limit.

    With max_associations 3, three dicom-mpps runs one after the other must all succeed:
    each uses a single association and releases it before the next run starts. (The
    fixture waits on /healthz, which does not connect to the DICOM port.)
    """
    small = live_server(None, "--sample-file", str(SAMPLE), "--max-associations", "3")
    url = f"pacs://127.0.0.1:{small.port}"
    for _ in range(3):
        proc = dicom_mpps("create", url, "--aet", "MODALITY", "--study-uid", generate_uid())
        assert proc.returncode == 0, show(proc) + "\nserver log:\n" + small.log()[-3000:]


def test_client_connection_has_tcp_nodelay(server):
    """dicom-mpps (and MPPS forwarding, same class) sends each message's command and data
    set as separate PDUs: without TCP_NODELAY the data set waits for the server's delayed
    ACK (~40 ms a message). The socket of an open association has it set."""
    from worklist_mpps.client.scu import Association, Peer

    peer = Peer("127.0.0.1", server.port, "WORKLISTS")
    with Association(peer, "NODELAY") as assoc:
        sock = assoc.established.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
