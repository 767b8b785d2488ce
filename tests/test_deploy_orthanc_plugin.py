"""Inside Orthanc, end to end (issue 17, deliverable 3; docs/deploy-orthanc-plugin.md).

Debian's Orthanc 1.10.1 loads orthanc-python 4.0, whose PythonScript is the documented
deploy/orthanc-plugin/worklist_mpps_plugin.py, over a virtualenv of Debian's python3 built
offline from the wheelhouse (scripts/build-wheelhouse.sh), configured from the documented
deploy/orthanc-plugin/orthanc.json (MPPSAet, DicomPortMPPS, WorklistMpps, UserMetadata).

Orthanc 1.10 has no bind-address option and its DICOM server must be on here (the
worklist on Orthanc's own port), so Orthanc and every client run in a network namespace
of their own (``ip netns``): nothing listens outside it, on any address. Checks: C-ECHO
on DicomPortMPPS; findscu on Orthanc's port and on DicomPortMPPS give the same answers;
an MPPS cycle with dicom-mpps reaches the study's metadata, written in-process; SIGTERM
stops Orthanc with exit 0 and no traceback; started again on the same configuration it
gives the same answers and kept the data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from conftest import ROOT, dcmtk
from orthanc_server import ct_image, new_uids

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

PLUGIN_SO = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
SYSTEM_PYTHON = Path("/usr/bin/python3")  # the Python orthanc-python is built against
DEPLOY = ROOT / "deploy" / "orthanc-plugin"
ORTHANC_PORT, MPPS_PORT, HTTP_PORT = 4242, 4243, 8042  # inside the namespace only
USER, PASSWORD = "wmtest", "wm-plugin-secret-42"  # in a curl config file, not in argv
KEYS = (  # what the comparison asks for: top-level and SPS keys, a date range
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
)


def _skip_unless_runnable() -> str:
    """Orthanc's binary, or a skip with the reason this machine cannot run the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test runs Orthanc in a network namespace (ip netns)")
    orthanc = shutil.which("Orthanc")
    if orthanc is None or not PLUGIN_SO.is_file():
        pytest.skip(
            "Orthanc or orthanc-python missing (Debian packages orthanc, orthanc-python; "
            "scripts/install-system-tools.sh installs them)"
        )
    if shutil.which("ip") is None or shutil.which("curl") is None:
        pytest.skip("needs ip (iproute2) and curl")
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys, venv; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0 or done.stdout.strip() != "(3, 11)":
        pytest.skip(f"{SYSTEM_PYTHON} with venv, 3.11 as orthanc-python 4.0 (python3-venv)")
    return orthanc


@pytest.fixture(scope="session")
def plugin_venv(tmp_path_factory, wheelhouse) -> Path:
    """A virtualenv of Debian's python3, installed offline from the wheelhouse (the
    locked dependencies and this checkout's wheel), once per test run."""
    _skip_unless_runnable()
    base = tmp_path_factory.mktemp("plugin-venv")
    house, venv = wheelhouse, base / "venv"
    started = time.monotonic()
    wheel = next(house.glob("worklist_mpps-*.whl"))
    for cmd in (
        [str(SYSTEM_PYTHON), "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--find-links",
         str(house), "--require-hashes", "-r", str(house / "requirements.lock")],
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--no-deps", str(wheel)],
    ):  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    print(f"\n[plugin venv] offline install in {time.monotonic() - started:.1f} s")
    return venv


@pytest.fixture
def netns() -> str:
    """A network namespace of this test, its loopback up; deleted at the end."""
    name = f"wmtest-{os.getpid():x}-{time.monotonic_ns() % 100000:x}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], timeout=30)


class OrthancInNetns:
    """Orthanc with the plugin, in ``netns``; started and stopped by PID."""

    def __init__(self, binary: str, netns: str, workdir: Path, venv: Path) -> None:
        self.binary, self.netns, self.workdir = binary, netns, workdir
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "orthanc.log"
        config = json.loads((DEPLOY / "orthanc.json").read_text())  # the documented snippet
        sample = ROOT / "sample_data" / "worklist.yaml"
        config.update(
            {
                "Name": "worklist-mpps plugin test",
                "StorageDirectory": str(workdir / "orthanc-db"),
                "IndexDirectory": str(workdir / "orthanc-db"),
                "DicomAet": "ORTHANC",
                "DicomPort": ORTHANC_PORT,
                "HttpPort": HTTP_PORT,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": True,
                "RegisteredUsers": {USER: PASSWORD},
                "DicomAlwaysAllowFindWorklist": True,
                "DefaultEncoding": "Utf8",
                "StableAge": 1,
                "PythonScript": str(DEPLOY / "worklist_mpps_plugin.py"),
                "WorklistMppsVenv": str(venv),
                "DicomPortMPPS": MPPS_PORT,
            }
        )
        config["WorklistMpps"] = {
            "database_url": f"sqlite:///{workdir / 'worklist.db'}",
            "load_sample_data": True,
            "sample_file": str(sample),
            "bind": "127.0.0.1",
            "outbox_retry_min": 0.5,
            "outbox_retry_max": 2,
            "orthanc_changes_interval": 1,
        }
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.curl_config = workdir / "curl.conf"  # credentials off the command line
        self.curl_config.write_text(f'user = "{USER}:{PASSWORD}"\n')
        self.curl_config.chmod(0o600)

    def run(self, *cmd: str, timeout: float = 60, stdout_only: bool = False) -> str:
        """A command in the namespace, which must succeed; its output (with stderr)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        text = done.stdout + done.stderr
        assert done.returncode == 0, f"{cmd[0]} exited {done.returncode}\n{text}"
        return done.stdout if stdout_only else text

    def start(self, timeout: float = 90.0) -> float:
        """Start Orthanc; seconds until the plugin's AE listens inside it."""
        started = time.monotonic()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKLIST_MPPS_")}
        self.proc = subprocess.Popen(  # ip netns exec execs Orthanc: one PID
            ["ip", "netns", "exec", self.netns, self.binary, "--verbose-plugins",
             str(self.config_path)],
            cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited {self.proc.returncode}:\n{self.log()}")
            if "(inside Orthanc)" in self.log()[offset:]:
                return time.monotonic() - started
            if any(s in self.log()[offset:] for s in ("worklist-mpps: not", "worklist-mpps: no ")):
                raise AssertionError(f"the plugin did not start:\n{self.log()[offset:]}")
            time.sleep(0.2)
        raise AssertionError(f"the plugin did not start within {timeout} s:\n{self.log()}")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        """Until Orthanc's log (since its last start) says ``text``."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[self.log().rindex("Orthanc version") :]:
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.log()}"
            assert self.proc is not None and self.proc.poll() is None, self.log()
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM by PID: (exit code, seconds)."""
        assert self.proc is not None
        started = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            code = -9
        self.proc = None
        self._log.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- clients, in the namespace -------------------------------------------------------

    def rest(self, method: str, path: str, data: Path | None = None) -> str:
        cmd = ["curl", "-sS", "--fail", "-K", str(self.curl_config), "-X", method]
        if data is not None:
            cmd += ["--data-binary", f"@{data}"]
        return self.run(*cmd, f"http://127.0.0.1:{HTTP_PORT}{path}", timeout=30, stdout_only=True)

    def findscu(self, port: int, outdir: Path, *keys: str, called: str = "") -> tuple[str, list]:
        """findscu -W -X: (its verbose log, the response data sets decoded)."""
        outdir.mkdir(parents=True)
        cmd = [dcmtk("findscu"), "-v", "-W", "-X", "-od", str(outdir)]
        if called:
            cmd += ["-aec", called]
        for key in keys:
            cmd += ["-k", key if "=" in key else key + "="]
        text = self.run(*cmd, "127.0.0.1", str(port))
        found = []
        for path in sorted(outdir.glob("rsp*.dcm")):
            ds = pydicom.dcmread(path)
            ds.decode()  # into Python strings, whatever Specific Character Set it came in
            found.append(ds)
        return text, found

    def dicom_mpps(self, *args: str) -> str:
        return self.run(
            sys.executable, "-m", "worklist_mpps.cli.dicom_mpps", *args, stdout_only=True
        ).strip()


def comparable(ds: Dataset) -> dict:
    """A response's values as JSON, decoded; without Specific Character Set (0008,0005),
    which Orthanc writes in every answer (its DefaultEncoding) while the project's port
    writes it only when a value needs it: both decode to the same values."""
    values = ds.to_json_dict()
    values.pop("00080005", None)
    return values


def compare_ports(orthanc: OrthancInNetns, where: Path, *keys: str) -> list[dict]:
    """findscu on Orthanc's port and on DicomPortMPPS: the same answers, in the same
    order, each a success; the answers."""
    log_o, on_orthanc = orthanc.findscu(ORTHANC_PORT, where / "orthanc-port", *keys)
    log_m, on_mpps = orthanc.findscu(MPPS_PORT, where / "mpps-port", *keys, called="WORKLISTS")
    assert "Received Final Find Response (Success)" in log_o, log_o
    assert "Received Final Find Response (Success)" in log_m, log_m
    ours, theirs = [comparable(d) for d in on_mpps], [comparable(d) for d in on_orthanc]
    assert len(ours) == len(theirs) > 0
    for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a == b, f"answer {n + 1}: DicomPortMPPS {a}\nOrthanc's port {b}"
    return ours


def ct_instance(path: Path, study_uid: str, patient_id: str) -> tuple[str, str]:
    """A CT instance of the study written to ``path``: (series UID, SOP Instance UID)."""
    series, sop = new_uids(2)
    path.write_bytes(ct_image(study_uid, series, sop, patient_id, PatientName="Plugin^Test"))
    return series, sop


def study_metadata(orthanc: OrthancInNetns, study_uid: str) -> dict:
    found = json.loads(orthanc.rest("POST", "/tools/lookup", _text(orthanc, study_uid)))
    study = next(r["ID"] for r in found if r["Type"] == "Study")
    return json.loads(orthanc.rest("GET", f"/studies/{study}/metadata?expand"))


def _text(orthanc: OrthancInNetns, text: str) -> Path:
    path = orthanc.workdir / "body.txt"
    path.write_text(text)
    return path


def test_inside_orthanc_worklist_on_both_ports_mpps_in_process_clean_restart(
    plugin_venv, netns, tmp_path
):
    timings: dict[str, float] = {}
    orthanc = OrthancInNetns(_skip_unless_runnable(), netns, tmp_path, plugin_venv)
    try:
        timings["start"] = orthanc.start()
        # C-ECHO on DicomPortMPPS (the project's AE, a thread of Orthanc)
        orthanc.run(dcmtk("echoscu"), "-aec", "WORKLISTS", "127.0.0.1", str(MPPS_PORT))

        # the same answers on both ports, the sample's non-ASCII names included
        first = compare_ports(orthanc, tmp_path / "q1", *KEYS)
        assert "C-FIND from FINDSCU (Orthanc's port, called ANY-SCP)" in orthanc.log()
        names = {v["00100010"]["Value"][0]["Alphabetic"] for v in first if "Value" in v["00100010"]}
        assert {"Dvořák^Antonín", "山田^太郎"} <= names
        # a narrower query too: matching keys, not only return keys
        compare_ports(orthanc, tmp_path / "q2", *KEYS[:3], "AccessionNumber=A10001")

        # a refused query: the project's port answers 0xA900; Orthanc's port can only
        # report a failure of its own (docs/deploy-orthanc-plugin.md)
        bad = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261399"
        said = orthanc.findscu(MPPS_PORT, tmp_path / "bad-m", bad, called="WORKLISTS")[0]
        assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in said, said  # 0xA900
        said = orthanc.findscu(ORTHANC_PORT, tmp_path / "bad-o", bad)[0]
        assert "Received Final Find Response (Success)" not in said, said
        print(
            "\n[Orthanc's port, refused query]", [ln for ln in said.splitlines() if "Final" in ln]
        )

        # an MPPS cycle on DicomPortMPPS for a study uploaded to this Orthanc
        item = next(v for v in first if v.get("00080050", {}).get("Value") == ["A10001"])
        study_uid = item["0020000D"]["Value"][0]
        series, sop = ct_instance(tmp_path / "ct.dcm", study_uid, item["00100020"]["Value"][0])
        orthanc.rest("POST", "/instances", tmp_path / "ct.dcm")
        url = f"pacs://WORKLISTS@127.0.0.1:{MPPS_PORT}"
        started = time.monotonic()
        mpps_uid = orthanc.dicom_mpps(
            "create", url, "--aet", "CT01", "--study-uid", study_uid, "--modality", "CT"
        )
        orthanc.dicom_mpps(
            "update", url, "--aet", "CT01", "--mpps-uid", mpps_uid, "--status", "COMPLETED",
            "--study-uid", study_uid, "--series-uid", series, "--image-uid", sop,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        meta: dict = {}
        while time.monotonic() < deadline:
            meta = study_metadata(orthanc, study_uid)
            if meta.get("MppsCompleteness") == "complete":
                break
            time.sleep(0.5)
        timings["mpps to metadata"] = time.monotonic() - started
        assert meta.get("MppsStatus") == "COMPLETED", meta
        assert meta.get("MppsInstanceUID") == mpps_uid
        assert (meta.get("MppsCompleteness"), meta.get("MppsExpected")) == ("complete", "1")
        # written in-process: orthanc-python's RestApiPut, no HTTP request, no credentials
        assert "REST PUT call on URI /studies/" in orthanc.log()
        assert "/metadata/MppsStatus (built-in API)" in orthanc.log()
        before_stop = compare_ports(orthanc, tmp_path / "q3", *KEYS)
        assert len(before_stop) == len(first) - 1  # A10001 is COMPLETED now

        # SIGTERM: the plugin stops its threads, then Orthanc exits 0, no traceback
        code, timings["stop"] = orthanc.stop()
        log = orthanc.log()
        assert code == 0, log[-3000:]
        assert "worklist-mpps: stopped" in log
        stopping = log[log.rindex("Shutting down") :]
        assert "Traceback" not in log and "\nE" not in stopping, stopping

        # started again on the same configuration: the same answers, the data kept
        timings["restart"] = orthanc.start()
        assert compare_ports(orthanc, tmp_path / "q4", *KEYS) == before_stop
        got = json.loads(
            orthanc.dicom_mpps("get", url, "--aet", "CT01", "--mpps-uid", mpps_uid, "--json")
        )
        assert got["00400252"]["Value"] == ["COMPLETED"], got  # Performed Procedure Step Status
        assert study_metadata(orthanc, study_uid).get("MppsStatus") == "COMPLETED"
        code, timings["second stop"] = orthanc.stop()
        stopping = orthanc.log()[orthanc.log().rindex("Shutting down") :]
        assert code == 0 and "\nE" not in stopping, stopping
    finally:
        orthanc.kill()
        print("\n[inside Orthanc] " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_a_wrong_configuration_is_one_log_line_and_orthanc_goes_on(plugin_venv, netns, tmp_path):
    """A wrong key in WorklistMpps, or no virtualenv: one error line naming it; Orthanc
    runs on (storing images is its first job), its worklist port refuses, exit 0."""
    orthanc = OrthancInNetns(_skip_unless_runnable(), netns, tmp_path, plugin_venv)
    config = json.loads(orthanc.config_path.read_text())
    config["WorklistMpps"]["max_find_result"] = 5  # max_find_results
    orthanc.config_path.write_text(json.dumps(config))
    try:
        with pytest.raises(AssertionError, match="the plugin did not start"):
            orthanc.start()
        assert (
            "worklist-mpps: not started: orthanc.json (MPPSAet, DicomPortMPPS, WorklistMpps): "
            "unknown key 'max_find_result'"
        ) in orthanc.log()
        orthanc.wait_log("Orthanc has started")
        assert json.loads(orthanc.rest("GET", "/system"))["DicomAet"] == "ORTHANC"
        said = orthanc.findscu(ORTHANC_PORT, tmp_path / "refused", "PatientName")[0]
        assert "Final Find Response (Failed: UnableToProcess)" in said, said
        assert orthanc.stop()[0] == 0

        del config["WorklistMpps"]["max_find_result"]
        config["WorklistMppsVenv"] = str(tmp_path / "no-venv")
        orthanc.config_path.write_text(json.dumps(config))
        with pytest.raises(AssertionError, match="the plugin did not start"):
            orthanc.start()
        missing = tmp_path / "no-venv" / "lib" / "python3.11" / "site-packages"
        assert f"worklist-mpps: no {missing}: create the virtualenv" in orthanc.log()
        orthanc.wait_log("Orthanc has started")
        assert orthanc.stop()[0] == 0
    finally:
        orthanc.kill()
