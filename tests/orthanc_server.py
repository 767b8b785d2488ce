"""A real Orthanc (Debian package) for tests, from the project's orthanc/orthanc.json.

Storage in a temporary folder, HTTP on a free port. Orthanc 1.10 has no
bind-address option: its DICOM server is disabled and RemoteAccessAllowed is
false, so only loopback clients are answered. Started and stopped by PID.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from conftest import ROOT, free_port, port_open

USER, PASSWORD = "wmtest", "wm-secret-42"


class Orthanc:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("Orthanc")
        if binary is None:
            pytest.skip("Orthanc not installed (Debian package orthanc; 'make test' installs it)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        config = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
        storage = workdir / "orthanc-db"
        config.update(
            {
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "HttpPort": self.port,
                "DicomServerEnabled": False,
                "RemoteAccessAllowed": False,
                "Plugins": [],
                "StableAge": 1,
            }
        )
        self.config_path = workdir / "orthanc-test.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.http = requests.Session()
        self.http.auth = (USER, PASSWORD)

    def start(self, timeout: float = 30.0) -> Orthanc:
        env = dict(os.environ, ORTHANC_USER=USER, ORTHANC_PASSWORD=PASSWORD)
        self._log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, str(self.config_path)],
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}: {self.log()}")
            if port_open("127.0.0.1", self.port, 0.2):
                try:
                    if self.http.get(self.url + "/system", timeout=2).ok:
                        return self
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not start: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # --- content ------------------------------------------------------------------------

    def upload(
        self, study_uid: str, series_uid: str, sop_uid: str, patient_id: str = "PID-T", **tags: str
    ) -> None:
        data = ct_image(study_uid, series_uid, sop_uid, patient_id, **tags)
        response = self.http.post(self.url + "/instances", data=data, timeout=10)
        assert response.ok, response.text

    def study_id(self, study_uid: str) -> str | None:
        found = self.http.post(self.url + "/tools/lookup", data=study_uid, timeout=10).json()
        return next((r["ID"] for r in found if r["Type"] == "Study"), None)

    def metadata(self, study_uid: str) -> dict:
        study = self.study_id(study_uid)
        if study is None:
            return {}
        return self.http.get(f"{self.url}/studies/{study}/metadata?expand", timeout=10).json()


def ct_image(
    study_uid: str, series_uid: str, sop_uid: str, patient_id: str = "PID-T", **tags: str
) -> bytes:
    """One small CT instance of the study as a DICOM file; ``tags`` (keywords) added."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, "Test^Patient", "CT"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def new_uids(n: int) -> list[str]:
    return [generate_uid() for _ in range(n)]
