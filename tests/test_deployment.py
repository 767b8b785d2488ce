"""docker-compose.yml, the Dockerfile and orthanc/orthanc.json, checked offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT
from worklist_mpps.config import Config
from worklist_mpps.delivery.orthanc import METADATA


def compose(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (Debian package; 'make test' installs it)")
    return subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("ORTHANC", "WORKLIST_MPPS"))
            },
            **(env or {}),
        },
    )


def test_compose_file_is_valid_and_wired():
    proc = compose("config", env={"ORTHANC_PASSWORD": "pw", "WORKLIST_MPPS_HTTP_TOKEN": "tk"})
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert set(services) == {"orthanc", "worklist-mpps"}
    wm = services["worklist-mpps"]
    assert wm["environment"]["WORKLIST_MPPS_ORTHANC_URL"] == "http://orthanc:8042"
    assert wm["environment"]["WORKLIST_MPPS_ORTHANC_PASSWORD"] == "pw"
    assert wm["environment"]["WORKLIST_MPPS_DATABASE_URL"].startswith("sqlite:////data/")
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in wm["volumes"]]
    assert "/data" in targets
    assert wm["depends_on"]["orthanc"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(wm["healthcheck"]["test"])
    assert wm["environment"]["WORKLIST_MPPS_HTTP_TOKEN"] == "tk"
    assert wm["environment"]["WORKLIST_MPPS_HTTP_BIND"] == "0.0.0.0"
    dicom = [p for p in wm["ports"] if isinstance(p, dict)]
    assert [(int(p["published"]), int(p["target"])) for p in dicom] == [(5243, 5243)]
    assert "127.0.0.1:5244:5244/tcp" in wm["ports"], "HTTP on loopback only"
    assert "127.0.0.1:8042:8042/tcp" in services["orthanc"]["ports"], "Orthanc REST on loopback"
    assert "healthcheck" in services["orthanc"]


def test_compose_refuses_to_start_without_secrets():
    proc = compose("config", env={"WORKLIST_MPPS_HTTP_TOKEN": "tk"})
    assert proc.returncode != 0 and "ORTHANC_PASSWORD" in proc.stderr
    proc = compose("config", env={"ORTHANC_PASSWORD": "pw"})
    assert proc.returncode != 0 and "WORKLIST_MPPS_HTTP_TOKEN" in proc.stderr


def test_dockerfile_runs_the_server_as_a_user_with_a_data_volume():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "USER worklist" in text and "VOLUME /data" in text and "EXPOSE 5243 5244" in text
    assert 'CMD ["worklist-mpps", "serve"]' in text


def test_dockerfile_installs_exactly_the_lock_file():
    """Every pip install of the image is the lock file with hashes, or the package itself
    without resolving dependencies; the healthcheck writes the database."""
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.lock ./" in text
    installs = [line for line in text.replace("\\\n", " ").splitlines() if "pip install" in line]
    assert any("--require-hashes -r requirements.lock" in line for line in installs)
    for line in installs:
        assert "--require-hashes -r requirements.lock" in line or (
            "--no-deps" in line and "--no-build-isolation" in line
        ), line
    assert text.index("--require-hashes -r requirements.lock") < text.index("--no-deps")
    assert "requirements.lock" not in (ROOT / ".dockerignore").read_text()
    assert (
        'HEALTHCHECK --interval=30s --timeout=10s CMD ["worklist-mpps", "ping", "--deep"]' in text
    )


def test_orthanc_json_declares_every_metadata_the_hook_writes():
    config = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    assert set(METADATA) <= set(config["UserMetadata"])
    assert all(1024 <= v <= 65535 for v in config["UserMetadata"].values())
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"${ORTHANC_USER}": "${ORTHANC_PASSWORD}"}
    aet, host, port = config["DicomModalities"]["worklists"]
    assert (aet, port) == (Config().ae_title, Config().port) and host == "worklist-mpps"
