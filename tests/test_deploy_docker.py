"""docker-compose.yml for real (issue 17, docs/deploy-docker.md): a Docker engine (Debian's
dockerd, started here when none answers), the stand-in base images of
tests/docker_standins/ (no registry pull), the worklist-mpps image built offline from
scripts/build-wheelhouse.sh's wheelhouse, both containers healthy, then the HTTP token
check, C-ECHO with DCMTK echoscu, a worklist query with findscu, an MPPS cycle with
dicom-mpps whose state reaches the Orthanc study's metadata, a clean stop (exit 0 on
SIGTERM) and `down -v` leaving no container, volume or network.

Every published port is on 127.0.0.1 and a free port. Runs once per compose spelling
found: Debian's `docker-compose` 1.29 and the `docker compose` v2 plugin.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from pydicom.uid import generate_uid

from conftest import ROOT, SAMPLE, dcmtk, free_port, wait_for
from dicom_clients import dicom_mpps, findscu_files
from orthanc_server import Orthanc

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

CACHE = Path(os.environ.get("WM_TEST_CACHE", "/var/cache/worklist-mpps-tests"))
STANDINS = ROOT / "tests" / "docker_standins" / "build.sh"
# A dockerd started here keeps its state in the cache (the stand-in images stay there
# between runs), its sockets and pid file in a short temporary folder, and leaves the
# host as it found it: no docker0 bridge, no iptables rules, ip_forward untouched (the
# published ports are reached through docker-proxy; the build has no network anyway)
DOCKERD_FLAGS = ["--bridge", "none", "--iptables=false", "--ip-masq=false", "--ip-forward=false"]
HEALTHY_WITHIN = 240  # s: compose healthchecks run every 30 s, Orthanc first
USER = "wmdocker"
COMPOSE_FILE = "docker-compose.yml"


def run(cmd: list[str], env: dict, timeout: float, check: bool = True, **kw):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        said = f"{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, f"{cmd[:3]} exit {done.returncode}\n{said}"
    return done


# --- the engine -------------------------------------------------------------------------


class Engine:
    """A Docker engine: the one that answers, else Debian's dockerd started here (its own
    socket, pid file and exec root; data root in the cache) and stopped by PID."""

    def __init__(self) -> None:
        docker = shutil.which("docker")
        if docker is None:
            pytest.skip("no docker client (Debian package docker.io; 'make test' installs it)")
        self.docker = docker
        self.env = dict(os.environ)
        self.proc: subprocess.Popen | None = None
        self.rundir: Path | None = None

    def answers(self) -> bool:
        return run([self.docker, "info"], self.env, 20, check=False).returncode == 0

    def start(self) -> Engine:
        if self.answers():
            return self
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            pytest.skip("no Docker engine answers and dockerd is not installed (docker.io)")
        self.rundir = Path(tempfile.mkdtemp(prefix="wm-dockerd."))
        sock = self.rundir / "docker.sock"
        (CACHE / "docker").mkdir(parents=True, exist_ok=True)
        log = self.rundir / "dockerd.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [dockerd, "--host", f"unix://{sock}", "--pidfile", str(self.rundir / "pid"),
                 "--exec-root", str(self.rundir / "exec"), "--data-root", str(CACHE / "docker"),
                 *DOCKERD_FLAGS],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.env["DOCKER_HOST"] = f"unix://{sock}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sock.exists() and self.answers():
                return self
            time.sleep(0.5)
        said = [ln for ln in log.read_text(errors="replace").splitlines() if "level=info" not in ln]
        tail = "\n".join(said[-10:])
        self.stop()
        pytest.skip(f"the Docker engine does not start here (dockerd {DOCKERD_FLAGS}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM to our dockerd (it stops its containerd), SIGKILL after 30 s; then the
        mounts it may leave on its own folders (a dockerd that failed to start keeps the
        bind mount of its data root) are undone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        for target in sorted(self.mounts(), reverse=True):
            subprocess.run(["umount", "--lazy", target], timeout=30, check=False)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None

    def mounts(self) -> list[str]:
        """Mount points in the folders of a dockerd started here."""
        ours = [str(CACHE / "docker")] + ([str(self.rundir)] if self.rundir else [])
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        return [p for p in points if any(p == o or p.startswith(o + "/") for o in ours)]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True):
        return run([self.docker, *args], self.env, timeout, check)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("needs root: starts a Docker engine and builds images")
    dcmtk("findscu")  # skips without DCMTK
    started = Engine().start()
    try:
        yield started
    finally:
        started.stop()
    assert started.mounts() == [], "mounts left behind"


@pytest.fixture(scope="module")
def images(engine) -> dict[str, str]:
    """BASE_IMAGE and ORTHANC_IMAGE: the stand-ins (cached after the first run)."""
    env = dict(engine.env, DOCKER=engine.docker, CACHE=str(CACHE))
    done = run([str(STANDINS)], env, timeout=1200)
    return dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)


# --- the stack --------------------------------------------------------------------------


def compose_commands(engine: Engine) -> dict[str, list[str]]:
    found = {}
    if binary := shutil.which("docker-compose"):
        found["docker-compose"] = [binary]
    if engine("compose", "version", check=False).returncode == 0:
        found["docker compose"] = [engine.docker, "compose"]
    return found


class Stack:
    def __init__(self, engine: Engine, compose: list[str], images: dict, wheelhouse: str):
        self.engine, self.project = engine, f"wmtest{os.getpid()}{len(compose)}"
        self.ports = {name: free_port() for name in ("dicom", "http", "hl7", "o_dicom", "o_http")}
        self.password, self.token = secrets.token_hex(16), secrets.token_hex(20)
        self.image = f"worklist-mpps-test:{self.project}"
        self.cmd = [*compose, "--project-name", self.project, "-f", str(ROOT / COMPOSE_FILE)]
        # everything through the environment: no secret on a command line
        self.env = {
            **{k: v for k, v in engine.env.items() if not k.startswith(("ORTHANC", "WORKLIST"))},
            "ORTHANC_USER": USER,
            "ORTHANC_PASSWORD": self.password,
            "WORKLIST_MPPS_HTTP_TOKEN": self.token,
            # the callers of these tests: DCMTK's default calling AE titles and dicom-mpps's
            "WORKLIST_MPPS_DEVICES": json.dumps(
                [{"ae_title": aet} for aet in ("ECHOSCU", "FINDSCU", "CT02")]
            ),
            "ORTHANC_IMAGE": images["ORTHANC_IMAGE"],
            "WORKLIST_IMAGE": self.image,
            "WORKLIST_BASE_IMAGE": images["BASE_IMAGE"],
            "WORKLIST_WHEELHOUSE": wheelhouse,
            "WORKLIST_BUILD_NETWORK": "none",  # the build needs no package index
            "WORKLIST_DICOM_PUBLISH": f"127.0.0.1:{self.ports['dicom']}",
            "WORKLIST_HTTP_PUBLISH": f"127.0.0.1:{self.ports['http']}",
            "WORKLIST_HL7_PUBLISH": f"127.0.0.1:{self.ports['hl7']}",
            "ORTHANC_DICOM_PUBLISH": f"127.0.0.1:{self.ports['o_dicom']}",
            "ORTHANC_HTTP_PUBLISH": f"127.0.0.1:{self.ports['o_http']}",
        }
        self.orthanc = OrthancIn(f"http://127.0.0.1:{self.ports['o_http']}", self.password)

    def __call__(self, *args: str, timeout: float = 300, check: bool = True):
        return run([*self.cmd, *args], self.env, timeout, check, cwd=ROOT)

    def containers(self) -> dict[str, dict]:
        """service name -> `docker inspect` of its container."""
        ids = self.engine("ps", "-aq", "--filter", self.label).stdout.split()
        inspected = json.loads(self.engine("inspect", *ids).stdout) if ids else []
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    @property
    def label(self) -> str:
        return f"label=com.docker.compose.project={self.project}"

    def healthy(self) -> bool:
        states = {name: c["State"] for name, c in self.containers().items()}
        for name, state in states.items():
            assert state["Status"] == "running", f"{name} {state}\n{self.logs()}"
        return len(states) == 2 and all(s["Health"]["Status"] == "healthy" for s in states.values())

    def logs(self) -> str:
        return self("logs", "--no-color", check=False).stdout[-6000:]

    def leftovers(self) -> list[str]:
        found = []
        for kind in ("ps -a", "volume ls", "network ls"):
            out = self.engine(*kind.split(), "-q", "--filter", self.label).stdout.split()
            found += [f"{kind}: {name}" for name in out]
        return found


class OrthancIn(Orthanc):
    """The compose stack's Orthanc, reached on its published REST port with the stack's
    credentials: tests/orthanc_server.py's upload and metadata helpers."""

    def __init__(self, url: str, password: str) -> None:  # no local Orthanc to configure
        self.url = url
        self.http = requests.Session()
        self.http.auth = (USER, password)


@pytest.fixture(scope="module", params=["docker-compose", "docker compose"])
def stack(request, engine, images, wheelhouse) -> Iterator[Stack]:
    compose = compose_commands(engine).get(request.param)
    if compose is None:
        pytest.skip(f"{request.param} is not installed")
    up = Stack(engine, compose, images, str(wheelhouse.relative_to(ROOT)))
    try:
        # compose 1.29 builds with the legacy builder: a failed step's container is kept
        # unless --force-rm (v2 builds with BuildKit, which keeps none)
        legacy = Path(compose[0]).name == "docker-compose"
        up("build", *(["--force-rm"] if legacy else []), timeout=900)
        up("up", "-d", timeout=300)
        wait_for(up.healthy, timeout=HEALTHY_WITHIN, interval=2)
        yield up
    finally:
        up("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        engine("rmi", "-f", up.image, check=False)
        if engine.proc is not None:  # our own engine: the build stage and build cache too
            engine("image", "prune", "-f", check=False)
            engine("builder", "prune", "-af", check=False)


# --- the checks -------------------------------------------------------------------------


def test_stack_is_healthy_on_loopback_ports_without_secrets_in_commands(stack):
    for name, container in stack.containers().items():
        assert container["State"]["Health"]["Status"] == "healthy", name
        bound = [b for bs in container["NetworkSettings"]["Ports"].values() for b in bs or []]
        assert bound and {b["HostIp"] for b in bound} == {"127.0.0.1"}, (name, bound)
        command = " ".join([container["Path"], *container["Args"]])
        assert stack.password not in command and stack.token not in command
    assert stack.password not in stack.logs() and stack.token not in stack.logs()


def test_http_is_published_and_requires_the_token(stack):
    """HTTP binds all addresses inside the container, so the token is required (README
    "HTTP"); /healthz, the compose healthcheck, is served without it."""
    url = f"http://127.0.0.1:{stack.ports['http']}"
    assert requests.get(url + "/healthz", timeout=10).status_code == 200
    assert requests.get(url + "/api/worklist-items", timeout=10).status_code == 401
    bearer = {"Authorization": f"Bearer {stack.token}"}
    assert requests.get(url + "/api/worklist-items", headers=bearer, timeout=10).ok


def test_c_echo_with_echoscu(stack):
    for aet, port in (("WORKLISTS", stack.ports["dicom"]), ("ORTHANC", stack.ports["o_dicom"])):
        done = run([dcmtk("echoscu"), "-aec", aet, "127.0.0.1", str(port)], {}, 30, check=False)
        assert done.returncode == 0, f"{aet}: {done.stdout}{done.stderr}"


def test_findscu_returns_the_sample_worklist(stack, tmp_path):
    found = findscu_files(
        stack.ports["dicom"], tmp_path / "rsp", "AccessionNumber", "StudyInstanceUID",
        "PatientID", "(0040,0100)[0].Modality",
    )  # fmt: skip
    items = yaml.safe_load(SAMPLE.read_text())["items"]
    assert sorted(ds.AccessionNumber for ds in found) == sorted(
        i["accession_number"] for i in items
    )


def test_mpps_cycle_reaches_the_orthanc_study(stack, tmp_path):
    """An item of the worklist is performed: its study's image goes to Orthanc, dicom-mpps
    sends IN PROGRESS then COMPLETED with that image, the hook writes the study metadata
    (README "What Orthanc learns")."""
    (item,) = findscu_files(
        stack.ports["dicom"], tmp_path / "rsp", "AccessionNumber=A10002", "StudyInstanceUID",
        "PatientID",
    )  # fmt: skip
    study, series, image = item.StudyInstanceUID, generate_uid(), generate_uid()
    stack.orthanc.upload(study, series, image, patient_id=item.PatientID)
    url = f"pacs://WORKLISTS@127.0.0.1:{stack.ports['dicom']}"  # devices: called AE checked
    uid = dicom_mpps(
        "create", url, "--aet", "CT02", "--from-worklist", "--accession", "A10002",
        "--status", "IN PROGRESS",
    )  # fmt: skip
    assert wait_for(lambda: stack.orthanc.metadata(study).get("MppsStatus"), 60) == "IN PROGRESS"
    dicom_mpps(
        "update", url, "--aet", "CT02", "--mpps-uid", uid, "--status", "COMPLETED",
        "--study-uid", study, "--series-uid", series, "--image-uid", image,
    )  # fmt: skip
    meta = wait_for(
        lambda: (m := stack.orthanc.metadata(study)).get("MppsCompleteness") == "complete" and m,
        timeout=90,
    )
    assert (meta["MppsStatus"], meta["MppsInstanceUID"]) == ("COMPLETED", uid)
    assert (meta["MppsExpected"], meta["MppsReceived"], json.loads(meta["MppsMissing"])) == (
        "1",
        "1",
        [],
    )
    assert json.loads(meta["MppsList"]) == [{"uid": uid, "status": "COMPLETED"}]


def test_clean_stop_then_down_leaves_nothing(stack):
    """SIGTERM (compose stop) ends both servers with exit 0 within the grace period; down
    -v removes containers, volumes and the network."""
    stack("stop", "--timeout", "20")
    for name, container in stack.containers().items():
        state = container["State"]
        assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False), (
            name,
            state,
            stack.logs(),
        )
    stack("down", "-v", "--remove-orphans")
    assert stack.leftovers() == []
