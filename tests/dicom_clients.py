"""pynetdicom client helpers for tests: the MPPS/worklist peers of a live server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from worklist_mpps.client.pynetdicom_race import RequestorAE


def associate(port: int, *contexts, ae_title: str = "TESTSCU", called: str = "WORKLISTS"):
    ae = RequestorAE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for context in contexts or (Verification,):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association was not accepted"
    return assoc


def echo(port: int) -> int:
    assoc = associate(port, Verification)
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


def find(port: int, identifier: Dataset, **kwargs) -> tuple[list[Dataset], list[Dataset]]:
    """(status datasets, response identifiers) of one worklist C-FIND."""
    assoc = associate(port, ModalityWorklistInformationFind, **kwargs)
    statuses, identifiers = [], []
    try:
        for status, ds in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
            statuses.append(status)
            if ds is not None:
                identifiers.append(ds)
    finally:
        assoc.release()
    return statuses, identifiers


def worklist_query(**top) -> Dataset:
    """A worklist C-FIND identifier: a few return keys, plus ``top`` matching keys."""
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    item = Dataset()
    item.Modality = ""
    ds.ScheduledProcedureStepSequence = Sequence([item])
    for key, value in top.items():
        setattr(ds, key, value)
    return ds


def findscu_files(port: int, outdir: Path, *keys: str, timeout: float = 30) -> list[Dataset]:
    """DCMTK findscu -W -X with these keys; the C-FIND must end in Success.

    findscu exits 0 whatever the final status, so that is read from its log.
    """
    from conftest import dcmtk  # DCMTK's findscu, not pynetdicom's of the same name

    outdir.mkdir(parents=True, exist_ok=False)
    cmd = [
        dcmtk("findscu"),
        "-v",
        "-W",
        "-aec",
        "WORKLISTS",
        "-X",
        "-od",
        str(outdir),
        "127.0.0.1",
        str(port),
    ]
    for key in keys:
        cmd += ["-k", key]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"findscu exited {proc.returncode}\n{text}"
    assert "Received Final Find Response (Success)" in text, text
    return [pydicom.dcmread(f) for f in sorted(outdir.glob("rsp*.dcm"))]


def dicom_mpps(*args: str) -> str:
    """Run the project's ``dicom-mpps`` (as a modality would); its output, stripped (the
    MPPS UID for ``create``). A non-zero exit fails the test with what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "worklist_mpps.cli.dicom_mpps", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()
