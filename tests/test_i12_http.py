"""Issue 12, items 10-12: the HTTP side against browsers, hostile bodies and slow clients.

Every request here is forged over a raw connection (http.client with explicit Host,
Origin, Sec-Fetch-Site, Content-Type and Authorization headers, or plain sockets),
as an attacker's page or script would send it, against a live ``worklist-mpps serve``.
Longer than most test modules: the three items share their servers and helpers here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import inspect
import json
import resource
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import h11
import pytest
import uvicorn
from pydicom.uid import generate_uid

from conftest import LiveServer, module_server, require_tool
from worklist_mpps.config import Config
from worklist_mpps.services.schedule_values import ItemError, normalize_item, normalize_patient
from worklist_mpps.web.dicomxml import XMLError, from_xml

# Imports of the modules this issue added are inside the tests that use them, so that
# the live tests also run (and fail) against the code before the fix.

TIMEOUT = 15
MAX_SEQUENCE_DEPTH = 16  # documented in README; test_dicom_json_model_checks compares
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
EVIL = "http://evil.example"
MPPS_PATH = "/modality-performed-procedure-steps/"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    with module_server(tmp_path_factory, "i12http") as live:
        yield live


def request(
    server: LiveServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    host: str | None = None,
) -> tuple[int, dict, bytes]:
    """One request with exactly these headers (Host defaults to the server's address)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        all_headers = {
            "Host": f"127.0.0.1:{server.http_port}" if host is None else host,
            **(headers or {}),
        }
        for name, value in all_headers.items():
            if value is not None:
                conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def mpps_create(**extra: dict) -> dict:
    """A valid N-CREATE attribute list as DICOM JSON (IN PROGRESS, unscheduled)."""
    doc = {
        "00400270": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": [generate_uid()]}}]},
        "00400253": {"vr": "SH", "Value": ["PPS1"]},
        "00400241": {"vr": "AE", "Value": ["CT01"]},
        "00400244": {"vr": "DA", "Value": ["20261201"]},
        "00400245": {"vr": "TM", "Value": ["143000"]},
        "00400252": {"vr": "CS", "Value": ["IN PROGRESS"]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
    }
    doc.update(extra)
    return doc


def new_mpps_path() -> str:
    return MPPS_PATH + generate_uid()


def stored(server: LiveServer, path: str) -> bool:
    status, _, _ = request(server, "GET", path)
    assert status in (200, 404), status
    return status == 200


# --- item 10: browsers cannot be turned against the HTTP side --------------------------------


def test_no_cors_fetch_cannot_create_an_mpps(server):
    """What fetch(url, {method: 'POST', mode: 'no-cors', body: json}) sends from a page."""
    path = new_mpps_path()
    status, headers, _ = request(
        server,
        "POST",
        path,
        json.dumps(mpps_create()).encode(),
        {
            "Content-Type": "text/plain;charset=UTF-8",
            "Origin": EVIL,
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors",
        },
    )
    assert status == 403
    assert "access-control-allow-origin" not in headers
    assert not stored(server, path)


@pytest.mark.parametrize(
    "content_type", [None, "application/json", 'multipart/related; type="text/plain"; boundary=x']
)
def test_dicomweb_body_needs_its_exact_media_type(server, content_type):
    """No Content-Type is no longer read as DICOM JSON; other types stay 415 (text/plain,
    form types, application/dicom+json-seq were already refused)."""
    path = new_mpps_path()
    body = json.dumps(mpps_create()).encode()
    status, _, answer = request(server, "POST", path, body, {"Content-Type": content_type})
    assert status == 415, answer
    assert not stored(server, path)
    status, _, answer = request(
        server, "POST", path, body, {"Content-Type": "Application/DICOM+JSON; charset=utf-8"}
    )
    assert status == 201, answer


@pytest.mark.parametrize("content_type", [None, "text/plain", DICOM_JSON])
def test_management_api_body_needs_application_json(server, content_type):
    patient_id = "P-" + generate_uid()[-12:]
    body = json.dumps({"patient_id": patient_id}).encode()
    status, _, answer = request(
        server, "POST", "/api/patients", body, {"Content-Type": content_type}
    )
    assert status == 415, answer
    status, _, answer = request(server, "GET", f"/api/patients?patient_id={patient_id}")
    assert status == 200 and json.loads(answer)["total"] == 0
    status, _, answer = request(
        server, "POST", "/api/patients", body, {"Content-Type": "application/json; charset=utf-8"}
    )
    assert status == 201, answer


def test_cross_site_requests_cannot_discontinue_an_mpps(server):
    path = new_mpps_path()
    status, _, _ = request(
        server, "POST", path, json.dumps(mpps_create()).encode(), {"Content-Type": DICOM_JSON}
    )
    assert status == 201
    discontinue = json.dumps({"00400252": {"vr": "CS", "Value": ["DISCONTINUED"]}}).encode()
    for forged in (
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": f"http://localhost:{server.http_port + 1}"},
    ):
        status, _, _ = request(
            server, "POST", path + "?update", discontinue, {"Content-Type": DICOM_JSON, **forged}
        )
        assert status == 403, forged
    status, _, answer = request(server, "GET", path)
    assert status == 200 and json.loads(answer)["00400252"]["Value"] == ["IN PROGRESS"]
    # the server's own origin (a page it served itself) may write
    status, _, answer = request(
        server,
        "POST",
        path + "?update",
        discontinue,
        {
            "Content-Type": DICOM_JSON,
            "Origin": f"http://127.0.0.1:{server.http_port}",
            "Sec-Fetch-Site": "same-origin",
        },
    )
    assert status == 200, answer


def test_cross_origin_api_writes_are_refused(server):
    body = json.dumps({"patient_id": "P-X-" + generate_uid()[-10:]}).encode()
    status, _, _ = request(
        server, "POST", "/api/patients", body, {"Content-Type": "application/json", "Origin": EVIL}
    )
    assert status == 403
    status, _, _ = request(server, "DELETE", "/api/patients/1", None, {"Origin": EVIL})
    assert status == 403
    status, _, _ = request(
        server,
        "PATCH",
        "/api/worklist-items/1",
        b'{"modality": "MR"}',
        {"Content-Type": "application/json", "Origin": EVIL},
    )
    assert status == 403
    # reading stays possible; the browser hides the answer without CORS headers
    status, headers, _ = request(server, "GET", "/api/patients?limit=1", None, {"Origin": EVIL})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_cors_preflight_is_refused_without_configured_origins(server):
    status, headers, _ = request(
        server,
        "OPTIONS",
        new_mpps_path(),
        None,
        {
            "Origin": EVIL,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert status == 403 and "access-control-allow-origin" not in headers


def test_dns_rebinding_host_is_refused_and_loopback_names_served(server):
    """A page on evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    worklist = "/modality-scheduled-procedure-steps?limit=5"
    for host in (
        "evil.example",
        "evil.example:5244",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "[::2]:80",
    ):
        status, _, body = request(server, "GET", worklist, host=host)
        assert status == 421 and b"00080050" not in body, (host, body)
    for host in ("a b", "", "x:y:z"):
        status, _, body = request(server, "GET", worklist, host=host)
        assert status == 400 and b"00080050" not in body, (host, body)
    for host in ("localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "[::1]:{port}", "127.0.0.1"):
        status, _, _ = request(server, "GET", worklist, host=host.format(port=server.http_port))
        assert status == 200, host


def test_local_health_check_keeps_working(server):
    """docker-compose.yml's healthcheck: urllib to http://127.0.0.1:5244/healthz."""
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=TIMEOUT) as rsp:
        assert rsp.status == 200
    status, _, _ = request(server, "GET", "/healthz", host="evil.example")
    assert status == 421


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory) -> Iterator[LiveServer]:
    with module_server(
        tmp_path_factory,
        "i12cors",
        "--http-cors-origins",
        "http://ris.example:8080",
        "--http-allowed-hosts",
        "worklist.example,10.1.2.3",
    ) as live:
        yield live


def test_configured_origin_gets_a_proper_preflight(cors_server):
    status, headers, _ = request(
        cors_server,
        "OPTIONS",
        "/api/patients",
        None,
        {
            "Origin": "http://ris.example:8080",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == "http://ris.example:8080"
    assert "POST" in headers["access-control-allow-methods"]
    assert "content-type" in headers["access-control-allow-headers"].lower()
    assert "origin" in headers["vary"].lower()
    for other in (EVIL, "http://ris.example:8081", "https://ris.example:8080"):
        status, headers, _ = request(
            cors_server,
            "OPTIONS",
            "/api/patients",
            None,
            {"Origin": other, "Access-Control-Request-Method": "POST"},
        )
        assert status == 403 and "access-control-allow-origin" not in headers, other


def test_configured_origin_may_write_and_read(cors_server):
    body = json.dumps({"patient_id": "P-C-" + generate_uid()[-10:]}).encode()
    status, headers, answer = request(
        cors_server,
        "POST",
        "/api/patients",
        body,
        {
            "Content-Type": "application/json",
            "Origin": "http://ris.example:8080",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert status == 201, answer
    assert headers["access-control-allow-origin"] == "http://ris.example:8080"
    assert "location" in headers["access-control-expose-headers"].lower()
    status, _, _ = request(
        cors_server,
        "POST",
        "/api/patients",
        body,
        {"Content-Type": "application/json", "Origin": EVIL},
    )
    assert status == 403


def test_configured_host_names_are_served(cors_server):
    for host in ("worklist.example", "Worklist.Example:5244", "10.1.2.3:5244", "localhost"):
        status, _, _ = request(cors_server, "GET", "/healthz", host=host)
        assert status == 200, host
    status, _, _ = request(cors_server, "GET", "/healthz", host="other.example")
    assert status == 421


# --- item 11: hostile bodies get 4xx, never 500 ----------------------------------------------


def nested_json(levels: int) -> dict:
    doc: dict = {}
    current = doc
    for _ in range(levels):
        item: dict = {}
        current["00400270"] = {"vr": "SQ", "Value": [item]}
        current = item
    return doc


def nested_in_valid_create(levels: int) -> dict:
    """A valid N-CREATE with a Content Sequence nested ``levels`` deep."""
    doc: dict = {}
    current = doc
    for _ in range(levels):
        item: dict = {"0040A160": {"vr": "UT", "Value": ["x"]}}
        current["0040A730"] = {"vr": "SQ", "Value": [item]}
        current = item
    return mpps_create(**doc)


def as_xml(doc: dict) -> bytes:
    from pydicom import Dataset

    from worklist_mpps.web.dicomxml import to_xml

    return to_xml(Dataset.from_json(doc))


def nested_xml(levels: int) -> bytes:
    attr = '<DicomAttribute tag="00400270" vr="SQ"><Item number="1">'
    return (
        f'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
        f"{attr * levels}{'</Item></DicomAttribute>' * levels}</NativeDicomModel>"
    ).encode()


@pytest.mark.parametrize(
    "body, content_type",
    [
        (json.dumps(nested_json(300)).encode(), DICOM_JSON),
        (b"[" * 5000, DICOM_JSON),
        (b'{"00100010": ' * 3000, DICOM_JSON),
        (nested_xml(600), DICOM_XML),
    ],
    ids=["json-300", "json-brackets", "json-objects", "xml-600"],
)
def test_deep_nesting_is_a_400(server, body, content_type):
    path = new_mpps_path()
    status, _, answer = request(server, "POST", path, body, {"Content-Type": content_type})
    assert status == 400, answer[:300]
    assert not stored(server, path)


@pytest.mark.parametrize(
    "encode, content_type",
    [(lambda doc: json.dumps(doc).encode(), DICOM_JSON), (as_xml, DICOM_XML)],
    ids=["json", "xml"],
)
def test_sequence_depth_limit_is_exact(server, encode, content_type):
    """A valid N-CREATE nested to the limit is stored; one level more is a 400."""
    path = new_mpps_path()
    status, _, answer = request(
        server,
        "POST",
        path,
        encode(nested_in_valid_create(MAX_SEQUENCE_DEPTH)),
        {"Content-Type": content_type},
    )
    assert status == 201, answer[:300]
    path = new_mpps_path()
    status, _, answer = request(
        server,
        "POST",
        path,
        encode(nested_in_valid_create(MAX_SEQUENCE_DEPTH + 1)),
        {"Content-Type": content_type},
    )
    assert status == 400 and b"nested deeper" in answer, answer[:300]
    assert not stored(server, path)


@pytest.mark.parametrize(
    "extra",
    [
        {"00081030": {"vr": "XX", "Value": ["x"]}},
        {"00091010": {"vr": "OB", "InlineBinary": "!!!!***"}},
        {"00091010": {"vr": "OB", "InlineBinary": "QUJD=RA=="}},
        {"00081030": {"vr": "LO", "Value": [["nested"]]}},
        {"00081030": {"vr": "LO", "BulkDataURI": "http://169.254.169.254/"}},
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": {"x": 1}}]}},
        {"00280010": {"vr": "US", "Value": [70000]}},
        {"00400270": {"vr": "SQ", "Value": ["not an item"]}},
    ],
    ids=[
        "vr-XX",
        "base64-garbage",
        "base64-padding",
        "nested-value",
        "bulkdata-uri",
        "pn-object",
        "us-range",
        "sq-item-string",
    ],
)
def test_invalid_dicom_json_is_a_400_naming_the_attribute(server, extra):
    path = new_mpps_path()
    status, _, answer = request(
        server,
        "POST",
        path,
        json.dumps(mpps_create(**extra)).encode(),
        {"Content-Type": DICOM_JSON},
    )
    assert status == 400, answer
    assert next(iter(extra)) in json.loads(answer)["detail"]
    assert not stored(server, path)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_fd_is_refused_not_stored(server, number):
    """Today NaN is stored and served back as invalid JSON (PS3.18 F.2.3: JSON numbers)."""
    path = new_mpps_path()
    text = json.dumps(mpps_create())[:-1] + (f', "00189089": {{"vr": "FD", "Value": [{number}]}}}}')
    status, _, answer = request(server, "POST", path, text.encode(), {"Content-Type": DICOM_JSON})
    assert status == 400, answer
    assert not stored(server, path)


@pytest.mark.parametrize(
    "attribute",
    [
        '<DicomAttribute tag="00189089" vr="FD"><Value number="1">NaN</Value></DicomAttribute>',
        '<DicomAttribute tag="00189089" vr="FD"><Value number="1">inf</Value></DicomAttribute>',
        '<DicomAttribute tag="00081030" vr="XX"><Value number="1">x</Value></DicomAttribute>',
        '<DicomAttribute tag="00091010" vr="OB"><InlineBinary>!!**</InlineBinary></DicomAttribute>',
    ],
    ids=["fd-nan", "fd-inf", "vr-XX", "base64-garbage"],
)
def test_invalid_dicom_xml_is_a_400_naming_the_attribute(server, attribute):
    path = new_mpps_path()
    body = as_xml(mpps_create()).replace(
        b"</NativeDicomModel>", attribute.encode() + b"</NativeDicomModel>"
    )
    status, _, answer = request(server, "POST", path, body, {"Content-Type": DICOM_XML})
    assert status == 400, answer
    assert attribute[21:29] in json.loads(answer)["detail"]
    assert not stored(server, path)


def test_absurd_search_integers_are_a_400(server):
    """offset beyond SQL BIGINT was a 500; the others (and the API's) were 4xx already."""
    for query in (
        "offset=9223372036854775808",
        "offset=" + "9" * 40,
        "offset=-1",
        "limit=" + "9" * 40,
        "offset=1e3",
        "limit=0x10",
    ):
        status, _, answer = request(server, "GET", f"/modality-scheduled-procedure-steps?{query}")
        assert status == 400, (query, answer)
    for path in (
        "/api/worklist-items?offset=9223372036854775808",
        "/api/patients?offset=" + "9" * 40,
        "/api/worklist-items/" + "9" * 30,
    ):
        status, _, answer = request(server, "GET", path)
        assert status == 422, (path, answer)
    status, _, _ = request(
        server, "GET", "/modality-scheduled-procedure-steps?offset=9223372036854775807"
    )
    assert status == 204


@pytest.mark.parametrize(
    "field, value",
    [
        ("patient_id", "P\x00X"),
        ("patient_id", "A\\B"),
        ("patient_name", "Doe^John\r\nX"),
        ("allergies", "nuts\\latex"),
        ("issuer_of_patient_id", "\x1b$B"),
        ("weight", "70\x7f"),
    ],
)
def test_control_characters_and_backslash_are_a_422_naming_the_field(server, field, value):
    body = {"patient_id": "P-CC-" + generate_uid()[-8:], field: value}
    status, _, answer = request(
        server,
        "POST",
        "/api/patients",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 422, answer
    assert json.loads(answer)["field"] == field


def test_control_characters_in_item_fields_are_a_422_naming_the_field(server):
    item = {
        "accession_number": "ACC\tX",
        "sps_id": "S1",
        "patient": {"patient_id": "P-CI-" + generate_uid()[-8:]},
    }
    status, _, answer = request(
        server,
        "POST",
        "/api/worklist-items",
        json.dumps(item).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 422 and json.loads(answer)["field"] == "accession_number", answer
    item.update(accession_number="ACC-CI", patient={"patient_id": "P\\Q"})
    status, _, answer = request(
        server,
        "POST",
        "/api/worklist-items",
        json.dumps(item).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 422 and json.loads(answer)["field"] == "patient.patient_id", answer
    item.update(
        patient={"patient_id": "P-CI2"},
        requested_procedure_codes=[{"value": "X\\Y", "scheme": "L"}],
    )
    status, _, answer = request(
        server,
        "POST",
        "/api/worklist-items",
        json.dumps(item).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 422 and json.loads(answer)["field"] == "requested_procedure_codes", answer


def test_hostile_bodies_leave_no_traceback_in_the_log(server):
    """Runs after the tests above (file order): one line per request, no traceback."""
    log = server.log()
    assert "Traceback" not in log
    assert "RecursionError" not in log
    assert " 500 " not in log and ": 500" not in log


# --- item 11: non-ASCII credentials --------------------------------------------------------------

TOKEN = "jeton-sécurisé-ü-0123456789"
USER, PASSWORD = "jürgen", "pässwort-ß-€"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[LiveServer]:
    with module_server(
        tmp_path_factory,
        "i12auth",
        "--http-token",
        TOKEN,
        "--http-username",
        USER,
        "--http-password",
        PASSWORD,
    ) as live:
        yield live


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


CREDENTIALS = [
    (b"Bearer " + TOKEN.encode(), 200),
    (b"Bearer " + TOKEN.encode("latin-1", "replace"), 401),
    (b"Bearer jeton-s\xc3\xa9curis\xc3\xa9", 401),
    (b"Bearer \xff\xfe\x80", 401),
    ("Bearer tökén".encode("latin-1"), 401),
    (basic(USER, PASSWORD), 200),
    (basic(USER, "pässwort-ß-x"), 401),
    (basic("jurgen", PASSWORD), 401),
    (b"Basic " + base64.b64encode("jürgen:pässwort-ß-€".encode("latin-1", "replace")), 401),
    (b"Basic \xc3\xa4\xc3\xa4==", 401),
    (b"Basic !!!", 401),
    (b"Bearer", 401),
]


def test_non_ascii_credentials_work_or_get_401(auth_server):
    """Configured token and password are non-ASCII; headers carry raw UTF-8 or garbage."""
    answers = []
    for authorization, _expected in CREDENTIALS:
        status, headers, _ = request(
            auth_server, "GET", "/api/patients?limit=1", None, {"Authorization": authorization}
        )
        answers.append((authorization, status, "www-authenticate" in headers))
    assert answers == [(a, e, e == 401) for a, e in CREDENTIALS]


# --- item 12: slow clients are dropped ----------------------------------------------------------

HEAD_START = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def closed_by_server(sock: socket.socket, trickle: bool, within: float) -> bytes | None:
    """Send one more header byte every 0.5 s (when ``trickle``) until the server closes
    the connection; what it sent before closing, or None if it never did in time."""
    sock.settimeout(0.5)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(b"X")
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_slow_and_silent_http_clients_are_dropped(live_server):
    server = live_server(None, "--http-header-timeout", "2")
    with (
        socket.create_connection(("127.0.0.1", server.http_port), 5) as slow,
        socket.create_connection(("127.0.0.1", server.http_port), 5) as silent,
    ):
        slow.sendall(HEAD_START)
        answer = closed_by_server(slow, trickle=True, within=15)
        assert answer is not None, "a client trickling its headers was never dropped"
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert closed_by_server(silent, trickle=False, within=5) == b""
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as rsp:
        assert rsp.status == 200
    assert "http_header_timeout" in server.log()


def still_open(sock: socket.socket) -> bool:
    """The server has not closed this connection (nothing to read, no EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def open_files_limit(soft: int) -> Iterator[None]:
    """Lower this process's soft RLIMIT_NOFILE (inherited by a server started inside)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def echoscu_succeeds(port: int) -> bool:
    echoscu = require_tool("echoscu")
    proc = subprocess.run(
        [
            echoscu if echoscu.startswith("/usr/") else "/usr/bin/echoscu",
            "-to",
            "5",
            "-ta",
            "5",
            "-td",
            "5",
            "-aec",
            "WORKLISTS",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        timeout=30,
    )
    return proc.returncode == 0


@pytest.mark.dimse
def test_300_slow_clients_stop_neither_healthz_nor_dicom(live_server):
    """The server starts with a soft open-files limit of 256 (hard unchanged), as on a
    host with ulimit -n 256: 300 clients holding half a request head must not exhaust
    the descriptors (start raises the soft limit to the hard one; HTTP keeps at most
    half of them) nor block /healthz or a C-ECHO on the DICOM port."""
    require_tool("echoscu")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1024:
        pytest.skip("hard open-files limit below 1024")
    with open_files_limit(256):
        server = live_server(None, "--http-header-timeout", "60")
    clients: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.http_port), 5)
            clients.append(sock)
            sock.sendall(HEAD_START)
        time.sleep(1)  # let the server accept them all (bounded: once)
        with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as rsp:
            assert rsp.status == 200
        assert echoscu_succeeds(server.port), "C-ECHO failed while 300 slow HTTP clients wait"
        held = sum(1 for s in clients if still_open(s))
        assert held == 300, "the slow clients were not held (the test tests nothing)"
    finally:
        for sock in clients:
            sock.close()


def test_connection_cap_makes_room_for_new_clients(live_server):
    """More slow clients than http_max_connections: the longest waiting is dropped."""
    server = live_server(None, "--http-header-timeout", "60", "--http-max-connections", "20")
    clients: list[socket.socket] = []
    try:
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", server.http_port), 5)
            clients.append(sock)
            sock.sendall(HEAD_START)
        with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as rsp:
            assert rsp.status == 200
        dropped = sum(1 for s in clients if not still_open(s))
        assert dropped >= 40
    finally:
        for sock in clients:
            sock.close()


def test_uvicorn_internals_we_rely_on():
    """worklist_mpps/web/uvicorn_h11.py subclasses uvicorn's H11Protocol: if uvicorn
    changes what it relies on, this fails and names it."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import Server, ServerState

    from worklist_mpps.web.uvicorn_h11 import GuardedH11Protocol, guarded_protocol

    for name in (
        "connection_made",
        "data_received",
        "on_response_complete",
        "connection_lost",
        "handle_events",
    ):
        assert callable(getattr(H11Protocol, name, None)), f"H11Protocol.{name} is gone"
    assert list(inspect.signature(H11Protocol.__init__).parameters)[:4] == [
        "self",
        "config",
        "server_state",
        "app_state",
    ], "H11Protocol.__init__ changed"
    assert "http_protocol_class(" in inspect.getsource(Server.startup), (
        "uvicorn no longer builds its protocol from Config.http"
    )
    assert isinstance(h11.Connection(h11.SERVER).trailing_data, tuple)
    assert h11.IDLE and h11.SEND_BODY

    cls = guarded_protocol(3.0, 7)
    assert issubclass(cls, GuardedH11Protocol) and (cls.header_timeout, cls.max_connections) == (
        3.0,
        7,
    )
    config = uvicorn.Config(lambda *a: None, http=cls, lifespan="off")
    config.load()
    assert config.http_protocol_class is cls
    loop = asyncio.new_event_loop()
    try:
        state = ServerState()
        protocol = cls(config=config, server_state=state, app_state={}, _loop=loop)
        assert isinstance(protocol.conn, h11.Connection)
        assert protocol.connections is state.connections
        assert protocol.loop is loop and protocol.cycle is None
        assert protocol.conn.their_state is h11.IDLE
        for name in ("transport", "client", "server_state", "timeout_keep_alive_task"):
            assert hasattr(protocol, name), f"H11Protocol has no {name} attribute"
    finally:
        loop.close()


# --- plain functions ----------------------------------------------------------------------------


def test_guard_host_rules():
    from worklist_mpps.web import guard

    cfg = Config(http_allowed_hosts=["ris.example"], http_bind="10.0.0.5", http_token="x" * 20)
    allowed = guard.allowed_hosts(cfg)
    assert guard.host_refusal("ris.example:5244", allowed) is None
    assert guard.host_refusal("10.0.0.5", allowed) is None
    assert guard.host_refusal("[::1]:5244", allowed) is None
    assert guard.host_refusal("evil.example", allowed)
    assert guard.host_refusal(None, allowed) and guard.host_refusal("a/b", allowed)
    assert "0.0.0.0" not in guard.allowed_hosts(Config(http_bind="0.0.0.0", http_token="x"))


def test_new_settings_are_validated():
    from worklist_mpps.config import ConfigError, load_config

    for key, value in (
        ("http_allowed_hosts", "evil.example:80"),
        ("http_allowed_hosts", "a/b"),
        ("http_cors_origins", "*"),
        ("http_cors_origins", "https://a.example/x"),
        ("http_header_timeout", "0"),
        ("http_max_connections", "0"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(env={}, overrides={key: value})
    cfg = load_config(
        env={
            "WORKLIST_MPPS_HTTP_ALLOWED_HOSTS": "a.example, [fd00::1]",
            "WORKLIST_MPPS_HTTP_CORS_ORIGINS": "https://ris.example:8443",
        }
    )
    assert cfg.http_allowed_hosts == ["a.example", "[fd00::1]"]
    assert (cfg.http_header_timeout, cfg.http_max_connections) == (10.0, 1000)


def test_guard_origin_and_media_rules():
    from worklist_mpps.web import guard

    refuse = guard.origin_refusal
    assert refuse("GET", EVIL, "cross-site", "127.0.0.1:5244", []) is None
    assert refuse("POST", EVIL, None, "127.0.0.1:5244", [])
    assert refuse("POST", EVIL, None, "127.0.0.1:5244", [EVIL]) is None
    assert refuse("POST", "http://127.0.0.1:5244", None, "127.0.0.1:5244", []) is None
    assert refuse("DELETE", None, "cross-site", "127.0.0.1:5244", [])
    assert refuse("POST", None, "none", "127.0.0.1:5244", []) is None
    media = guard.media_refusal
    assert media("POST", "/api/patients", "application/json", True) is None
    assert media("POST", "/api/patients", None, False)
    assert media("PATCH", "/modality-performed-procedure-steps/1", "text/plain", True)
    assert (
        media(
            "POST",
            "/modality-performed-procedure-steps/1",
            'multipart/related; type="application/dicom+xml"; boundary=b',
            True,
        )
        is None
    )
    assert media("GET", "/modality-scheduled-procedure-steps", None, False) is None


def test_authorization_is_compared_as_bytes():
    from worklist_mpps.web.app import authenticated_user

    cfg = Config(http_token=TOKEN)
    header = (b"Bearer " + TOKEN.encode()).decode("latin-1")  # as Starlette decodes it
    assert authenticated_user(header, cfg) == "token"
    assert authenticated_user("Bearer tökén", cfg) is False
    cfg = Config(http_username=USER, http_password=PASSWORD)
    assert authenticated_user(basic(USER, PASSWORD).decode("latin-1"), cfg) == USER
    assert authenticated_user("Basic äö", cfg) is False


def test_dicom_json_model_checks():
    from worklist_mpps.web import dicomjson
    from worklist_mpps.web.dicomjson import DicomJSONError, check_model, from_json

    assert dicomjson.MAX_SEQUENCE_DEPTH == MAX_SEQUENCE_DEPTH
    check_model(nested_json(MAX_SEQUENCE_DEPTH))
    with pytest.raises(DicomJSONError, match="nested deeper"):
        check_model(nested_json(MAX_SEQUENCE_DEPTH + 1))
    with pytest.raises(DicomJSONError):
        from_json(b"[" * 100_000)
    with pytest.raises(DicomJSONError, match="NaN"):
        from_json(b'{"00189089": {"vr": "FD", "Value": [NaN]}}')
    with pytest.raises(DicomJSONError, match="finite"):
        check_model({"00189089": {"vr": "DS", "Value": ["-inf"]}})
    from_xml(nested_xml(MAX_SEQUENCE_DEPTH))
    with pytest.raises(XMLError, match="nested deeper"):
        from_xml(nested_xml(MAX_SEQUENCE_DEPTH + 1))


def test_item_text_fields_refuse_control_characters_and_backslash():
    with pytest.raises(ItemError) as err:
        normalize_patient({"patient_name": "A\\B"})
    assert err.value.field == "patient.patient_name"
    with pytest.raises(ItemError) as err:
        normalize_item({"sps_description": "x\ny"})
    assert err.value.field == "sps_description"
    assert normalize_patient({"patient_name": "Müller^Hans=ミュラー"})["patient_name"]


def test_a_client_trickling_its_body_is_dropped(live_server):
    """Headers at once, then the body a byte at a time: 408 and closed after
    http_body_timeout, nothing created, the server keeps serving."""
    server = live_server(None, "--http-body-timeout", "2")

    def patients() -> int:
        with urllib.request.urlopen(f"{server.http_url}/api/patients", timeout=5) as rsp:
            return json.loads(rsp.read())["total"]

    before = patients()
    head = (
        b"POST /api/patients HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    with socket.create_connection(("127.0.0.1", server.http_port), 5) as slow:
        slow.sendall(head)
        answer = closed_by_server(slow, trickle=True, within=15)
    assert answer is not None, "a client trickling its body was never dropped"
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert patients() == before
    log = server.log()
    assert "http_body_timeout" in log and "Traceback" not in log
    assert " 500" not in log, log
