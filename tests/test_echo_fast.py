"""The Verification fast path (echo_fast.py, issue 18): what it sends is what the ordinary
path sends for the same bytes, byte for byte, and whatever it does not answer itself goes
to the ordinary path unchanged.

Two in-process servers: dimse_fast_path on (Verification-only associations answered by
echo_fast.py: ``served`` counts them) and off (pynetdicom's own path throughout). A raw
client plays the same script against both and the transcripts of what came back must be
equal."""

from __future__ import annotations

import json
import struct
import subprocess
import time

import pytest
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from dicom_clients import associate
from fuzz_wire import (
    RELEASE_RQ,
    Wire,
    command,
    echo_rq,
    el_i,
    find_rq,
    message,
    n_create_rq,
    pdu,
    pdv,
    us,
)
from worklist_mpps.config import load_config
from worklist_mpps.context import AppContext
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.dimse.pynetdicom_ext.echo_fast import parse_request
from worklist_mpps.dimse.server import DicomServer

pytestmark = pytest.mark.dimse  # both paths are chosen here, whatever --dimse-fast-path says

VERIFICATION = b"1.2.840.10008.1.1"
MWL = str(ModalityWorklistInformationFind).encode()
IMPLICIT, EXPLICIT = b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1"
BIG = b"1.2.840.10008.1.2.2"
APP = b"1.2.840.10008.3.1.1.1"
DEVICES = [
    {"ae_title": "CT01", "hosts": ["127.0.0.1"]},
    {"ae_title": "US01", "hosts": ["10.9.9.9"]},
]


def item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def rq(
    contexts=((1, VERIFICATION, (IMPLICIT,)),),
    calling: bytes = b"ECHOSCU",
    called: bytes = b"WORKLISTS",
    user: bytes | None = None,
    version: int = 1,
    app: bytes = APP,
) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2)."""
    if user is None:
        user = item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.3.4") + item(0x55, b"RAW_1")
    body = (
        struct.pack(">HH", version, 0)
        + called.ljust(16)
        + calling.ljust(16)
        + bytes(32)
        + item(0x10, app)
        + b"".join(
            item(
                0x20, bytes((cid, 0, 0, 0)) + item(0x30, sop) + b"".join(item(0x40, t) for t in ts)
            )
            for cid, sop, ts in contexts
        )
        + item(0x50, user)
    )
    return struct.pack(">BxL", 0x01, len(body)) + body


def echo(pcid: int, mid: int) -> bytes:
    return message(pcid, command(echo_rq(mid)))


def _server(tmp_path, name: str, fast: bool, **overrides) -> DicomServer:
    db = Database(f"sqlite:///{tmp_path / (name + '.db')}")
    migrate.upgrade(db.engine)
    env = (
        {"WORKLIST_MPPS_DEVICES": json.dumps(overrides.pop("devices"))}
        if "devices" in overrides
        else {}
    )
    config = load_config(
        env=env,
        overrides={"bind": "127.0.0.1", "port": 0, "dimse_fast_path": fast, **overrides},
    )
    server = DicomServer(AppContext(config, db))
    server.start()
    server.db = db  # type: ignore[attr-defined]  # disposed by the fixture
    return server


@pytest.fixture
def servers(tmp_path):
    """factory(**config) -> (fast path server, ordinary server)."""
    started: list[DicomServer] = []

    def start(**overrides) -> tuple[DicomServer, DicomServer]:
        pair = (
            _server(tmp_path, f"on{len(started)}", True, **dict(overrides)),
            _server(tmp_path, f"off{len(started)}", False, **dict(overrides)),
        )
        started.extend(pair)
        assert pair[0].echo_fast is not None and pair[1].echo_fast is None
        return pair

    yield start
    for server in started:
        server.stop(grace=2)
        server.db.dispose()  # type: ignore[attr-defined]


def transcript(port: int, steps: list[bytes], pause: float = 0.0, wait: float = 3.0) -> list:
    """Send each step and read what the server sends back until it goes quiet (0.3 s),
    closes or (after the last step) closes: [(step, [(kind, pdu type, body), ...])]."""
    wire = Wire(port)
    out = []
    try:
        for n, step in enumerate(steps):
            if step:
                wire.send(step)
            if pause:
                time.sleep(pause)
            got = []
            last = n == len(steps) - 1
            while True:
                kind, ptype, body = wire.read_pdu(wait if last or not got else 0.3)
                if kind == "timeout" and not last and got:
                    break
                got.append((kind, ptype, body))
                if kind != "pdu" or ptype in (0x03, 0x06, 0x07):
                    if kind == "pdu" and ptype == 0x06:
                        wire.close()
                    break
                if ptype in (0x02, 0x04) and not last:
                    break
            out.append(got)
            if got and got[-1][0] != "pdu":
                break
    finally:
        wire.close()
    return out


def both(pair, steps: list[bytes], **kwargs) -> tuple[list, int]:
    """The transcripts from the two servers, equal; and how many associations the fast
    path served meanwhile."""
    fast, ordinary = pair
    before = fast.echo_fast.served
    on = transcript(fast.port, steps, **kwargs)
    off = transcript(ordinary.port, steps, **kwargs)
    assert on == off
    return on, fast.echo_fast.served - before


ECHO_SCRIPTS = {
    "one echo": [rq(), echo(1, 1), RELEASE_RQ],
    "three echoes, three contexts": [
        rq(
            (
                (5, VERIFICATION, (BIG, EXPLICIT)),
                (1, VERIFICATION, (IMPLICIT,)),
                (3, VERIFICATION, (EXPLICIT, IMPLICIT)),
            )
        ),
        echo(1, 7),
        echo(3, 8),
        echo(5, 0xFFFF),
        RELEASE_RQ,
    ],
    "no version name, no maximum length": [
        rq(user=item(0x51, bytes(4)) + item(0x52, b"1.2.3")),
        echo(1, 1),
        RELEASE_RQ,
    ],
    "any called AE title": [rq(called=b"ANY-SCP"), echo(1, 2), RELEASE_RQ],
    "release at once": [rq(), RELEASE_RQ],
    "abort after an echo": [rq(), echo(1, 1), pdu(0x07, bytes(4))],
    "closed after an echo": [rq(), echo(1, 1)],
    "garbage after the AC": [rq(), b"\xff" * 10],
    "a truncated P-DATA-TF, then closed": [rq(), echo(1, 1)[:20]],
    "an oversized P-DATA-TF": [rq(), b"\x04\x00\x7f\xff\xff\xff" + bytes(10)],
    "an A-ASSOCIATE-RQ after the AC": [rq(), rq()],
    "an A-RELEASE-RP after the AC": [rq(), pdu(0x06, bytes(4))],
}


@pytest.mark.parametrize("name", list(ECHO_SCRIPTS))
def test_fast_path_sends_the_ordinary_paths_bytes(servers, name):
    on, served = both(servers(), ECHO_SCRIPTS[name])
    assert served == 1
    assert on[0][0][:2] == ("pdu", 0x02)  # accepted


FALLBACK_SCRIPTS = {
    "another context too": [
        rq(((1, VERIFICATION, (IMPLICIT,)), (3, MWL, (IMPLICIT,)))),
        echo(1, 1),
        RELEASE_RQ,
    ],
    "no transfer syntax supported": [rq(((1, VERIFICATION, (b"1.2.3",)),)), RELEASE_RQ],
    "one context without a transfer syntax supported": [
        rq(((1, VERIFICATION, (IMPLICIT,)), (3, VERIFICATION, (b"1.2.3",)))),
        echo(1, 1),
        RELEASE_RQ,
    ],
    "user identity": [
        rq(
            user=item(0x51, bytes(4))
            + item(0x52, b"1.2.3")
            + item(0x58, b"\x01\x00\x00\x03abc\x00\x00")
        ),
        echo(1, 1),
        RELEASE_RQ,
    ],
    "role selection": [
        rq(
            user=item(0x51, bytes(4))
            + item(0x52, b"1.2.3")
            + item(0x54, b"\x00\x11" + VERIFICATION + b"\x01\x01")
        ),
        echo(1, 1),
        RELEASE_RQ,
    ],
    "protocol version 2": [rq(version=2)],
    "even context ID": [rq(((2, VERIFICATION, (IMPLICIT,)),))],
    "truncated RQ, then closed": [rq()[:40]],
    "RQ length beyond what came, then closed": [rq()[:6] + b"\x00" * 20],
    "not an RQ first": [pdu(0x05, bytes(4))],
    "unknown PDU type first": [b"\x09\x00\x00\x00\x00\x02\x00\x00"],
    "A-ABORT first": [pdu(0x07, bytes(4))],
}


@pytest.mark.parametrize("name", list(FALLBACK_SCRIPTS))
def test_what_the_fast_path_does_not_answer_goes_to_the_ordinary_path(servers, name):
    _, served = both(servers(), FALLBACK_SCRIPTS[name])
    assert served == 0


def test_a_request_sent_in_pieces_is_still_answered(servers):
    """The RQ peeked at (MSG_PEEK | MSG_WAITALL) waits for its last byte."""
    fast, _ = servers()
    request = rq()
    wire = Wire(fast.port)
    try:
        for part in (request[:3], request[3:50], request[50:]):
            wire.send(part)
            time.sleep(0.1)
        assert wire.read_pdu(3)[:2] == ("pdu", 0x02)
        wire.send(echo(1, 9)[:9])
        time.sleep(0.1)
        wire.send(echo(1, 9)[9:])
        assert wire.read_pdu(3)[:2] == ("pdu", 0x04)
        wire.send(RELEASE_RQ)
        assert wire.read_pdu(3)[:2] == ("pdu", 0x06)
    finally:
        wire.close()
    assert fast.echo_fast.served == 1


def test_stalled_request_is_dropped_at_the_handshake_timeout(servers, caplog):
    fast, ordinary = servers(handshake_timeout=1)
    for server in (fast, ordinary):
        wire = Wire(server.port)
        try:
            wire.send(rq()[:30])
            started = time.monotonic()
            assert wire.read_pdu(5)[0] == "closed"
            assert 0.8 < time.monotonic() - started < 3
        finally:
            wire.close()
    assert fast.echo_fast.served == 0


def test_device_list_refusal_is_the_ordinary_paths(servers, caplog):
    pair = servers(devices=DEVICES)
    for calling in (b"NOPE", b"US01"):
        on, served = both(pair, [rq(calling=calling)])
        assert served == 0 and on[0][0][:2] == ("pdu", 0x03)
    with caplog.at_level("WARNING", "worklist_mpps.dimse"):
        on, served = both(pair, [rq(calling=b"CT01"), echo(1, 1), RELEASE_RQ])
    assert served == 1
    on, served = both(pair, [rq(calling=b"CT01", called=b"ANY-SCP")])  # checked with a device list
    assert served == 0 and on[0][0][:2] == ("pdu", 0x03)


def test_echoscu_and_pynetdicom_echo_on_the_fast_path(servers, caplog):
    fast, _ = servers()
    with caplog.at_level("INFO", "worklist_mpps.dimse"):
        proc = subprocess.run(
            [
                "echoscu",
                "-aet",
                "DCMTK",
                "-aec",
                "WORKLISTS",
                "--repeat",
                "3",
                "127.0.0.1",
                str(fast.port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assoc = associate(fast.port, Verification, ae_title="PYNET")
        try:
            assert [assoc.send_c_echo().Status for _ in range(4)] == [0] * 4
        finally:
            assoc.release()
        deadline = time.monotonic() + 3
        while "from PYNET" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert fast.echo_fast.served == 2
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Association ")]
    assert any(
        line.startswith("Association released from DCMTK@127.0.0.1:") and ": 3 requests, " in line
        for line in lines
    )
    assert any(
        line.startswith("Association released from PYNET@127.0.0.1:") and ": 4 requests, " in line
        for line in lines
    )


ECHO_COMMAND = command(echo_rq(9))
IDENTIFIER = el_i(0x00100010, b"DOE^JOHN") + el_i(0x00100020, b"")
NO_MESSAGE_ID = {k: v for k, v in echo_rq(4).items() if k != 0x00000110}

# After the AC, every message the fast path does not answer from its bytes goes through
# the ordinary path's pieces: the answers must be the same (refusal statuses, aborts)
MESSAGE_SCRIPTS = {
    "C-FIND with identifier on the Verification context (0x0211)": [
        rq(),
        message(1, command(find_rq(3, VERIFICATION.decode())), IDENTIFIER),
        echo(1, 4),
        RELEASE_RQ,
    ],
    "N-CREATE on the Verification context (0x0211)": [
        rq(),
        message(
            1,
            command({**n_create_rq(5, "1.2.3.4"), 0x00000002: VERIFICATION + b"\0"}),
            IDENTIFIER,
        ),
        echo(1, 6),
        RELEASE_RQ,
    ],
    "N-CREATE naming MPPS on the Verification context (0x0118)": [
        rq(),
        message(1, command(n_create_rq(5, "1.2.3.4")), IDENTIFIER),
        RELEASE_RQ,
    ],
    "C-ECHO naming another SOP Class (0x0122)": [
        rq(),
        message(1, command({**echo_rq(1), 0x00000002: MWL})),
        echo(1, 2),
        RELEASE_RQ,
    ],
    "C-ECHO command in 2 PDVs of one P-DATA-TF": [
        rq(),
        pdu(0x04, pdv(1, 0x01, ECHO_COMMAND[:20]) + pdv(1, 0x03, ECHO_COMMAND[20:])),
        echo(1, 10),
        RELEASE_RQ,
    ],
    "C-ECHO command over 2 P-DATA-TF PDUs": [
        rq(),
        pdu(0x04, pdv(1, 0x01, ECHO_COMMAND[:30])) + pdu(0x04, pdv(1, 0x03, ECHO_COMMAND[30:])),
        RELEASE_RQ,
    ],
    "C-ECHO command over 2 P-DATA-TF PDUs, sent apart": [
        rq(),
        pdu(0x04, pdv(1, 0x01, ECHO_COMMAND[:30])),
        pdu(0x04, pdv(1, 0x03, ECHO_COMMAND[30:])),
        RELEASE_RQ,
    ],
    "C-ECHO command in 8-byte fragments": [rq(), message(1, ECHO_COMMAND, fragment=8), RELEASE_RQ],
    "two C-ECHOs in one P-DATA-TF": [
        rq(),
        pdu(0x04, pdv(1, 0x03, command(echo_rq(1))) + pdv(1, 0x03, command(echo_rq(2)))),
        RELEASE_RQ,
    ],
    "C-ECHO without Message ID": [rq(), message(1, command(NO_MESSAGE_ID))],
    "C-ECHO-RSP": [
        rq(),
        message(1, command({**echo_rq(1), 0x00000100: b"\x30\x80", 0x00000900: bytes(2)})),
    ],
    "C-CANCEL, then an echo": [
        rq(),
        message(1, command({0x00000100: b"\xff\x0f", 0x00000120: us(1), 0x00000800: us(0x0101)})),
        echo(1, 2),
        RELEASE_RQ,
    ],
    "C-ECHO on a context not proposed": [rq(), echo(3, 1)],
    # pynetdicom serves a valid N-EVENT-REPORT-RQ in a thread of its own (0x0211 here)
    "N-EVENT-REPORT on the Verification context, then an echo": [
        rq(),
        message(
            1,
            command(
                {
                    0x00000002: VERIFICATION + b"\0",
                    0x00000100: us(0x0100),
                    0x00000110: us(7),
                    0x00000800: us(0x0101),
                    0x00001000: b"1.2.3.4\0",
                    0x00001002: us(1),
                }
            ),
        ),
        echo(1, 8),
        RELEASE_RQ,
    ],
    "data set before the command": [rq(), pdu(0x04, pdv(1, 0x02, IDENTIFIER))],
    "a P-DATA-TF with a PDV longer than the PDU": [
        rq(),
        pdu(0x04, pdv(1, 0x03, ECHO_COMMAND, length=len(ECHO_COMMAND) + 50)),
    ],
}


@pytest.mark.parametrize("name", list(MESSAGE_SCRIPTS))
def test_other_messages_get_the_ordinary_paths_answer(servers, name):
    on, served = both(servers(), MESSAGE_SCRIPTS[name])
    assert served == 1
    assert on[0][0][:2] == ("pdu", 0x02)


def test_an_oversize_data_set_gets_the_ordinary_paths_refusal(servers, caplog):
    """wire.DIMSEProvider's bound (max_message_size) on both paths: the C-FIND over it is
    answered with its resource status, the association goes on."""
    big = el_i(0x00100010, b"A" * 6000)
    find = message(1, command(find_rq(3, VERIFICATION.decode())), big, fragment=2000)
    on, served = both(servers(max_message_size=4096), [rq(), find, echo(1, 4), RELEASE_RQ])
    assert served == 1
    assert b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\xa7" in on[1][0][2]  # Status 0xA700


def test_refusals_log_the_ordinary_paths_line(servers, caplog):
    fast, _ = servers()
    find = message(1, command(find_rq(3, VERIFICATION.decode())), IDENTIFIER)
    on = transcript(fast.port, [rq(), find, RELEASE_RQ])
    assert on[1][0][:2] == ("pdu", 0x04)
    assert fast.echo_fast.served == 1
    assert any(
        r.getMessage().startswith("C-FIND from ECHOSCU@127.0.0.1 on context 1: 0x0211 ")
        for r in caplog.records
    )


def test_parse_request_takes_only_plain_verification_requests():
    assert parse_request(rq()) is not None
    assert parse_request(rq() + b"x") is None  # length field disagrees
    assert parse_request(rq(app=b"1.2.3")) is None
    assert parse_request(rq(calling=b"A\\B")) is None
    assert parse_request(rq(user=item(0x51, struct.pack(">L", 100)) + item(0x52, b"1.2"))) is None
    assert parse_request(rq(user=item(0x51, bytes(4)))) is None  # no Implementation Class UID


def test_off_means_no_fast_path(tmp_path):
    server = _server(tmp_path, "off", False)
    try:
        assert server.echo_fast is None
        assert server._server.echo_fast is None  # type: ignore[union-attr]
    finally:
        server.stop(grace=1)
        server.db.dispose()  # type: ignore[attr-defined]


def test_a_failing_set_up_is_one_log_line_and_the_listener_goes_on(servers, caplog, capfd):
    """A connection whose set-up raises (here the fast path itself) costs that connection
    only: one error line naming it, no traceback on stderr (socketserver's handle_error
    prints one), and the next association is served."""
    fast, _ = servers()
    assert fast.echo_fast is not None
    real = fast.echo_fast.serve

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    fast.echo_fast.serve = boom  # type: ignore[method-assign]
    try:
        steps = transcript(fast.port, [rq()], wait=1.0)
        assert [kind for kind, _, _ in steps[0]] == ["closed"], steps  # closed, no answer
    finally:
        fast.echo_fast.serve = real  # type: ignore[method-assign]
    assert any(
        r.getMessage() == "Connection from 127.0.0.1 failed: RuntimeError: boom"
        for r in caplog.records
    ), caplog.text
    assert "Traceback" not in capfd.readouterr().err
    assoc = associate(fast.port, Verification)
    try:
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
