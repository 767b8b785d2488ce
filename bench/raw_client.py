"""A raw-socket worklist client for the 8-client rate (issue 18), run as its own process.

    python bench/raw_client.py HOST PORT CALLED_AET YYYYMMDD

It speaks bench/cpu_client.py's line protocol (open / batch / run / close / quit) for the
operations find_open and broad_open only, but costs a fraction of a pynetdicom client
(measured: pynetdicom's requestor spends ~10 ms of CPU per selective query, three times
the server's): 8 pynetdicom clients on this 2-core machine saturate it themselves, and
the rate would show the clients, not the server. Like wrk for HTTP: the request is
encoded once, each query writes it with a new Message ID and reads PDUs until the final
response, decoding only the Status of each command set.

Encoded from the standard: A-ASSOCIATE-RQ and A-RELEASE-RQ PS3.8 9.3.2 and 9.3.6,
P-DATA-TF PS3.8 9.3.5 and E.2, the C-FIND-RQ command set PS3.7 9.3.2.1, implicit VR
little endian PS3.5 A.1; the identifier is cpu_client.py's query, encoded by pydicom.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from cpu_client import query, serve

MWL = b"1.2.840.10008.5.1.4.31"
IMPLICIT = b"1.2.840.10008.1.2"
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPL_UID = b"1.2.826.0.1.3680043.9.3811.1"  # any; pynetdicom's root is fine for a bench
PCID = 1
PENDING = (0xFF00, 0xFF01)


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def _even(uid: bytes) -> bytes:
    return uid + b"\0" if len(uid) % 2 else uid


def associate_rq(calling: str, called: str) -> bytes:
    """A-ASSOCIATE-RQ proposing MWL FIND with implicit VR little endian (PS3.8 9.3.2)."""
    context = bytes([PCID, 0, 0, 0]) + _item(0x30, MWL) + _item(0x40, IMPLICIT)
    user = _item(0x51, struct.pack(">L", 0)) + _item(0x52, IMPL_UID)
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + b"\0" * 32
        + _item(0x10, APP_CONTEXT)
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return struct.pack(">BxL", 0x01, len(body)) + body


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, elem, len(value)) + value


def find_command(message_id: int) -> bytes:
    """A C-FIND-RQ command set (PS3.7 9.3.2.1), group length first (PS3.7 6.3.1)."""
    body = (
        _element(0, 0x0002, _even(MWL))
        + _element(0, 0x0100, struct.pack("<H", 0x0020))
        + _element(0, 0x0110, struct.pack("<H", message_id))
        + _element(0, 0x0700, struct.pack("<H", 0))
        + _element(0, 0x0800, struct.pack("<H", 0x0001))
    )
    return _element(0, 0x0000, struct.pack("<L", len(body))) + body


def pdata(payload: bytes, flags: int) -> bytes:
    pdv = struct.pack(">LBB", len(payload) + 2, PCID, flags) + payload
    return struct.pack(">BxL", 0x04, len(pdv)) + pdv


def status_of(command: bytes) -> int | None:
    """(0000,0900) Status of an implicit VR little endian command set."""
    offset = 0
    while offset + 8 <= len(command):
        group, elem, length = struct.unpack_from("<HHL", command, offset)
        if (group, elem) == (0, 0x0900):
            return struct.unpack_from("<H", command, offset + 8)[0]
        offset += 8 + length
    return None


class RawClient:
    def __init__(self, host: str, port: int, called: str, day: str) -> None:
        self.host, self.port, self.called = host, port, called
        self.identifiers = {}
        for op, selective in (("find_open", True), ("broad_open", False)):
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = True, True
            write_dataset(buf, query(day, selective))
            self.identifiers[op] = pdata(buf.getvalue(), 0x02)
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.message_id = 0

    def _read(self, n: int) -> bytes:
        assert self.sock is not None
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _pdu(self) -> tuple[int, bytes]:
        pdu_type, length = struct.unpack(">BxL", self._read(6))
        return pdu_type, self._read(length)

    def open(self, kind: str) -> None:
        if kind != "find":
            raise ValueError("the raw client only queries the worklist")
        self.sock = socket.create_connection((self.host, self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(associate_rq("BENCHRAW", self.called))
        pdu_type, _ = self._pdu()
        if pdu_type != 0x02:
            raise RuntimeError(f"association refused (PDU type 0x{pdu_type:02X})")

    def find(self, op: str) -> int:
        """One C-FIND; the matches (pending responses) before a final Success."""
        assert self.sock is not None
        self.message_id = self.message_id % 0xFFFF + 1
        self.sock.sendall(pdata(find_command(self.message_id), 0x03) + self.identifiers[op])
        matches = 0
        for status, command in self.responses():
            if status in PENDING:
                matches += 1
            elif status == 0:
                return matches
            else:
                raise RuntimeError(f"C-FIND ended with status {status!r}: {command.hex()}")
        raise RuntimeError("unreachable")

    def responses(self) -> Iterator[tuple[int | None, bytes]]:
        """Each response's command set as its last fragment arrives (PS3.8 E.2), with its
        Status; data set fragments are skipped."""
        command = b""
        while True:
            pdu_type, body = self._pdu()
            if pdu_type != 0x04:
                raise RuntimeError(f"PDU type 0x{pdu_type:02X} during a C-FIND")
            offset = 0
            while offset < len(body):
                length, _, flags = struct.unpack_from(">LBB", body, offset)
                if flags & 0x01:
                    command += body[offset + 6 : offset + 4 + length]
                    if flags & 0x02:
                        yield status_of(command), command
                        command = b""
                offset += 4 + length

    def close(self) -> None:
        if self.sock is not None:
            self.sock.sendall(struct.pack(">BxL", 0x05, 4) + b"\0" * 4)
            self._pdu()  # A-RELEASE-RP
            self.sock.close()
            self.sock, self.buffer = None, b""

    def one(self, op: str) -> int:
        if op not in self.identifiers:
            raise ValueError(f"the raw client runs find_open and broad_open, not {op!r}")
        return self.find(op)


def main() -> int:
    return serve(RawClient(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))


if __name__ == "__main__":
    sys.exit(main())
