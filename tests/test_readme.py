"""The README's shell examples run, through ``bash -euo pipefail -c`` as a user's shell
would (a failing assignment or command fails the example), against a live server with
the sample data. Every ``sh`` block is either run here or named with the reason it is not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, VENV_BIN, dcmtk

README = (ROOT / "README.md").read_text(encoding="utf-8")
DCMTK_FINDSCU = "/usr/bin/findscu"  # as the README writes it (Debian's dcmtk package)

# sh blocks not run here, by the first word of the block, and why
NOT_RUN = {
    "make": "make serve / make test / make bench: the suite itself, a server on the "
    "fixed port 5243, minutes of benchmark",
    "worklist-mpps": "placeholders (2.25.1234..., [--state ...]); the commands are "
    "covered by tests/test_dimse_mpps.py, test_outbox.py, test_audit.py",
    "export ORTHANC_PASSWORD=": "docker compose: tests/test_deploy_docker.py brings the "
    "stack up with these variables on a Docker engine of its own (as root)",
}


def bash(script: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``script`` through bash with -e -u -o pipefail, as a careful user runs it."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def sh_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", README, re.M | re.S)


def commands(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blanks left out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [
        line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def with_dcmtk(command: str) -> str:
    return command.replace(DCMTK_FINDSCU, dcmtk("findscu"), 1)


def readme_findscu_commands() -> list[str]:
    """The findscu examples against the local server (the TLS one needs certificates),
    however they name findscu."""
    return re.findall(r"^\S*findscu .* localhost 5243 .*$", README, re.M)


def dicom_mpps_block() -> str:
    [block] = [b for b in sh_blocks() if "dicom-mpps create" in b]
    return block


def test_every_sh_block_is_run_or_named():
    for block in sh_blocks():
        first = commands(block)[0]
        if first in readme_findscu_commands():
            continue  # test_readme_findscu_examples_work
        if first.startswith("curl "):
            continue  # test_readme_http_examples_work
        if "dicom-mpps create" in block:
            continue  # test_readme_dicom_mpps_example_works
        if "+tls" in block:
            continue  # needs certificates: tests/test_tls.py runs the same findscu
        if first.startswith(".venv/bin/mllp_send "):
            continue  # tests/test_hl7_listener.py::test_readme_mllp_send_command_works
        assert any(first.startswith(word) for word in NOT_RUN), f"not run, not named:\n{block}"


def test_readme_has_the_examples():
    commands_ = readme_findscu_commands()
    assert len(commands_) >= 5
    for word in ("AccessionNumber=", "Modality=", "StartDate=", "StartTime="):
        assert any(word in c for c in commands_), word


def test_readme_calls_dcmtk_by_its_path():
    """With the venv activated, a bare ``findscu`` is pynetdicom's (an argparse error)."""
    assert not re.search(r"^(findscu|echoscu) ", README, re.M)
    assert "pynetdicom" in README and "argparse error" in README


@pytest.mark.dimse
def test_readme_findscu_examples_work(live_server, tmp_path):
    dcmtk("findscu")
    server = live_server(None, "--sample-file", str(SAMPLE))
    # as after `source .venv/bin/activate`: the venv's bin (pynetdicom's findscu) first
    activated = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    assert len(readme_findscu_commands()) >= 5
    for command in readme_findscu_commands():
        command = command.replace(" localhost 5243 ", f" 127.0.0.1 {server.port} ")
        # the COMPLETED example needs a finished step: none in fresh sample data
        expect_matches = "COMPLETED" not in command
        proc = bash(with_dcmtk(command), env=activated)
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        assert proc.returncode == 0, f"{command}\n{output}"
        assert ("Find Response" in output) == expect_matches, f"{command}\n{output}"


@pytest.mark.dimse
def test_readme_dicom_mpps_example_works(live_server, tmp_path):
    """The create / update example as written (renamed host aside), in one bash each
    way: COMPLETED, or DISCONTINUED. A failing line (``UID=...`` is read-only in bash)
    fails the script; and no step is left IN PROGRESS."""
    server = live_server(None, "--sample-file", str(SAMPLE))
    bin_dir = tmp_path / "bin"  # dicom-mpps alone: not the venv's findscu & co
    bin_dir.mkdir()
    (bin_dir / "dicom-mpps").symlink_to(VENV_BIN / "dicom-mpps")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    create, completed, discontinued = commands(dicom_mpps_block())
    assert "COMPLETED" in completed and "DISCONTINUED" in discontinued
    for finish in (completed, discontinued):
        script = "\n".join((create, finish)).replace(
            "pacs://server:5243", f"pacs://127.0.0.1:{server.port}"
        )
        proc = bash(script, env=env)
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        assert proc.returncode == 0, f"{script}\n{output}"
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            "mpps",
            "list",
            "--json",
            "--database-url",
            server.database_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    steps = json.loads(listed.stdout)
    assert sorted(s["status"] for s in steps) == ["COMPLETED", "DISCONTINUED"], steps


def readme_curl_commands() -> list[str]:
    return re.findall(r"^curl .*$", README, re.M)


def test_readme_http_examples_work(live_server):
    """Every curl example of the README, in order, against a live server."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    server = live_server(None, "--sample-file", str(SAMPLE))
    commands_ = readme_curl_commands()
    assert len(commands_) >= 6
    outputs = []
    for command in commands_:
        command = command.replace("http://127.0.0.1:5244", server.http_url)
        proc = bash(command + " -w '\\n%{http_code}'")
        body, _, code = proc.stdout.decode("utf-8", "replace").rpartition("\n")
        assert proc.returncode == 0 and code.strip() in ("200", "201"), f"{command}\n{body}"
        outputs.append(body)
    assert '"study_instance_uid"' in outputs[0] and "Lef" in outputs[0]
    assert "A20001" in outputs[1] and "A20001" in outputs[2]
    assert "COMPLETED" in outputs[5] and "NativeDicomModel" in outputs[5]


def test_dcmtk_helper_refuses_pynetdicoms_script():
    found = dcmtk("findscu")
    assert Path(found).resolve().parent != VENV_BIN.resolve()
    said = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    assert "dcmtk" in (said.stdout + said.stderr).lower()
