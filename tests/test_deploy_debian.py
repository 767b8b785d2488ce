"""A plain Debian/Ubuntu host, end to end (issue 17, docs/deploy-debian.md).

As root: scripts/install-system.sh installs into a staging root (DESTDIR) from a wheelhouse
(scripts/build-wheelhouse.sh: no package index), twice (idempotent); the tree is checked
(files, modes, owners); the unit passes ``systemd-analyze verify``; a real Orthanc runs on
a copy of the staged /etc/orthanc/ (Debian's files + what the script merged in: a key
defined twice would stop it), storage and HTTP port changed, its DICOM server off and
RemoteAccessAllowed false as Debian ships it (loopback only); then the unit's ExecStart
runs as the unit's user with its credential, like systemd would, on the installed
config pointed at free loopback ports and that Orthanc: C-ECHO (echoscu), a worklist
query (findscu), an MPPS cycle (dicom-mpps) whose state reaches the study's metadata, and
SIGTERM ends it with 0. systemd is not PID 1 here, so nothing is ``systemctl start``-ed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from pydicom.uid import CTImageStorage, generate_uid

from conftest import ROOT, dcmtk, free_port, port_open, wait_for
from dicom_clients import dicom_mpps, findscu_files
from orthanc_server import Orthanc

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

USER = "worklist-mpps"
PREFIX, ETC, STATE = "/opt/worklist-mpps", "/etc/worklist-mpps", "/var/lib/worklist-mpps"
UNIT = "/etc/systemd/system/worklist-mpps.service"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ReadWritePaths": STATE,
    "CapabilityBoundingSet": "",
    "Restart": "on-failure",
    "SystemCallFilter": "@system-service",
}


def _merger():
    """deploy/debian/orthanc_config.py (its comment-aware JSON reader)."""
    spec = importlib.util.spec_from_file_location(
        "orthanc_config", ROOT / "deploy" / "debian" / "orthanc_config.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: install-system.sh creates a user and root-owned files")
    for tool in ("systemd-analyze", "setpriv", "useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if shutil.which("Orthanc") is None or not Path("/etc/orthanc/orthanc.json").is_file():
        pytest.skip("Debian's orthanc package is not installed ('make test' installs it)")
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"]).returncode:
        pytest.skip("Debian's python3-venv is not installed")
    dcmtk("echoscu")


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def staged(stage: Path, path: str) -> Path:
    return stage / path.lstrip("/")


def resolve(text: str, stage: Path) -> str:
    """The unit's absolute paths moved into the staging root."""
    for path in (PREFIX, ETC, STATE):
        text = text.replace(path, str(staged(stage, path)))
    return text


def seed_root(stage: Path) -> None:
    """What a Debian root has that the script uses: the account files, Debian's
    /etc/orthanc/ (copied, with its modes) and the orthanc group."""
    etc = stage / "etc"
    etc.mkdir(parents=True)
    orthanc_gid = Path("/etc/orthanc/credentials.json").stat().st_gid
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text(f"root:x:0:\northanc:x:{orthanc_gid}:\n")
    for name in ("shadow", "gshadow"):
        (etc / name).write_text("")
        (etc / name).chmod(0o640)
    shutil.copytree("/etc/orthanc", etc / "orthanc", symlinks=True)


def install(stage: Path, wheelhouse: Path) -> str:
    done = subprocess.run(
        ["scripts/install-system.sh"],
        cwd=ROOT,
        env=dict(os.environ, DESTDIR=str(stage), WHEELHOUSE=str(wheelhouse)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def check_tree(stage: Path) -> tuple[int, int]:
    """The staged files, their modes and owners; (uid, gid) of the service user."""
    entry = next(
        line.split(":")
        for line in (stage / "etc/passwd").read_text().splitlines()
        if line.startswith(USER + ":")
    )
    uid, gid = int(entry[2]), int(entry[3])
    assert uid < 1000 and entry[6] == "/usr/sbin/nologin", entry  # a system user, no shell

    def mode_owner(path: str) -> tuple[int, int, int]:
        st = staged(stage, path).stat()
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    assert mode_owner(ETC) == (0o750, 0, gid)
    assert mode_owner(ETC + "/config.yaml") == (0o640, 0, gid)
    assert mode_owner(ETC + "/orthanc-password") == (0o640, 0, gid)
    assert len(staged(stage, ETC + "/orthanc-password").read_text().strip()) >= 32
    assert mode_owner(STATE) == (0o750, uid, gid)
    assert mode_owner(UNIT)[0] == 0o644
    orthanc_gid = Path("/etc/orthanc/credentials.json").stat().st_gid
    assert mode_owner("/etc/orthanc/worklist-mpps.json") == (0o640, 0, orthanc_gid)
    bin_dir = staged(stage, PREFIX + "/bin")
    assert (bin_dir / "worklist-mpps").read_text().splitlines()[0] == f"#!{PREFIX}/bin/python"
    for script in bin_dir.iterdir():  # nothing names the staging root
        if script.is_file() and not script.is_symlink():
            assert str(stage) not in script.read_text(errors="replace"), script
    return uid, gid


def check_unit(stage: Path, workdir: Path) -> dict[str, list[str]]:
    text = staged(stage, UNIT).read_text()
    settings = unit_settings(text)
    for key, value in HARDENING.items():
        assert value in settings.get(key, []), f"{key}={value}"
    assert settings["User"] == [USER]
    password = staged(stage, ETC + "/orthanc-password").read_text().strip()
    assert password not in text  # the secret is a credential, never in the unit
    # verify a copy whose paths point into the staging root (systemd-analyze --root does
    # not resolve ExecStart there); any message is a finding (a bad value is only a warning)
    copy = workdir / "unit" / "worklist-mpps.service"
    copy.parent.mkdir()
    copy.write_text(resolve(text, stage))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), (
        verify.stdout + verify.stderr
    )
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert level and float(level.group(1)) <= 2.0, security.stdout[-500:]
    return settings


def orthanc_folder(stage: Path, workdir: Path, port: int) -> Path:
    """A copy of the staged /etc/orthanc/ with only storage, HTTP port, DICOM server and
    plugins changed (each key in the one file that defines it)."""
    merger = _merger()
    folder = workdir / "orthanc-etc"
    shutil.copytree(staged(stage, "/etc/orthanc"), folder, symlinks=True)
    changes = {
        "StorageDirectory": str(workdir / "orthanc-db"),
        "IndexDirectory": str(workdir / "orthanc-db"),
        "HttpPort": port,
        "DicomServerEnabled": False,  # Orthanc 1.10 cannot bind its DICOM port to loopback
        "Plugins": [],
        "StableAge": 1,
    }
    for path in folder.glob("*.json"):
        text = path.read_text()
        for key, value in changes.items():
            if key in merger.load(path):
                text, n = re.subn(
                    rf'^(\s*"{key}"\s*:\s*)(\[[^\]]*\]|[^,\n]+)',
                    lambda m, v=value: m.group(1) + json.dumps(v),
                    text,
                    count=1,
                    flags=re.M,
                )
                assert n == 1, key
        path.write_text(text)
    merged: dict = {}
    for path in folder.glob("*.json"):
        for key, value in merger.load(path).items():
            assert key not in merged, f"{key} defined twice"
            merged[key] = value
    assert merged["RemoteAccessAllowed"] is False  # Debian's: loopback clients only
    assert merged["HttpPort"] == port and merged["DicomServerEnabled"] is False
    return folder


def set_yaml(path: Path, **values: object) -> None:
    """Change top-level keys of the installed config.yaml in place (its comments stay)."""
    text = path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^{key}:.*$", f"{key}: {value}", text, count=1, flags=re.M)
        assert n == 1, key
    path.write_text(text)


def test_install_system_then_run_the_unit(tmp_path, wheelhouse):
    _require()
    started = time.monotonic()
    stage = Path(tempfile.mkdtemp(prefix="wm-debian-", dir="/tmp"))  # traversable by all
    stage.chmod(0o755)
    procs: list[subprocess.Popen] = []
    try:
        seed_root(stage)
        first = install(stage, wheelhouse)
        assert "created the system user" in first and "wrote /etc/worklist-mpps/" in first
        password = staged(stage, ETC + "/orthanc-password").read_text()
        orthanc_json = (stage / "etc/orthanc/orthanc.json").read_text()
        again = install(stage, wheelhouse)  # idempotent: keeps config, password and Orthanc's files
        assert "kept /etc/worklist-mpps/config.yaml" in again and "created" not in again
        assert staged(stage, ETC + "/orthanc-password").read_text() == password
        assert (stage / "etc/orthanc/orthanc.json").read_text() == orthanc_json
        assert (stage / "etc/orthanc/orthanc.json.before-worklist-mpps").read_text() == Path(
            "/etc/orthanc/orthanc.json"
        ).read_text()
        uid, gid = check_tree(stage)
        unit = check_unit(stage, tmp_path)

        # Orthanc on the merged folder
        http_port = free_port()
        folder = orthanc_folder(stage, tmp_path, http_port)
        log = open(tmp_path / "orthanc.log", "ab")
        orthanc_proc = subprocess.Popen(
            ["Orthanc", str(folder)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        procs.append(orthanc_proc)
        orthanc = Orthanc(tmp_path)  # its helpers (upload, metadata) on this one
        orthanc.url, orthanc.http.auth = f"http://127.0.0.1:{http_port}", (USER, password.strip())
        wait_for(
            lambda: orthanc_proc.poll() is not None or port_open("127.0.0.1", http_port, 0.2),
            30,
        )
        assert orthanc_proc.poll() is None, (tmp_path / "orthanc.log").read_text()[-2000:]
        wait_for(lambda: orthanc.http.get(orthanc.url + "/system", timeout=5).ok, 30)
        # the fragment's AuthenticationEnabled: loopback clients need the password too
        assert requests.get(orthanc.url + "/system", timeout=5).status_code == 401

        # the installed config, on free loopback ports and that Orthanc
        dicom_port, web_port = free_port(), free_port()
        set_yaml(
            staged(stage, ETC + "/config.yaml"),
            port=dicom_port,
            bind="127.0.0.1",
            http_port=web_port,
            database_url=f"sqlite:///{staged(stage, STATE)}/worklist.db",
            orthanc_url=orthanc.url,
        )
        # the unit's ExecStart as systemd runs it: its user, its credential in
        # $CREDENTIALS_DIRECTORY (%d), its Environment=, its working directory
        creds = stage / "run" / "credentials" / "worklist-mpps.service"
        creds.mkdir(parents=True)
        for entry in unit["LoadCredential"]:
            name, source = entry.split(":", 1)
            shutil.copy(resolve(source, stage), creds / name)
            os.chown(creds / name, uid, gid)
            (creds / name).chmod(0o400)
        os.chown(creds, uid, gid)
        creds.chmod(0o500)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "CREDENTIALS_DIRECTORY": str(creds)}
        for entry in unit["Environment"]:
            key, value = entry.split("=", 1)
            env[key] = value.replace("%d", str(creds))
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        as_user.append("--no-new-privs")
        exec_start = resolve(unit["ExecStart"][0], stage).split()
        server_log = open(tmp_path / "serve.log", "ab")
        server = subprocess.Popen(
            [*as_user, "--", *exec_start],
            cwd=resolve(unit["WorkingDirectory"][0], stage),
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(server)

        def healthy() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                return requests.get(f"http://127.0.0.1:{web_port}/healthz", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(healthy, 60)
        # a worklist item, loaded by the service user with the installed config
        items = stage / "items.yaml"
        item = {
            "accession_number": "DEB1",
            "sps_id": "S1",
            "requested_procedure_id": "R1",
            "day": 0,
            "time": "08:00",
            "modality": "CT",
            "scheduled_station_ae_title": "CT01",
            "patient": {"patient_id": "PID-DEB", "patient_name": "Debian^Host"},
        }
        items.write_text(json.dumps({"items": [item]}))  # JSON is YAML
        items.chmod(0o644)
        load = subprocess.run(
            [*as_user, "--", *exec_start[:3], "load", str(items), *exec_start[4:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert load.returncode == 0, load.stdout + load.stderr

        echo = subprocess.run(
            [dcmtk("echoscu"), "-aec", "WORKLISTS", "127.0.0.1", str(dicom_port)],
            capture_output=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        found = findscu_files(
            dicom_port, tmp_path / "find", "AccessionNumber=DEB1", "StudyInstanceUID"
        )
        assert [str(ds.AccessionNumber) for ds in found] == ["DEB1"]
        study = str(found[0].StudyInstanceUID)

        series, image = generate_uid(), generate_uid()
        orthanc.upload(study, series, image, patient_id="PID-DEB")
        url = f"pacs://WORKLISTS@127.0.0.1:{dicom_port}"
        mpps = dicom_mpps("create", url, "--aet", "CT01", "--from-worklist", "--accession", "DEB1")
        dicom_mpps(
            "update", url, "--aet", "CT01", "--mpps-uid", mpps, "--status", "COMPLETED",
            "--series-uid", series, "--image-uid", image, "--sop-class-uid", CTImageStorage,
        )  # fmt: skip
        meta = wait_for(
            lambda: (m := orthanc.metadata(study)).get("MppsCompleteness") == "complete" and m,
            60,
        )
        assert (meta["MppsStatus"], meta["MppsInstanceUID"]) == ("COMPLETED", mpps)

        os.kill(server.pid, signal.SIGTERM)
        assert server.wait(45) == 0
        text = (tmp_path / "serve.log").read_text()
        assert password.strip() not in text and "accepts empty credentials" not in text
        print(f"install + checks + run: {time.monotonic() - started:.0f} s")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        shutil.rmtree(stage, ignore_errors=True)
