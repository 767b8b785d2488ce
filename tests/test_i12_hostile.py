"""Hostile DICOM peers (issue 12, items 7-9): oversize messages, oversize PDUs on the TLS
port, idle and half-header connections. Raw sockets are the attacker; DCMTK and pynetdicom
the modality that must still be served, with the server's memory (VmRSS) bounded and
nothing stored lost. Over 400 lines: it carries its own raw PDU peer (PS3.8 9.3), which
streams multi-MiB messages without building them, as no shared helper does."""

from __future__ import annotations

import resource
import socket
import ssl
import struct
import subprocess
import threading
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS_CLASS

from conftest import SAMPLE, free_port, require_tool
from dicom_clients import associate, echo, find, worklist_query
from test_tls import pki, tls_flags  # noqa: F401 - the module's certificates fixture
from worklist_mpps.client.messages import ScheduledStep, n_create

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

MPPS = "1.2.840.10008.3.1.2.3.3"
VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"
C_FIND_RQ = 0x0020
IMPLICIT = "1.2.840.10008.1.2"
N_CREATE_RQ, C_ECHO_RQ = 0x0140, 0x0030
MiB = 1024 * 1024
FRAGMENT = 16000  # data bytes per P-DATA-TF PDU, within the server's 16382


def rss_mb(pid: int) -> float:
    """The server's resident set size (VmRSS of /proc/PID/status) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --- raw PDUs (PS3.8 9.3) ----------------------------------------------------------------


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def associate_rq(calling: str = "ATTACKER", called: str = "WORKLISTS") -> bytes:
    """A-ASSOCIATE-RQ: MPPS (context 1), Verification (3) and Modality Worklist FIND (5),
    implicit VR little endian."""
    contexts = b"".join(
        _item(
            0x20, bytes([cid, 0, 0, 0]) + _item(0x30, uid.encode()) + _item(0x40, IMPLICIT.encode())
        )
        for cid, uid in ((1, MPPS), (3, VERIFICATION), (5, MWL_FIND))
    )
    user = _item(
        0x50, _item(0x51, struct.pack(">L", 16382)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.1")
    )
    body = (
        struct.pack(">H2x", 1)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + contexts
        + user
    )
    return struct.pack(">BxL", 0x01, len(body)) + body


def pdata(context_id: int, flags: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU of one PDV (PS3.8 9.3.5, E.2: bit 0 command, bit 1 last)."""
    pdv = struct.pack(">LBB", len(data) + 2, context_id, flags) + data
    return struct.pack(">BxL", 0x04, len(pdv)) + pdv


def command(**elements) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def oversize_n_create(uid: str, size: int) -> tuple[bytes, bytes, int]:
    """(command set, data set start, bytes of zeros that follow): a valid MPPS N-CREATE
    attribute list, then a private OB element of ``size`` bytes at its end."""
    ds = n_create(
        [ScheduledStep(generate_uid())],
        modality="CT",
        station_ae_title="HOSTILE",
        patient_name="Hostile^Peer",
        patient_id="HP1",
    )
    ds.add_new(0x7FE10010, "LO", "HOSTILE")
    start = encode(ds, True, True) + struct.pack("<HHL", 0x7FE1, 0x1000, size)
    cmd = command(
        AffectedSOPClassUID=MPPS,
        CommandField=N_CREATE_RQ,
        MessageID=7,
        CommandDataSetType=0x0001,
        AffectedSOPInstanceUID=uid,
    )
    return cmd, start, size


class Peer:
    """One raw TCP (or TLS) connection to the server."""

    def __init__(
        self,
        port: int,
        source: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        timeout: float = 20,
    ) -> None:
        raw = socket.socket()
        raw.bind((source, 0))
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", port))
        self.sock = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw

    def close(self) -> None:
        self.sock.close()

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def pdu(self) -> tuple[int, bytes]:
        """(type, body) of the next PDU from the server."""
        header = self._exact(6)
        return header[0], self._exact(int.from_bytes(header[2:6], "big"))

    def associate(self) -> None:
        self.sock.sendall(associate_rq())
        kind, _ = self.pdu()
        assert kind == 0x02, f"A-ASSOCIATE-AC expected, got PDU type {kind:#x}"

    def response(self) -> Dataset:
        """The command set of the next DIMSE message from the server."""
        data = b""
        while True:
            kind, body = self.pdu()
            assert kind == 0x04, f"P-DATA-TF expected, got PDU type {kind:#x}"
            pos = 0
            while pos < len(body):
                length, flags = int.from_bytes(body[pos : pos + 4], "big"), body[pos + 5]
                if flags & 1:
                    data += body[pos + 6 : pos + 4 + length]
                    if flags & 2:
                        return decode(BytesIO(data), True, True)
                pos += 4 + length

    def send_message(self, context_id: int, cmd: bytes, start: bytes = b"", zeros: int = 0) -> None:
        """A message in FRAGMENT-sized PDUs, the data set streamed, never built whole."""
        self.sock.sendall(pdata(context_id, 0x03, cmd))
        if not start and not zeros:
            return
        total, sent, buffered = len(start) + zeros, 0, start
        block = bytes(FRAGMENT)
        while sent < total:
            if len(buffered) < FRAGMENT:
                buffered += block[: min(FRAGMENT, total - sent - len(buffered))]
            piece, buffered = buffered[:FRAGMENT], buffered[FRAGMENT:]
            sent += len(piece)
            self.sock.sendall(pdata(context_id, 0x02 if sent >= total else 0x00, piece))

    def echo(self) -> int:
        self.send_message(
            3,
            command(
                AffectedSOPClassUID=VERIFICATION,
                CommandField=C_ECHO_RQ,
                MessageID=8,
                CommandDataSetType=0x0101,
            ),
        )
        return int(self.response().Status)


def legitimate_client_is_served(port: int) -> None:
    assert echo(port) == 0
    statuses, found = find(port, worklist_query(AccessionNumber="A10001"))
    assert statuses[-1].Status == 0 and len(found) == 1


def stored_mpps(port: int) -> str:
    """N-CREATE one MPPS the ordinary way; its UID."""
    uid = generate_uid()
    assoc = associate(port, MPPS_CLASS, ae_title="MODALITY1")
    try:
        ds = n_create(
            [ScheduledStep(generate_uid())],
            modality="CT",
            station_ae_title="MODALITY1",
            patient_name="Kept^Patient",
            patient_id="KP1",
        )
        status, _ = assoc.send_n_create(ds, MPPS_CLASS, uid)
        assert status.Status == 0
    finally:
        assoc.release()
    return uid


def n_get_status(port: int, uid: str) -> int:
    assoc = associate(port, MPPS_CLASS, ae_title="MODALITY1")
    try:
        status, _ = assoc.send_n_get([0x00400252], MPPS_CLASS, uid)
        return int(status.Status)
    finally:
        assoc.release()


# --- 7. bounded messages ---------------------------------------------------------------


PEERS, PER_PEER, LIMIT = 32, 4 * MiB, 1 * MiB  # the 32 concurrent peers


def test_oversize_messages_get_0213_without_being_buffered(live_server):
    """32 peers from their own addresses each stream a 4 MiB N-CREATE in 16 KB PDUs to a
    server with max_message_size 1 MiB: each gets 0x0213 Resource limitation naming the
    limit, its association still answers C-ECHO, the server's RSS grows by less than
    the limit times the peers (plus slack), a modality is served throughout, and an MPPS
    stored before is still there while the oversize ones were not stored."""
    server = live_server(
        None,
        "--sample-file",
        str(SAMPLE),
        "--max-message-size",
        str(LIMIT),
        "--max-associations",
        str(PEERS + 8),  # the peers, and the modality served beside them
    )
    kept = stored_mpps(server.port)
    legitimate_client_is_served(server.port)  # warm: caches, first association threads
    before = rss_mb(server.proc.pid)
    peak = [before]
    results: dict[int, object] = {}
    uids = [generate_uid() for _ in range(PEERS)]

    def attack(n: int) -> None:
        try:
            peer = Peer(server.port, source=f"127.0.0.{10 + n}")
            try:
                peer.associate()
                peer.send_message(1, *oversize_n_create(uids[n], PER_PEER))
                rsp = peer.response()
                results[n] = (int(rsp.Status), str(rsp.get("ErrorComment", "")), peer.echo())
            finally:
                peer.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            results[n] = exc

    threads = [threading.Thread(target=attack, args=(n,), daemon=True) for n in range(PEERS)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(rss_mb(server.proc.pid))
        legitimate_client_is_served(server.port)
        for t in threads:
            t.join(0.2)
    for t in threads:
        t.join(60)
    peak.append(rss_mb(server.proc.pid))
    growth = max(peak) - before
    print(f"RSS {before:.0f} MB, peak +{growth:.0f} MB; results {results}")
    assert all(
        results.get(n) == (0x0213, f"Message over max_message_size of {LIMIT} bytes", 0)
        for n in range(PEERS)
    ), results
    assert growth < PEERS * LIMIT / MiB + 40, f"RSS grew by {growth:.0f} MB"
    legitimate_client_is_served(server.port)
    assert n_get_status(server.port, kept) == 0
    assert n_get_status(server.port, uids[0]) == 0x0112  # not stored
    log = server.log()
    assert "more than max_message_size" in log and "Traceback" not in log


def test_the_message_bound_counts_the_whole_message_not_one_pdu(live_server):
    """A message just under the bound is served as ever (here refused on its contents,
    not on its size); the bound is the message's, across all its PDUs."""
    server = live_server(None, "--sample-file", str(SAMPLE), "--max-message-size", str(LIMIT))
    peer = Peer(server.port)
    try:
        peer.associate()
        uid = generate_uid()
        cmd, start, _ = oversize_n_create(uid, LIMIT // 2)
        peer.send_message(1, cmd, start, LIMIT // 2)
        assert int(peer.response().Status) != 0x0213
        cmd, start, _ = oversize_n_create(generate_uid(), LIMIT)  # over by its attributes
        peer.send_message(1, cmd, start, LIMIT)
        assert int(peer.response().Status) == 0x0213
        assert peer.echo() == 0
    finally:
        peer.close()


def test_an_oversize_c_find_gets_a700_and_the_association_goes_on(live_server):
    """A C-FIND-RQ whose identifier passes max_message_size: 0xA700 Out of Resources
    (PS3.4 K.4.1.1.4) naming the limit, then an ordinary C-FIND on the same association
    is answered."""
    server = live_server(None, "--sample-file", str(SAMPLE), "--max-message-size", str(LIMIT))
    peer = Peer(server.port)
    try:
        peer.associate()
        query = worklist_query(AccessionNumber="A10001")
        find_rq = command(
            AffectedSOPClassUID=MWL_FIND,
            CommandField=C_FIND_RQ,
            MessageID=9,
            Priority=0,
            CommandDataSetType=0x0001,
        )
        identifier = encode(query, True, True)
        peer.send_message(
            5, find_rq, identifier + struct.pack("<HHL", 0x7FE1, 0x1000, 2 * LIMIT), 2 * LIMIT
        )
        rsp = peer.response()
        assert (int(rsp.Status), rsp.ErrorComment) == (
            0xA700,
            f"Message over max_message_size of {LIMIT} bytes",
        )
        peer.send_message(5, find_rq, identifier)
        statuses = [int(peer.response().Status), int(peer.response().Status)]
        assert statuses == [0xFF00, 0x0000]
    finally:
        peer.close()


# --- 8. the TLS port obeys the plain port's limits ----------------------------------------


def tls_echoscu(pki_dir, port: int, *timeouts: str) -> subprocess.CompletedProcess:
    """DCMTK echoscu over TLS with the test PKI's client certificate."""
    return subprocess.run(
        [
            require_tool("echoscu"),
            "+tls",
            str(pki_dir / "client.key"),
            str(pki_dir / "client.crt"),
            "+cf",
            str(pki_dir / "ca.crt"),
            *timeouts,
            "-aec",
            "WORKLISTS",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        timeout=30,
    )


def _client_tls(pki_dir) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki_dir / "ca.crt"))
    context.load_cert_chain(str(pki_dir / "client.crt"), str(pki_dir / "client.key"))
    return context


@pytest.mark.parametrize("pdu_type", [0x01, 0x04], ids=["A-ASSOCIATE-RQ", "P-DATA-TF"])
def test_tls_pdu_over_the_limit_is_aborted_unread(live_server, pki, pdu_type):  # noqa: F811
    """A PDU header claiming 300 MB on the TLS port, before any association: A-ABORT
    (reason 6, invalid PDU parameter value) right after the header; the server does not
    read on (RSS stays put) and keeps serving TLS and plain clients."""
    port = free_port()
    server = live_server(None, "--sample-file", str(SAMPLE), *tls_flags(pki, port))
    context = _client_tls(pki)
    before = rss_mb(server.proc.pid)
    peer = Peer(port, tls=context, timeout=5)
    sent = 0
    try:
        peer.sock.sendall(struct.pack(">BxL", pdu_type, 300_000_000))
        chunk = bytes(MiB)
        try:
            while sent < 32 * MiB:  # what an attacker would go on sending
                peer.sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        growth = rss_mb(server.proc.pid) - before
        try:
            kind, body = peer.pdu()
        except (OSError, ConnectionError):
            kind, body = None, b""
    finally:
        peer.close()
    print(f"sent {sent / MiB:.0f} MiB, RSS +{growth:.0f} MB, answer {kind}")
    assert kind == 0x07 and body[3] == 0x06, "no A-ABORT (invalid PDU parameter value)"
    assert growth < 16, f"RSS grew by {growth:.0f} MB"
    pki_echo = tls_echoscu(pki, port, "-to", "5")
    assert pki_echo.returncode == 0, pki_echo.stderr
    legitimate_client_is_served(server.port)


def test_idle_connections_on_the_tls_port_do_not_block_its_listener(live_server, pki):  # noqa: F811
    """TCP connections that never start TLS: the TLS handshake runs in each connection's
    own thread under the handshake timeout, not in the listener, so DCMTK's echoscu over
    TLS (2 s timeouts) gets in meanwhile."""
    port = free_port()
    server = live_server(None, "--sample-file", str(SAMPLE), *tls_flags(pki, port))
    idle = [Peer(port, source="127.0.0.2") for _ in range(3)]
    try:
        done = tls_echoscu(pki, port, "-to", "2", "-ta", "2")
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    finally:
        for peer in idle:
            peer.close()
    legitimate_client_is_served(server.port)


# --- 9. idle connections cannot lock modalities out ---------------------------------------


def test_idle_and_half_header_connections_do_not_take_association_slots(live_server):
    """200 connections from 127.0.0.2, idle or stalled within a PDU header: echoscu (2 s
    timeouts) from 127.0.0.1 still gets in, C-FIND is served, the held connections are
    dropped (per-address cap at once, the rest after the handshake timeout), RSS stays
    bounded and the log does not get a line per connection."""
    echoscu = require_tool("echoscu")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:  # 200 sockets here, and the clients' own
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))
    server = live_server(None, "--sample-file", str(SAMPLE))
    before = rss_mb(server.proc.pid)
    held: list[socket.socket] = []
    try:
        for n in range(200):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            if n % 3 == 1:
                sock.sendall(b"\x01\x00\x00")  # half a PDU header
            elif n % 3 == 2:
                sock.sendall(b"\x01\x00\x00\x00\x00\xcd")  # an A-ASSOCIATE-RQ header only
            held.append(sock)
        done = subprocess.run(
            [echoscu, "-to", "2", "-ta", "2", "-aec", "WORKLISTS", "127.0.0.1", str(server.port)],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
        legitimate_client_is_served(server.port)
        growth = rss_mb(server.proc.pid) - before
        open_left = 0
        for sock in held:  # each is closed by the server: at accept or after the timeout
            try:
                sock.settimeout(15)
                open_left += sock.recv(1) != b""
            except TimeoutError:
                open_left += 1
            except OSError:
                pass
    finally:
        for sock in held:
            sock.close()
    print(f"RSS +{growth:.0f} MB with 200 held connections; {open_left} left open")
    assert open_left == 0
    assert growth < 30, f"RSS grew by {growth:.0f} MB"
    lines = [line for line in server.log().splitlines() if "127.0.0.2" in line]
    assert 0 < len(lines) <= 40 and "Traceback" not in server.log(), len(lines)
    legitimate_client_is_served(server.port)


def test_the_gate_counts_slots_pending_and_addresses_apart():
    """admission.py directly: association slots, pending connections (the oldest evicted
    when they are full) and connections per address are three counts."""
    from worklist_mpps.dimse.admission import ConnectionGate

    gate = ConnectionGate(max_associations=1, max_pending=2, per_address=2)
    evicted = []
    a1, _ = gate.admit("10.0.0.1")
    a2, _ = gate.admit("10.0.0.1")
    a1.evict, a2.evict = (lambda: evicted.append("a1")), (lambda: evicted.append("a2"))
    refused, why = gate.admit("10.0.0.1")
    assert a1 and a2 and refused is None and "max_connections_per_address" in why
    b1, _ = gate.admit("10.0.0.2")  # two pending already: the oldest makes room
    assert b1 is not None and evicted == ["a1"] and gate.pending == 2
    assert not a1.promote()  # evicted: no slot for its A-ASSOCIATE-RQ
    assert a2.promote() and not b1.promote()  # one association slot
    a1.release()
    a1.release()  # idempotent
    assert gate.pending == 1 and gate.associated == 1 and gate.by_address["10.0.0.1"] == 1
    a2.release()
    assert b1.promote()
    b1.release()
    assert gate.pending == gate.associated == 0 and not gate.by_address


def test_a_flood_of_idle_connections_from_many_addresses_cannot_fill_the_handshakes(live_server):
    """40 idle connections from 40 source addresses against 8 pending places and 32
    association slots: echoscu (2 s timeouts) from 127.0.0.1 still gets in, since a new
    connection evicts the oldest pending one instead of being refused."""
    echoscu = require_tool("echoscu")
    server = live_server(
        None,
        "--sample-file",
        str(SAMPLE),
        "--max-pending-connections",
        "8",
        "--handshake-timeout",
        "30",
    )
    held = []
    try:
        for n in range(40):
            held.append(Peer(server.port, source=f"127.0.1.{n + 1}"))
        done = subprocess.run(
            [echoscu, "-to", "2", "-ta", "2", "-aec", "WORKLISTS", "127.0.0.1", str(server.port)],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
        legitimate_client_is_served(server.port)
    finally:
        for peer in held:
            peer.close()
    assert "max_pending_connections reached" in server.log()
