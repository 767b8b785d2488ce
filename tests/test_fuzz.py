"""Bounded fuzzing of the DICOM listener: Upper Layer PDUs (PS3.8), DIMSE messages (PS3.7)
and worklist / MPPS datasets (PS3.4 Annex K, F), against one live server.

Every case is either raw bytes on a TCP connection or a request through a real pynetdicom
association. A fixed seed makes the run repeatable; counts, per-case socket timeouts and
an overall time budget keep it bounded (well under two minutes).

The server must answer each request with a DIMSE status (failures are fine) or abort /
close the association; it must not crash, hang or stop serving, must keep its database
consistent, and must not log Python tracebacks from worklist_mpps code. Known findings
have minimal regression cases at the end of the file, marked xfail(strict=True): when
one is fixed, its xfail turns into an XPASS failure and the marker should be removed.

Run: .venv/bin/pytest tests/test_fuzz.py -q -p no:cacheprovider -s
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import random
import re
import socket
import sqlite3
import struct
import sys
import time
import warnings
import zlib
from io import BytesIO
from pathlib import Path
from typing import Callable, Iterator

import pytest
from pydicom import Dataset, config as pydicom_config
from pydicom.sequence import Sequence
from pynetdicom import AE, _config as pynetdicom_config, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from conftest import SAMPLE, module_server
from dicom_clients import echo, find, worklist_query
from worklist_mpps.services.mpps import decode_dataset
from worklist_mpps.client.messages import ScheduledStep, n_create

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

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
    c[0] for c in CONTEXTS)

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
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF,
                       len(value) if length is None else length) + value


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
    return el_i(0x00000000, struct.pack("<I", len(body) if group_length is None
                                        else group_length)) + body


def echo_rq(mid: int) -> dict[int, bytes]:
    return {0x00000002: ui(VERIFICATION), 0x00000100: us(0x0030), 0x00000110: us(mid),
            0x00000800: us(0x0101)}


def find_rq(mid: int, sop: str = MWL) -> dict[int, bytes]:
    return {0x00000002: ui(sop), 0x00000100: us(0x0020), 0x00000110: us(mid),
            0x00000700: us(0), 0x00000800: us(0x0001)}


def n_create_rq(mid: int, uid: str | None) -> dict[int, bytes]:
    fields = {0x00000002: ui(MPPS), 0x00000100: us(0x0140), 0x00000110: us(mid),
              0x00000800: us(0x0001)}
    if uid is not None:
        fields[0x00001000] = ui(uid)
    return fields


def n_set_rq(mid: int, uid: str) -> dict[int, bytes]:
    return {0x00000003: ui(MPPS), 0x00000100: us(0x0120), 0x00000110: us(mid),
            0x00000800: us(0x0001), 0x00001001: ui(uid)}


def n_get_rq(mid: int, uid: str, tags: bytes | None) -> dict[int, bytes]:
    fields = {0x00000003: ui(MPPS), 0x00000100: us(0x0110), 0x00000110: us(mid),
              0x00000800: us(0x0101), 0x00001001: ui(uid)}
    if tags is not None:
        fields[0x00001005] = tags
    return fields


def message(pcid: int, cmd: bytes, data: bytes | None = None, fragment: int = 0) -> bytes:
    """P-DATA-TF PDUs of one DIMSE message (command, then data set, ``fragment`` bytes
    per PDV when non-zero)."""
    def pdvs(payload: bytes, bit: int) -> Iterator[bytes]:
        size = fragment or max(1, len(payload))
        parts = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
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


PDU_NAMES = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
             0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}


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
        body = bytes(self.buf[6:6 + length])
        del self.buf[:6 + length]
        return "pdu", ptype, body


class Reassembler:
    """The command sets of the server's DIMSE messages, from its P-DATA-TF PDUs."""

    def __init__(self) -> None:
        self.cmd = bytearray()

    def feed(self, body: bytes) -> list[Dataset]:
        out, i = [], 0
        while i + 6 <= len(body):
            (n,) = struct.unpack(">L", body[i:i + 4])
            mch, data = body[i + 5], body[i + 6:i + 4 + n]
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


def converse(wire: Wire, timeout: float, until_sentinel: bool = True
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
                responses.append((None if mid is None else int(mid),
                                  None if cmd.get("Status") is None else int(cmd.Status)))
                if until_sentinel and mid == SENTINEL_ID:
                    return responses, "sentinel"
            continue
        return responses, PDU_NAMES.get(ptype, f"PDU 0x{ptype:02X}")


def parse_ac(body: bytes) -> dict[int, int]:
    """{presentation context id: result} of an A-ASSOCIATE-AC body."""
    results, i = {}, 68
    while i + 4 <= len(body):
        itype, _, length = struct.unpack(">BBH", body[i:i + 4])
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
        kind, ptype, body = wire.read_pdu(RAW_WAIT)
        if kind == "timeout":  # waiting for more bytes: tell it there are none
            wire.half_close()
            kind, ptype, body = wire.read_pdu(REPLY_TIMEOUT)
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
        kind, ptype, body = wire.read_pdu(REPLY_TIMEOUT)
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
                outcome = ("swallowed (no reply to it nor to the next request), released"
                           if end2 == "A-RELEASE-RP" else f"no reply, then {end2}")
        return outcome
    finally:
        wire.close()


# --- server log -----------------------------------------------------------------------------

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): ", re.M)
FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


class LogTail:
    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size

    def read(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace")


@dataclasses.dataclass(frozen=True)
class Traceback:
    logger: str
    message: str
    exception: str
    ours: bool  # logged by worklist_mpps, or raised through worklist_mpps code
    where: str  # innermost worklist_mpps frame, else innermost frame
    origin: str  # innermost frame: where the exception was raised

    @property
    def signature(self) -> str:
        return f"{self.logger} | {self.exception.split(':')[0]} | {self.where}"


def tracebacks(text: str) -> list[Traceback]:
    found = []
    starts = [m.start() for m in RECORD.finditer(text)] + [len(text)]
    for a, b in zip(starts, starts[1:]):
        record = text[a:b]
        if "Traceback (most recent call last)" not in record:
            continue
        m = RECORD.match(record)
        lines = record.rstrip().splitlines()
        exc = next((ln for ln in reversed(lines) if ln and not ln.startswith(" ")), "?")
        frames = FRAME.findall(record)
        own = [f for f in frames if "/worklist_mpps/" in f[0]]
        inner = (own or frames or [("?", "?", "?")])[-1]
        where = f"{Path(inner[0]).name}:{inner[1]} {inner[2]}"
        origin = frames[-1][0] if frames else "?"
        found.append(Traceback(m.group(2), lines[0][m.end():][:120], exc[:200],
                               m.group(2).startswith("worklist_mpps") or bool(own), where,
                               origin))
    return found


# --- the run --------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    category: str
    label: str
    data: bytes | str  # what was sent (bytes, or a dataset description)
    outcome: str = ""
    seconds: float = 0.0
    log: str = ""


@dataclasses.dataclass
class Report:
    cases: list[Case] = dataclasses.field(default_factory=list)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    liveness: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def by_category(self) -> dict[str, collections.Counter]:
        out: dict[str, collections.Counter] = {}
        for c in self.cases:
            out.setdefault(c.category, collections.Counter())[c.outcome] += 1
        return out


def show(data: bytes | str, limit: int = 160) -> str:
    if isinstance(data, str):
        return data if len(data) <= limit else data[:limit] + f"... ({len(data)} chars)"
    text = data[:limit // 2].hex(" ")
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit // 2 else "")


class Fuzzer:
    def __init__(self, server, captured: dict, report: Report) -> None:  # noqa: ANN001
        self.server, self.port, self.cap, self.report = server, server.port, captured, report
        self.rng = random.Random(SEED)
        self.tail = LogTail(server.log_path)
        self.deadline = time.monotonic() + FUZZ_BUDGET
        self.mpps_pool = InstancePool(self.port)
        self.uid_n = 0
        self.starts: collections.deque[float] = collections.deque()

    def uid(self) -> str:
        self.uid_n += 1
        return f"2.25.{SEED}{self.uid_n:06d}"

    def over_budget(self) -> bool:
        return time.monotonic() > self.deadline

    def throttle(self) -> None:
        """At most SLOT_RATE connections per ACSE timeout: those that end without a
        release hold their slot that long (see ACSE_TIMEOUT)."""
        now = time.monotonic()
        while self.starts and self.starts[0] < now - ACSE_TIMEOUT - 0.2:
            self.starts.popleft()
        if len(self.starts) >= SLOT_RATE:
            time.sleep(self.starts[0] + ACSE_TIMEOUT + 0.2 - now)
        self.starts.append(time.monotonic())

    def run(self, category: str, label: str, data: bytes | str, fn: Callable[[], str]) -> Case:
        case = Case(category, label, data)
        self.throttle()
        started = time.monotonic()
        try:
            case.outcome = fn()
        except OSError as exc:  # e.g. connection refused: the server stopped listening
            case.outcome = f"CLIENT ERROR {exc.__class__.__name__}: {exc}"
        case.seconds = time.monotonic() - started
        time.sleep(0.002)  # let the server's log lines of this case land
        case.log = self.tail.read()
        self.report.cases.append(case)
        if len(self.report.cases) % 40 == 0:
            self.check_alive(f"after case {len(self.report.cases)}")
        return case

    def check_alive(self, when: str) -> None:
        if self.server.proc.poll() is not None:
            self.report.liveness.append(f"{when}: server exited {self.server.proc.returncode}")
            return
        try:
            status = echo(self.port)
        except Exception as exc:  # noqa: BLE001
            self.report.liveness.append(f"{when}: C-ECHO failed: {exc!r}")
            return
        if status != 0:
            self.report.liveness.append(f"{when}: C-ECHO status 0x{status:04X}")

    # 1. raw PDUs, no association ------------------------------------------------------

    def raw_random(self, n: int) -> None:
        for _ in range(n):
            if self.over_budget():
                return
            size = self.rng.choice([0, 1, 5, 6, 7, 10, 64, 300, 4096, 70_000])
            data = bytearray(self.rng.randbytes(size))
            if size and self.rng.random() < 0.6:
                data[0] = self.rng.randint(1, 7)  # a known PDU type
            self.run("raw random bytes", f"{size} random bytes", bytes(data),
                     lambda d=bytes(data): raw_bytes_case(self.port, d))

    def raw_truncated(self, n: int) -> None:
        rq = self.cap["rq"]
        for i in range(n):
            if self.over_budget():
                return
            cut = self.rng.randrange(1, len(rq))
            data = rq[:cut]
            label = f"A-ASSOCIATE-RQ cut at {cut}/{len(rq)}"
            if i % 2 and cut > 6:  # declared length fitted to the cut: complete, but short
                data = pdu(0x01, rq[6:cut])
                label += ", length fitted"
            self.run("truncated A-ASSOCIATE-RQ", label, data,
                     lambda d=data: raw_bytes_case(self.port, d))

    def raw_lengths(self, n: int) -> None:
        rq = self.cap["rq"]
        body = rq[6:]
        lengths = [0, 1, 5, 67, 68, len(body) - 1, len(body) + 1, len(body) + 100, 0x10000,
                   0x7FFFFFFF, 0xFFFFFFFF]
        for i in range(n):
            if self.over_budget():
                return
            length = lengths[i % len(lengths)] if i < 2 * len(lengths) else \
                self.rng.randrange(0, 0xFFFFFFFF)
            close = i % 2 == 1
            data = pdu(0x01, body, length)
            if length == 0xFFFFFFFF and i >= len(lengths):
                data += self.rng.randbytes(1 << 20)  # then a megabyte of it, then close
                close = True
            self.run("wrong PDU length", f"A-ASSOCIATE-RQ declaring {length:#x} bytes"
                     + (", then close" if close else ""), data,
                     lambda d=data, c=close: raw_bytes_case(self.port, d, close_after_send=c))

    def raw_unknown_types(self, n: int) -> None:
        types = [0x00, 0x08, 0x09, 0x0A, 0x10, 0x41, 0x7F, 0x80, 0xFE, 0xFF,
                 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]
        for i in range(n):
            if self.over_budget():
                return
            ptype = types[i % len(types)]
            body = self.rng.randbytes(self.rng.choice([0, 4, 10, 68, 200]))
            if ptype == 0x04 and i % 2:
                body = pdv(PC_ECHO, 0x03, command(echo_rq(1)))  # a C-ECHO before associating
            data = pdu(ptype, body)
            self.run("unknown / out-of-order PDU type", f"PDU type {ptype:#04x}, "
                     f"{len(body)}-byte body", data, lambda d=data: raw_bytes_case(self.port, d))

    def rq_mutations(self, n: int) -> None:
        rq = self.cap["rq"]
        for _ in range(n):
            if self.over_budget():
                return
            data, label = mutate_pdu(self.rng, rq, keep_framing=self.rng.random() < 0.7)
            self.run("mutated A-ASSOCIATE-RQ", label, data,
                     lambda d=data: raw_bytes_case(self.port, d))

    def max_pdu_lengths(self) -> None:
        """A valid association announcing a tiny (or no) maximum PDU length, then a
        C-FIND the server must answer in fragments of that size."""
        rq = self.cap["rq"]
        at = rq.find(b"\x51\x00\x00\x04")
        assert at > 0
        for length in (0, 1, 2, 5, 6, 7, 8, 12, 13, 14, 64, 0xFFFFFFFF):
            if self.over_budget():
                return
            data = rq[:at + 4] + struct.pack(">L", length) + rq[at + 8:]
            payload = message(PC_FIND_I, command(find_rq(7)), self.cap["find_data_i"])
            self.run("peer maximum PDU length", f"peer max PDU length {length}, C-FIND",
                     f"A-ASSOCIATE-RQ with Maximum Length {length}; C-FIND AccessionNumber"
                     "=A10001; C-ECHO", lambda d=data, p=payload: assoc_case(self.port, d, p))

    # 2. P-DATA and DIMSE on an association ---------------------------------------------

    def pdata_mutations(self, n: int) -> None:
        rq, templates = self.cap["rq"], self.cap["messages"]
        for _ in range(n):
            if self.over_budget():
                return
            name = self.rng.choice(sorted(templates))
            data, label = mutate_message(self.rng, templates[name])
            self.run("mutated P-DATA-TF", f"{name}: {label}", data,
                     lambda d=data: assoc_case(self.port, rq, d))

    def dimse_commands(self, n: int) -> None:
        rq = self.cap["rq"]
        for _ in range(n):
            if self.over_budget():
                return
            data, label = random_dimse(self.rng, self.cap, self.uid)
            self.run("random DIMSE command", label, data,
                     lambda d=data: assoc_case(self.port, rq, d))

    def raw_datasets(self, n: int) -> None:
        rq = self.cap["rq"]
        for i in range(n):
            if self.over_budget():
                return
            service = ("C-FIND", "N-CREATE", "N-SET")[i % 3]
            implicit = self.rng.random() < 0.6
            uid = None
            data, label = malformed_dataset(self.rng, self.cap, service, implicit)
            mid = 100 + i
            if service == "C-FIND":
                pcid = PC_FIND_I if implicit else PC_FIND_E
                cmd = find_rq(mid)
            elif service == "N-CREATE":
                pcid = PC_MPPS_I if implicit else PC_MPPS_E
                cmd = n_create_rq(mid, self.uid())
            else:
                pcid = PC_MPPS_I if implicit else PC_MPPS_E
                uid = self.mpps_pool.take()
                cmd = n_set_rq(mid, uid)
            if label.startswith("deflated") or label.startswith("big endian"):
                pcid = PC_FIND_DEFL if service == "C-FIND" else PC_MPPS_BE
            payload = message(pcid, command(cmd), data, fragment=16000)

            def case(p: bytes = payload, s: str = service, u: str | None = uid) -> str:
                outcome = assoc_case(self.port, rq, p)
                if s == "N-SET" and outcome == "status 0x0000":
                    # the base modification list sets this description: was it stored?
                    stored = self.mpps_pool.stored(u, "PerformedProcedureStepDescription")
                    if stored != "fuzz capture":
                        outcome += f" BUT NOT APPLIED (description {stored!r})"
                return outcome

            self.run("malformed dataset (raw)", f"{service} pc {pcid}: {label}", data, case)

    # 3. datasets through pynetdicom -----------------------------------------------------

    def pynetdicom_datasets(self, n: int) -> None:
        clients = {True: Client(self.port, True), False: Client(self.port, False)}
        try:
            for i in range(n):
                if self.over_budget():
                    return
                implicit = self.rng.random() < 0.4
                service = ("C-FIND", "N-CREATE", "N-SET", "N-GET")[i % 4 if i % 8 else 0]
                client = clients[implicit]
                ts = "implicit" if implicit else "explicit"
                if service == "C-FIND":
                    ds, label = nasty_find(self.rng)
                    fn = lambda c=client, d=ds: c.find(d)  # noqa: E731
                elif service == "N-CREATE":
                    ds, label, uid = nasty_create(self.rng, self.uid)
                    fn = lambda c=client, d=ds, u=uid: c.create(d, u)  # noqa: E731
                elif service == "N-SET":
                    ds, label = nasty_set(self.rng)
                    uid = self.mpps_pool.take()

                    def fn(c: Client = client, d: Dataset = ds, u: str = uid) -> str:
                        outcome = c.set(d, u)
                        wanted = str(d.get("PerformedProcedureStepStatus", ""))
                        if outcome == "status 0x0000" and wanted in ("COMPLETED", "DISCONTINUED"):
                            stored = self.mpps_pool.stored(u, "PerformedProcedureStepStatus")
                            if stored != wanted:
                                outcome += f" BUT NOT APPLIED (status {stored!r})"
                        return outcome
                else:
                    tags, label = nasty_get(self.rng)
                    uid = self.mpps_pool.take(fresh=False)
                    fn = lambda c=client, t=tags, u=uid: c.get(t, u)  # noqa: E731
                case = self.run("dataset via pynetdicom", f"{service} ({ts}): {label}",
                                f"{service} ({ts}): {label}", fn)
                if case.outcome.startswith("SKIP"):
                    self.report.cases.pop()
                    self.report.skipped[case.outcome] += 1
        finally:
            for client in clients.values():
                client.close()

    def close(self) -> None:
        self.mpps_pool.close()


# --- mutation helpers ------------------------------------------------------------------------


def flip_bits(rng: random.Random, data: bytes, count: int, start: int = 0) -> bytes:
    buf = bytearray(data)
    for _ in range(count):
        i = rng.randrange(start, len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def mutate_pdu(rng: random.Random, data: bytes, keep_framing: bool) -> tuple[bytes, str]:
    """A mutated single PDU; with ``keep_framing`` the PDU length matches the new body."""
    body = data[6:]
    kind = rng.choice(["bits", "bytes", "insert", "delete", "item-length", "ae", "version",
                       "duplicate-items"])
    if kind == "bits":
        n = rng.choice([1, 1, 2, 4, 16])
        body = flip_bits(rng, body, n)
        label = f"{n} bit flips"
    elif kind == "bytes":
        buf = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        body, label = bytes(buf), "bytes overwritten"
    elif kind == "insert":
        at = rng.randrange(len(body))
        body = body[:at] + rng.randbytes(rng.randint(1, 64)) + body[at:]
        label = f"bytes inserted at {at}"
    elif kind == "delete":
        at = rng.randrange(len(body))
        body = body[:at] + body[at + rng.randint(1, 32):]
        label = f"bytes deleted at {at}"
    elif kind == "item-length":
        items = item_offsets(body)
        at = rng.choice(items)
        new = rng.choice([0, 1, 3, 0xFFFF, rng.randrange(0x10000)])
        body = body[:at + 2] + struct.pack(">H", new) + body[at + 4:]
        label = f"item at {at} length {new:#x}"
    elif kind == "ae":
        title = rng.choice([b"\x00" * 16, b" " * 16, b"\xff" * 16, b"A\x00B" + b" " * 13,
                            "ÄÖÜ".encode() + b" " * 10, b"\\*?%_" + b" " * 11])
        at = rng.choice([4, 20])
        body = body[:at] + title + body[at + 16:]
        label = f"{'called' if at == 4 else 'calling'} AE title {title[:8]!r}"
    elif kind == "version":
        version = rng.choice([0, 2, 0xFFFF])
        body = struct.pack(">H", version) + body[2:]
        label = f"protocol version {version:#x}"
    else:
        items = item_offsets(body)
        at = rng.choice(items)
        (length,) = struct.unpack(">H", body[at + 2:at + 4])
        item = body[at:at + 4 + length]
        times = rng.choice([2, 50, 300])
        body = body[:at] + item * times + body[at + 4 + length:]
        label = f"item type {body[at]:#04x} repeated {times}x"
    if keep_framing:
        return pdu(data[0], body), label
    return data[:6] + body, label + " (PDU length not adjusted)"


def item_offsets(body: bytes) -> list[int]:
    """Offsets of the variable items (and user information sub-items) of an
    A-ASSOCIATE-RQ/AC body."""
    out, i = [], 68
    while i + 4 <= len(body):
        out.append(i)
        itype, _, length = struct.unpack(">BBH", body[i:i + 4])
        if itype in (0x20, 0x21, 0x50):  # descend into sub-items
            j = i + 4 + (4 if itype in (0x20, 0x21) else 0)
            while j + 4 <= i + 4 + length:
                out.append(j)
                j += 4 + struct.unpack(">H", body[j + 2:j + 4])[0]
        i += 4 + length
    return out or [68]


def split_pdus(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 6 <= len(data):
        (length,) = struct.unpack(">L", data[i + 2:i + 6])
        out.append(data[i:i + 6 + length])
        i += 6 + length
    return out


def mutate_message(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A mutated DIMSE message (its P-DATA-TF PDUs as captured), never empty."""
    while True:
        out, label = _mutate_message(rng, data)
        if out:
            return out, label


def _mutate_message(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pdus = split_pdus(data)
    k = rng.randrange(len(pdus))
    target = pdus[k]
    where = "command" if target[11] & 0x01 else "data set"
    kind = rng.choice(["bits", "bits", "truncate", "pcid", "mch", "pdv-length", "pdu-type",
                       "drop", "swap", "split", "duplicate", "zero-tail"])
    if kind == "bits":
        n = rng.choice([1, 1, 2, 3, 8, 32])
        target = flip_bits(rng, target, n, start=6)
        label = f"{n} bit flips in the {where} PDU"
    elif kind == "truncate":
        cut = rng.randrange(6, len(target))
        if rng.random() < 0.5:
            target = pdu(0x04, target[6:cut])
            label = f"{where} PDU cut to {cut - 6} body bytes, lengths fitted"
        else:
            target = target[:cut]
            label = f"{where} PDU cut at {cut} (declared length kept)"
    elif kind == "pcid":
        pcid = rng.choice([0, 2, 11, 13, 15, 17, 99, 255, PC_ECHO, PC_MPPS_I, PC_FIND_E])
        target = target[:10] + bytes([pcid]) + target[11:]
        label = f"{where} PDV presentation context id {pcid}"
    elif kind == "mch":
        mch = rng.choice([0x00, 0x01, 0x02, 0x03, 0x04, 0x80, 0xFF, 0xFC])
        target = target[:11] + bytes([mch]) + target[12:]
        label = f"{where} PDV message control header {mch:#04x}"
    elif kind == "pdv-length":
        n = len(target) - 10
        new = rng.choice([0, 1, 2, n - 1, n + 1, n + 1000, 0xFFFFFFFF])
        target = target[:6] + struct.pack(">L", new & 0xFFFFFFFF) + target[10:]
        label = f"{where} PDV length {new & 0xFFFFFFFF:#x} (real {n})"
    elif kind == "pdu-type":
        ptype = rng.choice([0x01, 0x02, 0x03, 0x05, 0x06, 0x08, 0xFF])
        target = bytes([ptype]) + target[1:]
        label = f"{where} PDU sent as type {ptype:#04x}"
    elif kind == "drop":
        target, label = b"", f"{where} PDU left out"
    elif kind == "swap":
        pdus.reverse()
        return b"".join(pdus), "PDUs in reverse order"
    elif kind == "split":  # one byte at a time on the wire is the same: split the PDV instead
        body = target[12:]
        at = rng.randrange(0, max(1, len(body)))
        mch = target[11]
        target = (pdu(0x04, pdv(target[10], mch & ~0x02, body[:at]))
                  + pdu(0x04, pdv(target[10], mch, body[at:])))
        label = f"{where} PDV split at {at}"
    elif kind == "duplicate":
        target, label = target * 2, f"{where} PDU sent twice"
    else:
        keep = rng.randrange(12, len(target))
        target = target[:keep] + b"\x00" * (len(target) - keep)
        label = f"{where} PDU zeroed after byte {keep}"
    pdus[k] = target
    return b"".join(pdus), label


COMMAND_FIELDS = [0x0001, 0x0010, 0x0020, 0x0021, 0x0030, 0x0100, 0x0110, 0x0120, 0x0130,
                  0x0140, 0x0150, 0x0FFF, 0x8020, 0x8030, 0x8140, 0x0000, 0x0002, 0x7FFF,
                  0xFFFF, 0x1234]


def random_dimse(rng: random.Random, cap: dict, new_uid: Callable[[], str]
                 ) -> tuple[bytes, str]:
    """A well-framed P-DATA message whose command set (or data set) is wrong."""
    mid = rng.randrange(1, 0xFFFF)
    kind = rng.choice(["field", "field", "no-class", "unnegotiated", "wrong-class", "garbage-ds",
                       "garbage-ds", "dataset-type", "elements", "n-get", "cancel", "response",
                       "no-message-id", "group-length", "extra-element"])
    find_data = cap["find_data_i"]
    if kind == "field":
        cf = rng.choice(COMMAND_FIELDS)
        fields = find_rq(mid)
        fields[0x00000100] = us(cf)
        with_data = rng.random() < 0.5
        if not with_data:
            fields[0x00000800] = us(0x0101)
        return (message(PC_FIND_I, command(fields), find_data if with_data else None),
                f"CommandField {cf:#06x} on the worklist context" + (" + data set" * with_data))
    if kind == "no-class":
        fields = find_rq(mid)
        del fields[0x00000002]
        return message(PC_FIND_I, command(fields), find_data), "C-FIND without AffectedSOPClassUID"
    if kind == "unnegotiated":
        pcid = rng.choice([PC_ECHO, PC_REJECTED, PC_MPPS_I, 17, 0, 255])
        return (message(pcid, command(find_rq(mid)), find_data),
                f"worklist C-FIND on presentation context {pcid}")
    if kind == "wrong-class":
        sop = rng.choice([MPPS, VERIFICATION, "1.2.3", "", "9" * 64, "1.2.840.10008.5.1.4.1.2.1.1"])
        return (message(PC_FIND_I, command(find_rq(mid, sop)), find_data),
                f"C-FIND with AffectedSOPClassUID {sop[:20]!r}")
    if kind == "garbage-ds":
        service = rng.choice(["C-FIND", "N-CREATE", "N-SET"])
        data = rng.randbytes(rng.choice([1, 7, 8, 100, 1000]))
        if service == "C-FIND":
            cmd, pcid = find_rq(mid), PC_FIND_I
        elif service == "N-CREATE":
            cmd, pcid = n_create_rq(mid, new_uid()), PC_MPPS_I
        else:
            cmd, pcid = n_set_rq(mid, cap["set_uid"]), PC_MPPS_I
        return (message(pcid, command(cmd), data),
                f"{service} with {len(data)} random bytes as data set")
    if kind == "dataset-type":
        fields = find_rq(mid)
        value = rng.choice([0x0101, 0x0000, 0xFFFF, 0x0102])
        fields[0x00000800] = us(value)
        with_data = value == 0x0101
        return (message(PC_FIND_I, command(fields), find_data if with_data else None),
                f"C-FIND CommandDataSetType {value:#06x}, data set "
                f"{'sent anyway' if with_data else 'not sent'}")
    if kind == "elements":
        fields = find_rq(mid)
        tag = rng.choice([0x00000100, 0x00000110, 0x00000700, 0x00000800, 0x00000002])
        fields[tag] = rng.choice([b"", b"\x01", b"\x01\x02\x03", b"\xff" * 8, b"\x00" * 200])
        return (message(PC_FIND_I, command(fields), find_data),
                f"C-FIND command element {tag:#010x} = {fields[tag][:8].hex()} "
                f"({len(fields[tag])} bytes)")
    if kind == "n-get":
        tags = rng.choice([None, b"", b"\x10\x00", b"\x10\x00\x10\x00\x20", b"\xff" * 4000,
                           struct.pack("<HH", 0x0040, 0x0252)])
        uid = rng.choice([cap["set_uid"], "1.2.3.4", "", "x" * 200])
        return (message(PC_MPPS_I, command(n_get_rq(mid, uid, tags))),
                f"N-GET {uid[:16]!r} AttributeIdentifierList "
                f"{'absent' if tags is None else tags[:6].hex() + f' ({len(tags)} bytes)'}")
    if kind == "cancel":
        fields = {0x00000100: us(0x0FFF), 0x00000120: us(rng.randrange(0x10000)),
                  0x00000800: us(0x0101)}
        return message(PC_FIND_I, command(fields)), "C-CANCEL-RQ for an unknown message"
    if kind == "response":
        fields = {0x00000002: ui(VERIFICATION), 0x00000100: us(0x8030), 0x00000120: us(mid),
                  0x00000800: us(0x0101), 0x00000900: us(0)}
        return message(PC_ECHO, command(fields)), "an unsolicited C-ECHO-RSP"
    if kind == "no-message-id":
        fields = find_rq(mid)
        del fields[0x00000110]
        return message(PC_FIND_I, command(fields), find_data), "C-FIND without MessageID"
    if kind == "group-length":
        gl = rng.choice([0, 1, 0xFFFFFFFF, 10_000])
        return (message(PC_FIND_I, command(find_rq(mid), group_length=gl), find_data),
                f"C-FIND CommandGroupLength {gl:#x}")
    tag = rng.choice([0x00080050, 0x00100010, 0x7FE00010, 0x00001234])
    fields = find_rq(mid)
    fields[tag] = b"ABCD"
    return (message(PC_FIND_I, command(fields), find_data),
            f"C-FIND command set with extra element {tag:#010x}")


# --- malformed data sets (raw bytes) ---------------------------------------------------------

ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF


def nested(depth: int, leaf: bytes, implicit: bool) -> bytes:
    """``depth`` levels of undefined-length sequences (0040,0100) around ``leaf``."""
    data = leaf
    for _ in range(depth):
        item = el_i(ITEM, b"", UNDEFINED) + data + el_i(ITEM_END, b"")
        seq_head = (el_i(0x00400100, b"", UNDEFINED) if implicit
                    else el_e(0x00400100, "SQ", b"", UNDEFINED))
        data = seq_head + item + el_i(SEQ_END, b"")
    return data


def malformed_dataset(rng: random.Random, cap: dict, service: str, implicit: bool
                      ) -> tuple[bytes, str]:
    """A data set with one malformed element (or nesting, or encoding) for ``service``."""
    base = cap[{"C-FIND": "find_data", "N-CREATE": "create_data", "N-SET": "set_data"}[service]
               + ("_i" if implicit else "_e")]
    e = (lambda tag, vr, value, length=None: el_i(tag, value, length)) if implicit else el_e
    ts = "implicit" if implicit else "explicit"
    kind = rng.choice(["us-length", "fd-length", "sq-garbage", "sq-open", "overlong", "odd-text",
                       "deep", "deep", "many", "no-item-tag", "random", "bitflip", "deflated",
                       "big-endian", "charset", "charset", "group-0000", "duplicate", "item-ff"])
    if kind == "us-length":
        return base + e(0x00280010, "US", b"\x01\x02\x03"), f"{ts}, Rows (US) 3 bytes long"
    if kind == "fd-length":
        return base + e(0x00189087, "FD", b"\x01" * 5), f"{ts}, an FD element 5 bytes long"
    if kind == "sq-garbage":
        return (base + e(0x00400340, "SQ", rng.randbytes(24)),
                f"{ts}, PerformedSeriesSequence of 24 random bytes")
    if kind == "sq-open":
        return (base + e(0x00400340, "SQ", b"", UNDEFINED) + el_i(ITEM, b"", UNDEFINED)
                + e(0x00080060, "CS", b"CT"), f"{ts}, undefined-length sequence never closed")
    if kind == "overlong":
        return (base + e(0x00100020, "LO", b"ABCD", 0xFFF0 if not implicit else 1_000_000),
                f"{ts}, element length beyond the end of the data set")
    if kind == "odd-text":
        return base + e(0x00100020, "LO", b"ABC"), f"{ts}, odd-length LO"
    if kind == "deep":
        depth = rng.choice([50, 150, 400, 1000, 3000])
        leaf = e(0x00080060, "CS", b"CT")
        data = base + nested(depth, leaf, implicit)
        return data, f"{ts}, {depth} nested sequences"
    if kind == "many":
        count = rng.choice([2000, 20_000])
        data = base + b"".join(e(0x00091000 + k, "LO", b"XX") for k in range(min(count, 0xFF)))
        data += b"".join(e(0x00110000 | ((k % 0xFF00) + 0x1000), "LO", b"XY")
                         for k in range(count))
        return data, f"{ts}, {count} private elements"
    if kind == "no-item-tag":
        return (base + e(0x00400100, "SQ", el_i(0x00080060, b"CT\x00\x00")),
                f"{ts}, sequence content without an item tag")
    if kind == "random":
        return rng.randbytes(rng.choice([2, 9, 64, 512])), f"{ts}, random bytes"
    if kind == "bitflip":
        n = rng.choice([1, 2, 8])
        return flip_bits(rng, base, n), f"{ts}, {n} bit flips in a valid data set"
    if kind == "deflated":
        if rng.random() < 0.5:
            return rng.randbytes(100), "deflated context, random (not deflate) bytes"
        comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return (comp.compress(rng.randbytes(300)) + comp.flush(),
                "deflated context, deflated random bytes")
    if kind == "big-endian":
        return base, f"big endian context, a {ts} little endian data set"
    if kind == "charset":
        charset, text = rng.choice([
            (b"ISO_IR 192", b"\xc3\x28\xa0\xa1\xff"),
            (b"ISO 2022 IR 87", b"\x1b$B\x80\xff\x1b(B"),
            (b"\\ISO 2022 IR 87", b"Yamada^\x1b$B;3ED\x1b(B\x1b$B\xff"),
            (b"ISO_IR 999 ", b"\xff\xfe\xfd\xfc"),
            (b"ISO 2022 IR 6\\ISO 2022 IR 87\\ISO_IR 999", b"\x1b$)C\x0e\xff\x0f"),
            (b"\x00\x00", b"\xe9"),
            (b"ISO 2022 IR 13\\ISO 2022 IR 87", b"\x1b)I\xb1\x1b$B\x21\x21"),
        ])
        charset = charset + (b" " if len(charset) % 2 else b"")
        text = text + (b" " if len(text) % 2 else b"")
        cs_tag = e(0x00080005, "CS", charset)
        if service == "C-FIND":
            data = cs_tag + e(0x00100010, "PN", text) + base
            return data, f"{ts}, Specific Character Set {charset!r}, PatientName {text!r}"
        data = cs_tag + base + e(0x00400280, "ST", text)
        return data, f"{ts}, Specific Character Set {charset!r}, Comments {text!r}"
    if kind == "group-0000":
        return (e(0x00000100, "US", us(0x0030)) + e(0x00000900, "US", us(0)) + base,
                f"{ts}, command elements inside the data set")
    if kind == "duplicate":
        return base + base, f"{ts}, the data set twice (duplicate, unsorted tags)"
    item = el_i(ITEM, e(0x00080060, "CS", b"CT"), 0xFFFFFFF0)
    return base + e(0x00400340, "SQ", item), f"{ts}, an item with a huge defined length"


# --- data sets through pynetdicom ------------------------------------------------------------

NASTY_TEXT = ["", "*", "?", "**?*", "%", "_", "\\", "A" * 65, "A" * 1025, "\x00", "a\x00b",
              "Ü", "日本^太郎", "\u202eevil", "'; DROP TABLE patients; --", "A\\B\\C", "=",
              "^^^^", "a=b=c=d", "-", "--", "20200101-", "2020AB01", "99999999", "00000000",
              "20201332", "١٩٦٨٠٨٢٢", "２０２６０１０１", "1.2.3", "1." * 100, "0." * 32,
              " ", "\t\n", "x" * 64]
NASTY_DATES = ["2020AB01", "20201301", "20200132", "2020-01-01", "-", "--", "2020.01.01",
               "20200101-20200102-20200103", "١٩٦٨٠٨٢٢", "20200101\\20200102", "*", "?",
               "19000101-", "99991231", "00000000", "2020"]
NASTY_TIMES = ["25", "2400", "1260", "126061", "12:00:00", "1200-0800", "-", "ab", "1.5",
               "120000.1234567", "٠٨١٥", "*", "120000-"]
LO_1MB = "L" * 1_000_000
VR_VALUES = {  # a wrong VR for a key, with a value pydicom can encode in it
    "SQ": lambda: Sequence([Dataset()]),
    "US": lambda: 65535, "UL": lambda: 2 ** 32 - 1, "SS": lambda: -1,
    "FD": lambda: float("nan"), "OB": lambda: b"\x00\xff" * 8, "UN": lambda: b"\x01\x02",
    "AT": lambda: 0x00100010, "DA": lambda: "2020AB01", "TM": lambda: "2500",
    "UI": lambda: "1." * 100, "LO": lambda: "x" * 70, "PN": lambda: "a=b=c",
    "DS": lambda: "1e400", "IS": lambda: "99999999999",
}
FIND_TOP = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
            "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureCodeSequence",
            "ReferringPhysicianName", "PatientWeight", "ReferencedStudySequence",
            "PatientComments", "SpecificCharacterSet"]
FIND_SPS = ["ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime", "Modality", "ScheduledPerformingPhysicianName",
            "ScheduledProtocolCodeSequence", "ScheduledProcedureStepStatus",
            "ScheduledProcedureStepSequence", "PatientName"]
CHARSETS = ["ISO_IR 999", ["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"],
            "ISO_IR 192", "ISO_IR 100", "GB18030", "ISO 2022 IR 149", ["ISO_IR 100", "ISO_IR 192"],
            "", "\\ISO 2022 IR 87"]


def deep_sequence(depth: int) -> Sequence:
    seq = Sequence([Dataset()])
    for _ in range(depth):
        item = Dataset()
        item.ReferencedStudySequence = seq
        seq = Sequence([item])
    return seq


def set_key(ds: Dataset, keyword: str, rng: random.Random) -> str:
    """Give ``keyword`` a nasty value, sometimes under a wrong VR; a label."""
    try:
        return _set_key(ds, keyword, rng)
    except (ValueError, TypeError, OverflowError):  # pydicom refuses the value itself
        ds.add_new(tag_for(keyword), "LO", "REFUSED")
        return f"{keyword}='REFUSED'"


def tag_for(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword
    return tag_for_keyword(keyword)


def _set_key(ds: Dataset, keyword: str, rng: random.Random) -> str:
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    tag, vr = tag_for_keyword(keyword), dictionary_VR(keyword)
    roll = rng.random()
    if keyword == "SpecificCharacterSet":
        value = rng.choice(CHARSETS)
        ds.SpecificCharacterSet = value
        return f"SpecificCharacterSet={value!r}"
    if roll < 0.3:
        wrong = rng.choice(sorted(VR_VALUES))
        value = VR_VALUES[wrong]()
        ds.add_new(tag, wrong, value)
        return f"{keyword} as {wrong} {str(value)[:24]!r}"
    if vr == "SQ":
        pick = rng.choice(["empty", "items", "deep", "text"])
        if pick == "empty":
            ds.add_new(tag, "SQ", Sequence())
        elif pick == "items":
            ds.add_new(tag, "SQ", Sequence([Dataset() for _ in range(rng.choice([2, 30]))]))
        elif pick == "deep":
            ds.add_new(tag, "SQ", deep_sequence(rng.choice([5, 40, 120])))
        else:
            item = Dataset()
            item.CodeValue = rng.choice(NASTY_TEXT)
            item.CodeMeaning = bytes(rng.randbytes(6))  # non-decodable raw text
            ds.add_new(tag, "SQ", Sequence([item]))
        return f"{keyword} {pick}"
    if vr == "DA":
        value = rng.choice(NASTY_DATES)
    elif vr == "TM":
        value = rng.choice(NASTY_TIMES)
    elif roll < 0.35:
        value = LO_1MB
    elif roll < 0.45:
        value = rng.randbytes(rng.choice([1, 7, 40]))  # raw, maybe non-decodable, bytes
    else:
        value = rng.choice(NASTY_TEXT)
    ds.add_new(tag, vr, value)
    return f"{keyword}={show(value if isinstance(value, str) else repr(value), 40)}"


def nasty_find(rng: random.Random) -> tuple[Dataset, str]:
    if rng.random() < 0.12:  # a code item key under another VR, on a query that matches
        ds = worklist_query(AccessionNumber="A10001")
        keyword = rng.choice(["CodeValue", "CodeMeaning", "CodingSchemeDesignator"])
        wrong = rng.choice(["SQ", "US", "FD", "AT", "SH"])
        item = Dataset()
        item.add_new(tag_for(keyword), wrong, VR_VALUES.get(wrong, lambda: "")())
        where = rng.choice(["RequestedProcedureCodeSequence", "ScheduledProtocolCodeSequence"])
        target = ds if where.startswith("Requested") else ds.ScheduledProcedureStepSequence[0]
        setattr(target, where, Sequence([item]))
        return ds, f"AccessionNumber=A10001; {where}>{keyword} as {wrong}"
    ds = worklist_query()
    labels = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.6:
            keyword = rng.choice(FIND_TOP)
            labels.append(set_key(ds, keyword, rng))
        else:
            sps = ds.ScheduledProcedureStepSequence[0]
            keyword = rng.choice(FIND_SPS)
            labels.append("SPS>" + set_key(sps, keyword, rng))
    if rng.random() < 0.1:
        ds.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
        labels.append("two SPS items")
    return ds, "; ".join(labels)


CREATE_KEYS = ["PatientName", "PatientID", "PatientBirthDate", "PerformedProcedureStepID",
               "PerformedStationAETitle", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus", "Modality",
               "ScheduledStepAttributesSequence", "PerformedSeriesSequence",
               "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
               "PerformedProcedureStepDiscontinuationReasonCodeSequence",
               "SpecificCharacterSet", "StudyID", "PatientComments", "ProcedureCodeSequence"]


def unscheduled(uid_n: int) -> Dataset:
    return n_create([ScheduledStep(f"2.25.{SEED}{uid_n:06d}9", accession_number=f"FZ{uid_n}")],
                    modality="CT", station_ae_title="FUZZ", patient_name="Fuzz^Patient",
                    patient_id=f"FZ{uid_n}")


def nasty_create(rng: random.Random, new_uid: Callable[[], str]) -> tuple[Dataset, str, str | None]:
    uid = new_uid()
    ds = unscheduled(int(uid[-6:]))
    labels = []
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.15:
            keyword = rng.choice(CREATE_KEYS)
            if keyword in ds:
                delattr(ds, keyword)
            labels.append(f"without {keyword}")
        elif roll < 0.25:
            status = rng.choice(["COMPLETED", "in progress", "", "IN PROGRESS\\COMPLETED",
                                 "X" * 100])
            ds.PerformedProcedureStepStatus = status
            labels.append(f"status {status[:20]!r}")
        else:
            labels.append(set_key(ds, rng.choice(CREATE_KEYS), rng))
    pick = rng.random()
    if pick < 0.1:
        uid, note = None, "no UID (server assigns)"
    elif pick < 0.2:
        uid, note = "1." * 100, "a 200-character UID"
    elif pick < 0.25:
        uid, note = "not.a.uid", "an invalid UID"
    else:
        note = "a fresh UID"
    labels.append(note)
    return ds, "; ".join(labels), uid


SET_KEYS = ["PerformedProcedureStepStatus", "PerformedSeriesSequence",
            "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
            "PerformedProcedureStepDiscontinuationReasonCodeSequence", "PatientName",
            "PerformedProcedureStepStartDate", "SpecificCharacterSet", "PatientComments",
            "ProcedureCodeSequence", "CommentsOnThePerformedProcedureStep"]


def nasty_set(rng: random.Random) -> tuple[Dataset, str]:
    ds = Dataset()
    status = rng.choice(["IN PROGRESS", "COMPLETED", "DISCONTINUED", "", "X", "completed"])
    ds.PerformedProcedureStepStatus = status
    labels = [f"status {status!r}"]
    if status == "COMPLETED" and rng.random() < 0.5:
        ds.PerformedProcedureStepEndDate = "20260101"
        ds.PerformedProcedureStepEndTime = "120000"
        item = Dataset()
        item.SeriesInstanceUID = "1.2.3.4"
        item.ReferencedImageSequence = Sequence()
        ds.PerformedSeriesSequence = Sequence([item])
        labels.append("complete final-state attributes")
    for _ in range(rng.randint(1, 3)):
        labels.append(set_key(ds, rng.choice(SET_KEYS), rng))
    return ds, "; ".join(labels)


def nasty_get(rng: random.Random) -> tuple[list, str]:
    tags = rng.choice([[], [0x00400252], [0x00400252, 0x00100010, 0x00091010],
                       [0x7FE00010], [0xFFFFFFFF], [0x00400340, 0x00400340],
                       [0x00400270, 0x00000000]])
    return tags, f"N-GET of {[f'{t:08X}' for t in tags]}"


class Client:
    """A pynetdicom association (one transfer syntax) re-opened after an abort."""

    def __init__(self, port: int, implicit: bool) -> None:
        self.port, self.implicit, self.assoc = port, implicit, None
        self.started = 0.0

    def _assoc(self):  # noqa: ANN202
        if self.assoc is None or not self.assoc.is_established:
            ae = AE(ae_title="FUZZSCU")
            ae.acse_timeout = ae.network_timeout = 5
            ae.dimse_timeout = REPLY_TIMEOUT + 2
            ts = [ImplicitVRLittleEndian] if self.implicit else [ExplicitVRLittleEndian]
            ae.add_requested_context(ModalityWorklistInformationFind, ts)
            ae.add_requested_context(ModalityPerformedProcedureStep, ts)
            self.assoc = ae.associate("127.0.0.1", self.port, ae_title="WORKLISTS")
            if not self.assoc.is_established:
                raise ConnectionError("association not established")
        self.started = time.monotonic()
        return self.assoc

    def _outcome(self, status: Dataset | None) -> str:
        if status is not None and "Status" in status:
            return f"status 0x{int(status.Status):04X}"
        if time.monotonic() - self.started >= REPLY_TIMEOUT + 1:  # our DIMSE timeout ran out
            return "HANG (no reply within the client's DIMSE timeout)"
        return "aborted" if self.assoc.is_aborted else "released without a reply"

    def find(self, ds: Dataset) -> str:
        assoc = self._assoc()
        final = None
        try:
            for status, _ in assoc.send_c_find(ds, ModalityWorklistInformationFind):
                if status is None or "Status" not in status or status.Status not in PENDING:
                    final = status
        except ValueError as exc:
            return f"SKIP client cannot encode: {str(exc)[:60]}"
        return self._outcome(final)

    def create(self, ds: Dataset, uid: str | None) -> str:
        try:
            status, _ = self._assoc().send_n_create(ds, ModalityPerformedProcedureStep, uid)
        except ValueError as exc:
            return f"SKIP client cannot encode: {str(exc)[:60]}"
        return self._outcome(status)

    def set(self, ds: Dataset, uid: str) -> str:
        try:
            status, _ = self._assoc().send_n_set(ds, ModalityPerformedProcedureStep, uid)
        except ValueError as exc:
            return f"SKIP client cannot encode: {str(exc)[:60]}"
        return self._outcome(status)

    def get(self, tags: list, uid: str) -> str:
        status, _ = self._assoc().send_n_get(tags, ModalityPerformedProcedureStep, uid)
        return self._outcome(status)

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


class InstancePool:
    """IN PROGRESS MPPS instances for N-SET cases, created on demand (valid N-CREATEs)."""

    def __init__(self, port: int, prefix: str = f"2.25.{SEED}8") -> None:
        self.client = Client(port, True)
        self.prefix, self.n = prefix, 0
        self.last: str | None = None

    def take(self, fresh: bool = True) -> str:
        if not fresh and self.last:
            return self.last
        self.n += 1
        uid = f"{self.prefix}{self.n:05d}"
        status, _ = self.client._assoc().send_n_create(
            unscheduled(900_000 + self.n), ModalityPerformedProcedureStep, uid)
        assert status.get("Status") == 0x0000, f"valid N-CREATE failed: {status}"
        self.last = uid
        return uid

    def stored(self, uid: str, keyword: str) -> str | None:
        """One attribute of an instance as the server has it now (N-GET)."""
        from pydicom.datadict import tag_for_keyword
        status, ds = self.client._assoc().send_n_get([tag_for_keyword(keyword)],
                                                     ModalityPerformedProcedureStep, uid)
        if ds is None or keyword not in ds:
            return None
        return str(ds[keyword].value or "")

    def close(self) -> None:
        self.client.close()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # noqa: ANN201
    with module_server(tmp_path_factory, "fuzz", "--sample-file", str(SAMPLE),
                       "--acse-timeout", str(ACSE_TIMEOUT), "--network-timeout", "10",
                       "--dimse-timeout", "10",
                       "--max-associations", str(MAX_ASSOCIATIONS),
                       # all from 127.0.0.1: its slot check opens MAX_ASSOCIATIONS at once
                       "--max-connections-per-address", str(2 * MAX_ASSOCIATIONS)) as live:
        yield live


@pytest.fixture(scope="module")
def quiet_clients() -> Iterator[None]:
    """pydicom/pynetdicom settings of this process only, restored afterwards."""
    saved = (pynetdicom_config.LOG_HANDLER_LEVEL, pynetdicom_config.LOG_REQUEST_IDENTIFIERS,
             pydicom_config.settings.writing_validation_mode, sys.getrecursionlimit())
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    sys.setrecursionlimit(max(saved[3], 5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    (pynetdicom_config.LOG_HANDLER_LEVEL, pynetdicom_config.LOG_REQUEST_IDENTIFIERS,
     pydicom_config.settings.writing_validation_mode) = saved[:3]
    sys.setrecursionlimit(saved[3])


@pytest.fixture(scope="module")
def captured(server, quiet_clients) -> dict:  # noqa: ANN001
    """Real PDUs of a pynetdicom client (A-ASSOCIATE-RQ, C-ECHO, C-FIND, N-CREATE, N-SET),
    recorded with EVT_DATA_SENT, plus encoded data sets for building messages."""
    sent: list[bytes] = []
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for _, abstract, ts in CONTEXTS:
        ae.add_requested_context(abstract, [ts])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WORKLISTS",
                         evt_handlers=[(evt.EVT_DATA_SENT, lambda e: sent.append(bytes(e.data)))])
    assert assoc.is_established
    accepted = {cx.context_id for cx in assoc.accepted_contexts}
    assert accepted == {c[0] for c in CONTEXTS} - {PC_REJECTED}, accepted
    messages: dict[str, bytes] = {}

    def record(name: str, fn: Callable[[], object]) -> None:
        start = len(sent)
        fn()
        messages[name] = b"".join(d for d in sent[start:] if d[0] == 0x04)

    query = worklist_query(AccessionNumber="A10001")
    create = unscheduled(0)
    set_uid = f"2.25.{SEED}7"
    progress = Dataset()
    progress.PerformedProcedureStepStatus = "IN PROGRESS"
    progress.PerformedProcedureStepDescription = "fuzz capture"
    record("C-ECHO", assoc.send_c_echo)
    record("C-FIND", lambda: list(assoc.send_c_find(query, ModalityWorklistInformationFind)))
    record("N-CREATE", lambda: assoc.send_n_create(create, ModalityPerformedProcedureStep,
                                                   set_uid))
    record("N-SET", lambda: assoc.send_n_set(progress, ModalityPerformedProcedureStep, set_uid))
    record("N-GET", lambda: assoc.send_n_get([0x00400252], ModalityPerformedProcedureStep,
                                             set_uid))
    assoc.release()
    rq = sent[0]
    assert rq[0] == 0x01 and all(messages.values()), messages.keys()
    return {
        "rq": rq, "messages": messages, "set_uid": set_uid,
        "find_data_i": ds_bytes(query), "find_data_e": ds_bytes(query, False),
        "create_data_i": ds_bytes(create), "create_data_e": ds_bytes(create, False),
        "set_data_i": ds_bytes(progress), "set_data_e": ds_bytes(progress, False),
    }


def db_path(server) -> Path:  # noqa: ANN001
    return Path(server.database_url.removeprefix("sqlite:///"))


# --- the fuzz run ---------------------------------------------------------------------------

def known_finding(tb: Traceback) -> str | None:
    """Which open finding a worklist_mpps traceback is: none are open (F1 to F6 are fixed,
    each kept as a regression case below), so every traceback from our code fails the run."""
    return None


def test_fuzz_dicom_listener(server, captured):  # noqa: ANN001
    report = Report()
    started = time.monotonic()
    fuzz = Fuzzer(server, captured, report)
    steps = [
        ("raw random bytes", lambda: fuzz.raw_random(50)),
        ("truncated A-ASSOCIATE-RQ", lambda: fuzz.raw_truncated(40)),
        ("wrong PDU length", lambda: fuzz.raw_lengths(40)),
        ("unknown PDU type", lambda: fuzz.raw_unknown_types(32)),
        ("mutated A-ASSOCIATE-RQ", lambda: fuzz.rq_mutations(60)),
        ("peer maximum PDU length", fuzz.max_pdu_lengths),
        ("mutated P-DATA-TF", lambda: fuzz.pdata_mutations(120)),
        ("random DIMSE command", lambda: fuzz.dimse_commands(90)),
        ("malformed dataset (raw)", lambda: fuzz.raw_datasets(60)),
        ("dataset via pynetdicom", lambda: fuzz.pynetdicom_datasets(120)),
    ]
    try:
        for name, step in steps:
            step()
            fuzz.check_alive(f"after {name}")
    finally:
        fuzz.close()
    report.seconds = time.monotonic() - started
    time.sleep(0.5)
    trailing_log = fuzz.tail.read()

    # --- report ---------------------------------------------------------------------------
    print(f"\n=== DICOM fuzz: seed {SEED:#x}, {len(report.cases)} cases in "
          f"{report.seconds:.1f} s ===")
    for category, outcomes in report.by_category().items():
        total = sum(outcomes.values())
        print(f"{category}: {total} cases")
        for outcome, count in outcomes.most_common():
            print(f"    {count:4d}  {outcome}")
    if report.skipped:
        print(f"(not sent, the client could not encode them: {sum(report.skipped.values())})")
    if os.environ.get("FUZZ_VERBOSE"):  # every case, for triage
        for c in report.cases:
            print(f"  {c.category} | {c.label} | {c.outcome} | {c.seconds:.2f}s")
    slowest = sorted(report.cases, key=lambda c: c.seconds)[-3:]
    print("slowest cases: " + "; ".join(f"{c.label} {c.seconds:.2f}s" for c in slowest))

    hangs = [c for c in report.cases if c.outcome.startswith(("HANG", "CLIENT ERROR"))]
    ignored = [c for c in report.cases if c.outcome.startswith(("IGNORED", "swallowed"))]
    seen: dict[str, tuple[Traceback, Case, int]] = {}
    for case in report.cases:
        for tb in tracebacks(case.log):
            if tb.signature in seen:
                first = seen[tb.signature]
                seen[tb.signature] = (first[0], first[1], first[2] + 1)
            else:
                seen[tb.signature] = (tb, case, 1)
    for tb in tracebacks(trailing_log):
        seen.setdefault(tb.signature, (tb, Case("after the run", "", b""), 1))
    ours = {s: v for s, v in seen.items() if v[0].ours}
    print(f"\nTracebacks in the server log: {sum(v[2] for v in seen.values())} "
          f"({sum(v[2] for v in ours.values())} from worklist_mpps code)")
    for sig, (tb, case, count) in sorted(seen.items()):
        tag = (f"OURS {known_finding(tb) or 'NEW'}" if tb.ours else "pynetdicom")
        print(f"  [{tag}] x{count} {sig}\n"
              f"      {tb.message} -> {tb.exception}\n"
              f"      first: {case.category} / {case.label}: {show(case.data)} => {case.outcome}")
    not_applied = [c for c in report.cases if "NOT APPLIED" in c.outcome]
    if not_applied:
        print(f"\nN-SET answered 0x0000 but not applied ({len(not_applied)}):")
        for c in not_applied:
            print(f"  {c.label}: {c.outcome}\n    sent: {show(c.data, 120)}")
    if ignored:
        print(f"\nRequests left without any reply ({len(ignored)}):")
        for c in ignored[:8]:
            print(f"  {c.category} / {c.label}: {show(c.data, 100)}")
    for c in hangs:
        print(f"\nHANG: {c.category} / {c.label}\n  sent: {show(c.data)}\n  log: {c.log[-600:]}")
    for line in report.liveness:
        print(f"LIVENESS: {line}")

    # --- the server is still whole ----------------------------------------------------------
    assert server.proc.poll() is None, f"server exited:\n{server.log()[-3000:]}"
    assert not report.liveness, report.liveness
    assert echo(server.port) == 0
    statuses, found = find(server.port, worklist_query(AccessionNumber="A10001"))
    assert [int(s.Status) for s in statuses][-1] == 0x0000 and len(found) == 1, statuses
    assert found[0].AccessionNumber == "A10001"

    # every association slot came back: as many concurrent associations as configured
    assocs = []
    try:
        deadline = time.monotonic() + 15
        while len(assocs) < MAX_ASSOCIATIONS and time.monotonic() < deadline:
            ae = AE(ae_title="SLOTS")
            ae.acse_timeout = ae.network_timeout = 5
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", server.port, ae_title="WORKLISTS")
            if assoc.is_established:
                assocs.append(assoc)
            else:
                time.sleep(0.5)
        assert len(assocs) == MAX_ASSOCIATIONS, f"only {len(assocs)} slots free after the run"
    finally:
        for assoc in assocs:
            assoc.release()

    with contextlib.closing(sqlite3.connect(f"file:{db_path(server)}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = db.execute("SELECT sop_instance_uid, dataset, status FROM mpps").fetchall()
    undecodable, inconsistent = [], []
    for uid, data, column in rows:
        try:
            ds = decode_dataset(data)
            materialize(ds)
        except Exception as exc:  # noqa: BLE001
            undecodable.append((uid, repr(exc)[:200]))
            continue
        if str(ds.get("PerformedProcedureStepStatus", "")).strip() != (column or ""):
            inconsistent.append((uid, column, ds.get("PerformedProcedureStepStatus")))
    print(f"MPPS rows stored: {len(rows)}, undecodable: {len(undecodable)}, status column "
          f"differing from the stored data set: {len(inconsistent)}")
    print(f"fuzz time {report.seconds:.1f} s, whole test {time.monotonic() - started:.1f} s")
    assert not undecodable, undecodable
    assert not inconsistent, inconsistent

    assert not hangs, [(c.category, c.label, c.outcome) for c in hangs]
    unknown = {s: v for s, v in ours.items() if known_finding(v[0]) is None}
    assert not unknown, "new tracebacks from worklist_mpps code:\n" + "\n".join(unknown)
    # an N-SET answered with success must have been applied (F1: unless pydicom could not
    # re-encode the modification list, which the server then treats as empty)
    not_applied = [c for c in report.cases if "NOT APPLIED" in c.outcome]
    unexplained = [c for c in not_applied if "write_dataset() failed" not in c.log]
    assert not unexplained, [(c.label, c.outcome) for c in unexplained]
    assert report.seconds < FUZZ_BUDGET + 30


def materialize(ds: Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                materialize(item)
        else:
            str(elem.value)


# --- findings: minimal regression cases ---------------------------------------------------------
# Each reproduces one finding of the fuzz run with the smallest input found; xfail(strict)
# until it is fixed.


def exchange(server, captured: dict, payload: bytes) -> tuple[str, str]:  # noqa: ANN001
    """(outcome, server log lines) of one message on a fresh raw association."""
    tail = LogTail(server.log_path)
    outcome = assoc_case(server.port, captured["rq"], payload)
    time.sleep(0.2)
    return outcome, tail.read()


def our_tracebacks(log: str) -> list[Traceback]:
    return [tb for tb in tracebacks(log) if tb.ours]


ROWS_3_BYTES = el_i(0x00280010, b"\x01\x02\x03")  # Rows (US) with an odd length, implicit VR


def test_n_set_with_an_unencodable_element_is_not_a_silent_success(server, captured):  # noqa: ANN001
    pool = InstancePool(server.port, prefix=f"2.25.{SEED}61")
    try:
        uid = pool.take()
        data = ROWS_3_BYTES + el_i(0x00400252, b"DISCONTINUED")
        outcome, log = exchange(server, captured,
                                message(PC_MPPS_I, command(n_set_rq(1, uid)), data))
        stored = pool.stored(uid, "PerformedProcedureStepStatus")
    finally:
        pool.close()
    assert outcome != "status 0x0000" or stored == "DISCONTINUED", (
        f"N-SET DISCONTINUED answered {outcome}, the step is still {stored!r}\n{log}")


def test_n_create_with_an_unencodable_element_names_the_real_problem(server, captured):  # noqa: ANN001
    data = captured["create_data_i"] + ROWS_3_BYTES
    outcome, log = exchange(server, captured, message(
        PC_MPPS_I, command(n_create_rq(1, f"2.25.{SEED}62")), data))
    assert outcome != "status 0x0120" and "Missing attribute" not in log, f"{outcome}\n{log}"


UNCLOSED_SQ = (el_i(0x00400340, b"", UNDEFINED) + el_i(ITEM, b"", UNDEFINED)
               + el_i(0x00080060, b"CT"))  # an undefined-length sequence that never ends
F2_CASES = {
    "C-FIND + FD of 5 bytes": (PC_FIND_I, "find", el_i(0x00189087, b"\x01" * 5)),
    "C-FIND + unclosed sequence": (PC_FIND_I, "find", UNCLOSED_SQ),
    "C-FIND + 400 nested sequences": (
        PC_FIND_I, "find", nested(400, el_i(0x00080060, b"CT"), True)),
    "C-FIND on the deflated context, not deflated": (PC_FIND_DEFL, "find", None),
    "N-CREATE + unclosed sequence": (PC_MPPS_I, "create", UNCLOSED_SQ),
    "N-CREATE + FD of 5 bytes, explicit VR": (
        PC_MPPS_E, "create", el_e(0x00189087, "FD", b"\x01" * 5)),
}


# FINDING F2, fixed: an undecodable request data set was answered 0xC001 / 0x0110 and
# logged with a full traceback; it is now decoded up front and refused with 0xA900
# (C-FIND) or 0x0106 (N-CREATE, N-SET) and one log line (dimse/context.decoded).
@pytest.mark.parametrize("name", sorted(F2_CASES))
def test_undecodable_request_is_refused_without_a_traceback(server, captured, name):  # noqa: ANN001
    pcid, service, extra = F2_CASES[name]
    if service == "find":
        cmd = find_rq(1)
        data = captured["find_data_i"] + extra if extra is not None else captured["find_data_i"]
    else:
        cmd = n_create_rq(1, f"2.25.{SEED}63{sorted(F2_CASES).index(name)}")
        base = captured["create_data_e" if pcid == PC_MPPS_E else "create_data_i"]
        data = base + extra
    outcome, log = exchange(server, captured, message(pcid, command(cmd), data, fragment=16000))
    assert outcome.startswith("status "), outcome
    assert not our_tracebacks(log), f"{outcome}\n{log}"


@pytest.mark.parametrize("service", ["N-CREATE", "N-SET"])
def test_mpps_sequence_with_another_vr_is_an_invalid_value(server, captured, service):  # noqa: ANN001
    wrong = el_e(0x00400340, "LO", b"x ")
    if service == "N-CREATE":
        ds = unscheduled(640)
        del ds.PerformedSeriesSequence
        cmd, data = n_create_rq(1, f"2.25.{SEED}64"), ds_bytes(ds, False) + wrong
    else:
        pool = InstancePool(server.port, prefix=f"2.25.{SEED}65")
        try:
            uid = pool.take()
        finally:
            pool.close()
        cmd, data = n_set_rq(1, uid), captured["set_data_e"] + wrong
    outcome, log = exchange(server, captured, message(PC_MPPS_E, command(cmd), data))
    assert outcome == "status 0x0106" and not our_tracebacks(log), f"{outcome}\n{log}"


@pytest.mark.parametrize("vr", ["SQ", "AT", "US"])
def test_find_code_item_key_with_another_vr(server, captured, vr):  # noqa: ANN001
    ds = worklist_query(AccessionNumber="A10001")
    item = Dataset()
    item.add_new(tag_for("CodeValue"), vr, VR_VALUES[vr]())
    ds.RequestedProcedureCodeSequence = Sequence([item])
    outcome, log = exchange(server, captured, message(
        PC_FIND_E, command(find_rq(1)), ds_bytes(ds, False)))
    assert outcome in ("status 0x0000", "status 0xA900"), f"{outcome}\n{log}"
    assert not our_tracebacks(log), log


# FINDING F5, fixed: max_pdu_size was only announced; a 1 MB P-DATA-TF PDU was read whole.
# Now a PDU over the announced Maximum Length is aborted before it is read (reactor.py).
def test_a_pdu_over_the_maximum_length_is_refused(server, captured):  # noqa: ANN001
    ds = worklist_query(AccessionNumber="A10001")
    ds.PatientComments = "x" * 1_000_000
    payload = message(PC_FIND_I, command(find_rq(1)), ds_bytes(ds))  # one PDU of ~1 MB
    assert max(len(p) for p in split_pdus(payload)) > 1_000_000
    outcome, log = exchange(server, captured, payload)
    assert outcome in ("aborted", "closed"), f"{outcome}\n{log[-800:]}"


# FINDING F6, fixed: pynetdicom dropped a request without a required command element
# (here Affected SOP Class UID) and the SCU waited for its DIMSE timeout; now the
# association is aborted at once (reactor.py).
def test_a_request_missing_a_required_command_element_is_answered(server, captured):  # noqa: ANN001
    fields = find_rq(1)
    del fields[0x00000002]
    outcome, log = exchange(server, captured, message(
        PC_FIND_I, command(fields), captured["find_data_i"]))
    assert outcome.startswith("status ") or outcome in ("aborted", "closed"), f"{outcome}\n{log}"
