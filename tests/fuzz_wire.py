"""Fuzz harness, the wire: constants, raw PDU / DIMSE / data element builders (PS3.8 9.3,
PS3.7 6.3, PS3.5 7.1) and raw-socket conversations with the live server."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from io import BytesIO

from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)

SEED = 0x5EED_2024
FUZZ_BUDGET = 90.0  # s for all categories together; a category stops early past it
REPLY_TIMEOUT = 3.0  # s for the server's answer to one complete message
RAW_WAIT = 0.25  # s for an answer to raw bytes before we half-close the connection
MAX_ASSOCIATIONS = 32
# pynetdicom keeps the slot of a connection that closed before (or while) associating until
# the ACSE timeout: short, so that fast raw cases do not exhaust the slots
ACSE_TIMEOUT = 1
SLOT_RATE = 20
SENTINEL_ID = 0xEC40  # Message ID of the C-ECHO sent after every fuzzed message

MWL = str(ModalityWorklistInformationFind)
MPPS = str(ModalityPerformedProcedureStep)
VERIFICATION = str(Verification)

# Presentation contexts of every raw association: (pcid, abstract syntax, transfer syntax).
# The server accepts all but 11 (an abstract syntax it does not support).
CONTEXTS = [
    (1, Verification, ImplicitVRLittleEndian),
    (3, ModalityWorklistInformationFind, ImplicitVRLittleEndian),
    (5, ModalityWorklistInformationFind, ExplicitVRLittleEndian),
    (7, ModalityPerformedProcedureStep, ImplicitVRLittleEndian),
    (9, ModalityPerformedProcedureStep, ExplicitVRLittleEndian),
    (11, CTImageStorage, ImplicitVRLittleEndian),
    (13, ModalityWorklistInformationFind, DeflatedExplicitVRLittleEndian),
    (15, ModalityPerformedProcedureStep, ExplicitVRBigEndian),
]
PC_ECHO, PC_FIND_I, PC_FIND_E, PC_MPPS_I, PC_MPPS_E, PC_REJECTED, PC_FIND_DEFL, PC_MPPS_BE = (
    c[0] for c in CONTEXTS
)

PENDING = (0xFF00, 0xFF01)


# --- PDU and DIMSE encoding ---------------------------------------------------------------


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def pdv(pcid: int, mch: int, data: bytes, length: int | None = None) -> bytes:
    return struct.pack(">LBB", len(data) + 2 if length is None else length, pcid, mch) + data


RELEASE_RQ = pdu(0x05, b"\x00" * 4)
ABORT_RQ = pdu(0x07, b"\x00\x00\x00\x00")


def el_i(tag: int, value: bytes, length: int | None = None) -> bytes:
    """One Implicit VR Little Endian element (exact bytes: no padding added)."""
    return (
        struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value) if length is None else length)
        + value
    )


LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def el_e(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element."""
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), n & 0xFFFF) + value


def ui(uid: str) -> bytes:
    data = uid.encode()
    return data + b"\x00" if len(data) % 2 else data


def us(n: int) -> bytes:
    return struct.pack("<H", n & 0xFFFF)


def command(fields: dict[int, bytes], group_length: int | None = None) -> bytes:
    """An Implicit VR LE command set, Command Group Length first."""
    body = b"".join(el_i(t, v) for t, v in sorted(fields.items()))
    return (
        el_i(0x00000000, struct.pack("<I", len(body) if group_length is None else group_length))
        + body
    )


def echo_rq(mid: int) -> dict[int, bytes]:
    return {
        0x00000002: ui(VERIFICATION),
        0x00000100: us(0x0030),
        0x00000110: us(mid),
        0x00000800: us(0x0101),
    }


def find_rq(mid: int, sop: str = MWL) -> dict[int, bytes]:
    return {
        0x00000002: ui(sop),
        0x00000100: us(0x0020),
        0x00000110: us(mid),
        0x00000700: us(0),
        0x00000800: us(0x0001),
    }


def n_create_rq(mid: int, uid: str | None) -> dict[int, bytes]:
    fields = {
        0x00000002: ui(MPPS),
        0x00000100: us(0x0140),
        0x00000110: us(mid),
        0x00000800: us(0x0001),
    }
    if uid is not None:
        fields[0x00001000] = ui(uid)
    return fields


def n_set_rq(mid: int, uid: str) -> dict[int, bytes]:
    return {
        0x00000003: ui(MPPS),
        0x00000100: us(0x0120),
        0x00000110: us(mid),
        0x00000800: us(0x0001),
        0x00001001: ui(uid),
    }


def n_get_rq(mid: int, uid: str, tags: bytes | None) -> dict[int, bytes]:
    fields = {
        0x00000003: ui(MPPS),
        0x00000100: us(0x0110),
        0x00000110: us(mid),
        0x00000800: us(0x0101),
        0x00001001: ui(uid),
    }
    if tags is not None:
        fields[0x00001005] = tags
    return fields


def message(pcid: int, cmd: bytes, data: bytes | None = None, fragment: int = 0) -> bytes:
    """P-DATA-TF PDUs of one DIMSE message (command, then data set, ``fragment`` bytes
    per PDV when non-zero)."""

    def pdvs(payload: bytes, bit: int) -> Iterator[bytes]:
        size = fragment or max(1, len(payload))
        parts = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for n, part in enumerate(parts):
            yield pdu(0x04, pdv(pcid, bit | (0x02 if n == len(parts) - 1 else 0), part))

    out = b"".join(pdvs(cmd, 0x01))
    if data is not None:
        out += b"".join(pdvs(data, 0x00))
    return out


SENTINEL = message(PC_ECHO, command(echo_rq(SENTINEL_ID)))


def ds_bytes(ds: Dataset, implicit: bool = True) -> bytes:
    data = encode(ds, implicit, True)
    assert data is not None, "test dataset could not be encoded"
    return data


# --- raw connections -----------------------------------------------------------------------


PDU_NAMES = {
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}


class Wire:
    """One TCP connection to the server, read PDU by PDU with deadlines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:  # the server closed or reset the connection meanwhile
            return False

    def half_close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError:
                chunk = b""
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_pdu(self, timeout: float) -> tuple[str, int, bytes]:
        """('pdu', type, body), ('closed', 0, b'') or ('timeout', 0, b'')."""
        deadline = time.monotonic() + timeout
        try:
            if not self._fill(6, deadline):
                return "closed", 0, b""
            ptype, _, length = struct.unpack(">BBL", self.buf[:6])
            if not self._fill(6 + length, deadline):
                return "closed", 0, b""
        except TimeoutError:
            return "timeout", 0, b""
        body = bytes(self.buf[6 : 6 + length])
        del self.buf[: 6 + length]
        return "pdu", ptype, body


class Reassembler:
    """The command sets of the server's DIMSE messages, from its P-DATA-TF PDUs."""

    def __init__(self) -> None:
        self.cmd = bytearray()

    def feed(self, body: bytes) -> list[Dataset]:
        out, i = [], 0
        while i + 6 <= len(body):
            (n,) = struct.unpack(">L", body[i : i + 4])
            mch, data = body[i + 5], body[i + 6 : i + 4 + n]
            i += 4 + n
            if mch & 0x01:
                self.cmd += data
                if mch & 0x02:
                    try:
                        out.append(decode(BytesIO(bytes(self.cmd)), True, True))
                    except Exception:  # noqa: BLE001 - a reply we cannot read is an outcome
                        out.append(Dataset())
                    self.cmd = bytearray()
        return out


def converse(
    wire: Wire, timeout: float, until_sentinel: bool = True
) -> tuple[list[tuple[int | None, int | None]], str]:
    """Read the server's answers: ([(message id responded to, status)], how it ended)."""
    rx, responses = Reassembler(), []
    deadline = time.monotonic() + timeout
    while True:
        kind, ptype, body = wire.read_pdu(max(0.01, deadline - time.monotonic()))
        if kind != "pdu":
            return responses, kind
        if ptype == 0x04:
            for cmd in rx.feed(body):
                mid = cmd.get("MessageIDBeingRespondedTo")
                responses.append(
                    (
                        None if mid is None else int(mid),
                        None if cmd.get("Status") is None else int(cmd.Status),
                    )
                )
                if until_sentinel and mid == SENTINEL_ID:
                    return responses, "sentinel"
            continue
        return responses, PDU_NAMES.get(ptype, f"PDU 0x{ptype:02X}")


def parse_ac(body: bytes) -> dict[int, int]:
    """{presentation context id: result} of an A-ASSOCIATE-AC body."""
    results, i = {}, 68
    while i + 4 <= len(body):
        itype, _, length = struct.unpack(">BBH", body[i : i + 4])
        if itype == 0x21 and length >= 4:
            results[body[i + 4]] = body[i + 6]
        i += 4 + length
    return results


def raw_bytes_case(port: int, data: bytes, close_after_send: bool = False) -> str:
    """Send bytes on a fresh connection (no association yet); what did the server do?"""
    wire = Wire(port)
    try:
        sent = wire.send(data)
        if close_after_send:
            return "client closed after send" if sent else "closed during send"
        kind, ptype, _body = wire.read_pdu(RAW_WAIT)
        if kind == "timeout":  # waiting for more bytes: tell it there are none
            wire.half_close()
            kind, ptype, _body = wire.read_pdu(REPLY_TIMEOUT)
            if kind == "timeout":
                return "HANG (no answer, no close after EOF)"
            if kind == "closed":
                return "closed at EOF"
        if kind == "closed":
            return "closed"
        name = PDU_NAMES.get(ptype, f"PDU 0x{ptype:02X}")
        if ptype == 0x02:  # accepted after all: release it properly
            wire.send(RELEASE_RQ)
            _, end = converse(wire, REPLY_TIMEOUT, until_sentinel=False)
            return f"{name}, then {end}"
        return name
    finally:
        wire.close()


def assoc_case(port: int, rq: bytes, payload: bytes, sentinel: bool = True) -> str:
    """Associate with ``rq``, send ``payload`` (and a C-ECHO sentinel): the outcome."""
    wire = Wire(port)
    try:
        wire.send(rq)
        kind, ptype, _body = wire.read_pdu(REPLY_TIMEOUT)
        if kind != "pdu" or ptype != 0x02:
            return f"association not accepted ({kind} {PDU_NAMES.get(ptype, ptype)})"
        wire.send(payload + (SENTINEL if sentinel else b""))
        responses, end = converse(wire, REPLY_TIMEOUT, until_sentinel=sentinel)
        answers = [s for mid, s in responses if mid != SENTINEL_ID]
        final = [s for s in answers if s not in PENDING]
        if final:
            outcome = f"status 0x{final[-1]:04X}" if final[-1] is not None else "reply w/o status"
        elif answers:
            outcome = f"pending only, then {end}"
        elif end == "sentinel":
            outcome = "IGNORED (no reply; the next request was answered)"
        elif end == "timeout":
            outcome = None
        else:
            outcome = {"A-ABORT": "aborted", "closed": "closed"}.get(end, end)
        if end in ("sentinel", "timeout"):
            # still associated: release, or find out why it went quiet
            wire.send(RELEASE_RQ)
            _, end2 = converse(wire, REPLY_TIMEOUT, until_sentinel=False)
            if end2 == "timeout":
                wire.half_close()
                _, end3 = converse(wire, REPLY_TIMEOUT, until_sentinel=False)
                if end3 == "timeout":
                    return "HANG (no answer, no release, no close after EOF)"
                return outcome or "waited for more data, closed at EOF"
            if outcome is None:
                outcome = (
                    "swallowed (no reply to it nor to the next request), released"
                    if end2 == "A-RELEASE-RP"
                    else f"no reply, then {end2}"
                )
        return outcome
    finally:
        wire.close()


def show(data: bytes | str, limit: int = 160) -> str:
    if isinstance(data, str):
        return data if len(data) <= limit else data[:limit] + f"... ({len(data)} chars)"
    text = data[: limit // 2].hex(" ")
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit // 2 else "")
