"""DICOM TLS (PS3.15 BCP 195) beside the plain port, with DCMTK and pynetdicom clients."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from conftest import SAMPLE, free_port, require_tool
from dicom_clients import echo, worklist_query
from worklist_mpps.client.pynetdicom_race import RequestorAE

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=worklist-mpps test CA",
        cwd=d,
    )
    for name, extra in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(extra + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


def tls_flags(pki: Path, port: int, require_client: bool = False) -> list[str]:
    return [
        "--tls-port",
        str(port),
        "--tls-certificate",
        str(pki / "server.crt"),
        "--tls-private-key",
        str(pki / "server.key"),
        "--tls-ca-certificates",
        str(pki / "ca.crt"),
        "--tls-require-client-certificate",
        "true" if require_client else "false",
    ]


def dcmtk(
    tool: str, pki: Path, port: int, *args: str, client_cert: bool = True
) -> subprocess.CompletedProcess:
    require_tool(tool)
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.crt")] if client_cert else ["+tla"]
    return subprocess.run(
        [
            tool,
            *tls,
            "+cf",
            str(pki / "ca.crt"),
            "-aec",
            "WORKLISTS",
            *args,
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        timeout=60,
    )


def test_tls_and_plain_ports_side_by_side(live_server, pki):
    port = free_port()
    server = live_server(None, "--sample-file", str(SAMPLE), *tls_flags(pki, port))
    assert dcmtk("echoscu", pki, port).returncode == 0
    found = dcmtk(
        "findscu", pki, port, "-W", "-v", "-k", "AccessionNumber=A10001", "-k", "PatientName"
    )
    text = (found.stdout + found.stderr).decode(errors="replace")
    assert found.returncode == 0 and "Final Find Response (Success)" in text
    assert "Pending" in text and "[A10001]" in text
    assert dcmtk("echoscu", pki, port, client_cert=False).returncode == 0  # optional cert
    assert echo(server.port) == 0  # the plain port still answers
    plain_on_tls = subprocess.run(
        ["echoscu", "-to", "5", "-aec", "WORKLISTS", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=60,
    )
    assert plain_on_tls.returncode != 0


def test_pynetdicom_client_over_tls(live_server, pki):
    port = free_port()
    live_server(None, "--sample-file", str(SAMPLE), *tls_flags(pki, port))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    ae = RequestorAE(ae_title="TLSSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS", tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        results = list(
            assoc.send_c_find(
                worklist_query(AccessionNumber="A10002"), ModalityWorklistInformationFind
            )
        )
        assert [s.Status for s, _ in results] == [0xFF00, 0x0000]
    finally:
        assoc.release()


def test_client_certificate_can_be_required(live_server, pki):
    port = free_port()
    live_server(None, "--sample-file", str(SAMPLE), *tls_flags(pki, port, require_client=True))
    assert dcmtk("echoscu", pki, port).returncode == 0
    assert dcmtk("echoscu", pki, port, client_cert=False).returncode != 0


def test_tls_configuration_errors_are_named(tmp_path):
    from worklist_mpps.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="tls_certificate"):
        load_config(env={"WORKLIST_MPPS_TLS_PORT": "2762"})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(
            env={
                "WORKLIST_MPPS_TLS_PORT": "2762",
                "WORKLIST_MPPS_TLS_CERTIFICATE": str(tmp_path / "x.crt"),
                "WORKLIST_MPPS_TLS_PRIVATE_KEY": str(tmp_path / "x.key"),
            }
        )
