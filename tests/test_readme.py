"""The README's findscu examples run against a live server with the sample data."""

from __future__ import annotations

import re
import shutil
import subprocess

from conftest import ROOT, SAMPLE, require_tool


def readme_findscu_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    # the examples against the local server (the TLS one needs certificates)
    return re.findall(r"^findscu .* localhost 5243 .*$", text, re.M)


def test_readme_has_the_examples():
    commands = readme_findscu_commands()
    assert len(commands) >= 5
    for word in ("AccessionNumber=", "Modality=", "StartDate=", "StartTime="):
        assert any(word in c for c in commands), word


def test_readme_findscu_examples_work(live_server):
    require_tool("findscu")
    server = live_server(None, "--sample-file", str(SAMPLE))
    for command in readme_findscu_commands():
        command = command.replace(" localhost 5243 ", f" 127.0.0.1 {server.port} ")
        # the COMPLETED example needs a finished step: none in fresh sample data
        expect_matches = "COMPLETED" not in command
        proc = subprocess.run(["bash", "-c", command], capture_output=True, timeout=60)
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        assert proc.returncode == 0, f"{command}\n{output}"
        assert ("Find Response" in output) == expect_matches, f"{command}\n{output}"


def readme_curl_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^curl .*$", text, re.M)


def test_readme_http_examples_work(live_server):
    """Every curl example of the README, in order, against a live server."""
    if shutil.which("curl") is None:
        import pytest
        pytest.skip("curl not installed")
    server = live_server(None, "--sample-file", str(SAMPLE))
    commands = readme_curl_commands()
    assert len(commands) >= 6
    outputs = []
    for command in commands:
        command = command.replace("http://127.0.0.1:5244", server.http_url)
        proc = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"],
                              capture_output=True, timeout=60)
        body, _, code = proc.stdout.decode("utf-8", "replace").rpartition("\n")
        assert proc.returncode == 0 and code.strip() in ("200", "201"), f"{command}\n{body}"
        outputs.append(body)
    assert '"study_instance_uid"' in outputs[0] and "Lef" in outputs[0]
    assert "A20001" in outputs[1] and "A20001" in outputs[2]
    assert "COMPLETED" in outputs[5] and "NativeDicomModel" in outputs[5]
