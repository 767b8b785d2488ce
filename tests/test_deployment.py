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

DEVICES = {"WORKLIST_MPPS_DEVICES": '[{"ae_title": "CT01"}]'}


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
            **{k: v for k, v in os.environ.items() if not k.startswith(("ORTHANC", "WORKLIST"))},
            **(env or {}),
        },
    )


def test_compose_file_is_valid_and_wired():
    proc = compose(
        "config", env={"ORTHANC_PASSWORD": "pw", "WORKLIST_MPPS_HTTP_TOKEN": "tk", **DEVICES}
    )
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
    assert wm["environment"]["WORKLIST_MPPS_BIND"] == "0.0.0.0"
    assert wm["environment"]["WORKLIST_MPPS_DEVICES"] == DEVICES["WORKLIST_MPPS_DEVICES"]
    dicom = [p for p in wm["ports"] if isinstance(p, dict)]
    assert [(int(p["published"]), int(p["target"])) for p in dicom] == [(5243, 5243)]
    assert "127.0.0.1:5244:5244/tcp" in wm["ports"], "HTTP on loopback only"
    assert "127.0.0.1:8042:8042/tcp" in services["orthanc"]["ports"], "Orthanc REST on loopback"
    assert "127.0.0.1:2575:2575/tcp" in wm["ports"], "HL7 order feed on loopback"
    assert wm["environment"]["WORKLIST_MPPS_HL7_ENABLED"] == "false", "order feed off"
    assert "healthcheck" in services["orthanc"]
    assert wm["build"]["args"] == {"BASE_IMAGE": "python:3.11-slim", "WHEELHOUSE": ""}
    assert services["orthanc"]["image"] == "orthancteam/orthanc:latest"


def test_compose_addresses_images_and_wheelhouse_come_from_the_environment():
    """What tests/test_deploy_docker.py sets: every published port on loopback, local
    base images, an offline build from a wheelhouse (docs/deploy-docker.md)."""
    proc = compose(
        "config",
        env={
            "ORTHANC_PASSWORD": "pw",
            "WORKLIST_MPPS_HTTP_TOKEN": "tk",
            **DEVICES,
            "WORKLIST_DICOM_PUBLISH": "127.0.0.1:15243",
            "WORKLIST_HTTP_PUBLISH": "127.0.0.1:15244",
            "WORKLIST_HL7_PUBLISH": "127.0.0.1:12575",
            "ORTHANC_DICOM_PUBLISH": "127.0.0.1:14242",
            "ORTHANC_HTTP_PUBLISH": "127.0.0.1:18042",
            "ORTHANC_IMAGE": "local/orthanc:1",
            "WORKLIST_IMAGE": "local/worklist-mpps:1",
            "WORKLIST_BASE_IMAGE": "local/debian:1",
            "WORKLIST_WHEELHOUSE": "build/wheelhouse",
            "WORKLIST_BUILD_NETWORK": "none",
        },
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    wm, orthanc = services["worklist-mpps"], services["orthanc"]
    assert sorted(wm["ports"]) == [
        "127.0.0.1:12575:2575/tcp",
        "127.0.0.1:15243:5243/tcp",
        "127.0.0.1:15244:5244/tcp",
    ]
    assert sorted(orthanc["ports"]) == ["127.0.0.1:14242:4242/tcp", "127.0.0.1:18042:8042/tcp"]
    assert (orthanc["image"], wm["image"]) == ("local/orthanc:1", "local/worklist-mpps:1")
    assert wm["build"]["args"] == {"BASE_IMAGE": "local/debian:1", "WHEELHOUSE": "build/wheelhouse"}
    assert wm["build"]["network"] == "none"


def test_compose_refuses_to_start_without_secrets_or_devices():
    """The token and Orthanc's password, and the devices: DICOM binds all addresses in the
    container, and off loopback the server answers only listed callers (config.py)."""
    proc = compose("config", env={"WORKLIST_MPPS_HTTP_TOKEN": "tk", **DEVICES})
    assert proc.returncode != 0 and "ORTHANC_PASSWORD" in proc.stderr
    proc = compose("config", env={"ORTHANC_PASSWORD": "pw", **DEVICES})
    assert proc.returncode != 0 and "WORKLIST_MPPS_HTTP_TOKEN" in proc.stderr
    proc = compose("config", env={"ORTHANC_PASSWORD": "pw", "WORKLIST_MPPS_HTTP_TOKEN": "tk"})
    assert proc.returncode != 0 and "WORKLIST_MPPS_DEVICES" in proc.stderr


def test_dockerfile_runs_the_server_as_a_user_with_a_data_volume():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "\nARG BASE_IMAGE=python:3.11-slim\n" in text
    assert text.count("FROM ${BASE_IMAGE}") == 2, "build stage and image on the same base"
    assert "USER worklist" in text and "VOLUME /data" in text and "EXPOSE 5243 5244 2575" in text
    assert "ENV PATH=/opt/worklist-mpps/bin:$PATH" in text, "a virtualenv (PEP 668 bases)"
    assert 'CMD ["worklist-mpps", "serve"]' in text


def test_dockerfile_installs_exactly_the_lock_file():
    """Every pip install of the image is the lock file with hashes (from PyPI, or from the
    wheelhouse with no index), or the package itself without resolving or downloading
    anything; the healthcheck writes the database."""
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.lock ./" in text
    joined = " ".join(text.replace("\\\n", " ").split())
    installs = joined.split("pip install ")[1:]
    assert len(installs) == 3, installs
    offline, online, package = (i.split(";")[0].split(" && ")[0] for i in installs)
    assert offline == (
        "--no-index --find-links /tmp/wheelhouse --require-hashes -r requirements.lock"
    )
    assert online == "--require-hashes -r requirements.lock"
    assert package.startswith("--no-index --no-deps --no-build-isolation . ")
    assert 'if [ -n "$WHEELHOUSE" ]' in joined
    assert "COPY requirements.lock ${WHEELHOUSE} /tmp/wheelhouse/" in joined
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the build context is only what is re-included"
    for needed in ("requirements.lock", "pyproject.toml", "worklist_mpps/", "build/wheelhouse*/"):
        assert "!" + needed in patterns, needed
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
