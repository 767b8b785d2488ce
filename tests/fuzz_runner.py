"""Fuzz harness: the Fuzzer, which sends every category of bounded, seeded cases to the
live server and records each outcome in the Report."""

from __future__ import annotations

import collections
import random
import struct
import time
from collections.abc import Callable

from pydicom import Dataset

from dicom_clients import echo
from fuzz_generators import nasty_create, nasty_find, nasty_get, nasty_set
from fuzz_harness import Case, Client, InstancePool, LogTail, Report
from fuzz_mutators import malformed_dataset, mutate_message, mutate_pdu, random_dimse
from fuzz_wire import (
    ACSE_TIMEOUT,
    FUZZ_BUDGET,
    PC_ECHO,
    PC_FIND_DEFL,
    PC_FIND_E,
    PC_FIND_I,
    PC_MPPS_BE,
    PC_MPPS_E,
    PC_MPPS_I,
    SEED,
    SLOT_RATE,
    assoc_case,
    command,
    echo_rq,
    find_rq,
    message,
    n_create_rq,
    n_set_rq,
    pdu,
    pdv,
    raw_bytes_case,
)


class Fuzzer:
    def __init__(self, server, captured: dict, report: Report) -> None:
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
            self.run(
                "raw random bytes",
                f"{size} random bytes",
                bytes(data),
                lambda d=bytes(data): raw_bytes_case(self.port, d),
            )

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
            self.run(
                "truncated A-ASSOCIATE-RQ", label, data, lambda d=data: raw_bytes_case(self.port, d)
            )

    def raw_lengths(self, n: int) -> None:
        rq = self.cap["rq"]
        body = rq[6:]
        lengths = [
            0,
            1,
            5,
            67,
            68,
            len(body) - 1,
            len(body) + 1,
            len(body) + 100,
            0x10000,
            0x7FFFFFFF,
            0xFFFFFFFF,
        ]
        for i in range(n):
            if self.over_budget():
                return
            length = (
                lengths[i % len(lengths)]
                if i < 2 * len(lengths)
                else self.rng.randrange(0, 0xFFFFFFFF)
            )
            close = i % 2 == 1
            data = pdu(0x01, body, length)
            if length == 0xFFFFFFFF and i >= len(lengths):
                data += self.rng.randbytes(1 << 20)  # then a megabyte of it, then close
                close = True
            self.run(
                "wrong PDU length",
                f"A-ASSOCIATE-RQ declaring {length:#x} bytes" + (", then close" if close else ""),
                data,
                lambda d=data, c=close: raw_bytes_case(self.port, d, close_after_send=c),
            )

    def raw_unknown_types(self, n: int) -> None:
        types = [
            0x00,
            0x08,
            0x09,
            0x0A,
            0x10,
            0x41,
            0x7F,
            0x80,
            0xFE,
            0xFF,
            0x02,
            0x03,
            0x04,
            0x05,
            0x06,
            0x07,
        ]
        for i in range(n):
            if self.over_budget():
                return
            ptype = types[i % len(types)]
            body = self.rng.randbytes(self.rng.choice([0, 4, 10, 68, 200]))
            if ptype == 0x04 and i % 2:
                body = pdv(PC_ECHO, 0x03, command(echo_rq(1)))  # a C-ECHO before associating
            data = pdu(ptype, body)
            self.run(
                "unknown / out-of-order PDU type",
                f"PDU type {ptype:#04x}, {len(body)}-byte body",
                data,
                lambda d=data: raw_bytes_case(self.port, d),
            )

    def rq_mutations(self, n: int) -> None:
        rq = self.cap["rq"]
        for _ in range(n):
            if self.over_budget():
                return
            data, label = mutate_pdu(self.rng, rq, keep_framing=self.rng.random() < 0.7)
            self.run(
                "mutated A-ASSOCIATE-RQ", label, data, lambda d=data: raw_bytes_case(self.port, d)
            )

    def max_pdu_lengths(self) -> None:
        """A valid association announcing a tiny (or no) maximum PDU length, then a
        C-FIND the server must answer in fragments of that size."""
        rq = self.cap["rq"]
        at = rq.find(b"\x51\x00\x00\x04")
        assert at > 0
        for length in (0, 1, 2, 5, 6, 7, 8, 12, 13, 14, 64, 0xFFFFFFFF):
            if self.over_budget():
                return
            data = rq[: at + 4] + struct.pack(">L", length) + rq[at + 8 :]
            payload = message(PC_FIND_I, command(find_rq(7)), self.cap["find_data_i"])
            self.run(
                "peer maximum PDU length",
                f"peer max PDU length {length}, C-FIND",
                f"A-ASSOCIATE-RQ with Maximum Length {length}; C-FIND AccessionNumber"
                "=A10001; C-ECHO",
                lambda d=data, p=payload: assoc_case(self.port, d, p),
            )

    # 2. P-DATA and DIMSE on an association ---------------------------------------------

    def pdata_mutations(self, n: int) -> None:
        rq, templates = self.cap["rq"], self.cap["messages"]
        for _ in range(n):
            if self.over_budget():
                return
            name = self.rng.choice(sorted(templates))
            data, label = mutate_message(self.rng, templates[name])
            self.run(
                "mutated P-DATA-TF",
                f"{name}: {label}",
                data,
                lambda d=data: assoc_case(self.port, rq, d),
            )

    def dimse_commands(self, n: int) -> None:
        rq = self.cap["rq"]
        for _ in range(n):
            if self.over_budget():
                return
            data, label = random_dimse(self.rng, self.cap, self.uid)
            self.run(
                "random DIMSE command", label, data, lambda d=data: assoc_case(self.port, rq, d)
            )

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
                case = self.run(
                    "dataset via pynetdicom",
                    f"{service} ({ts}): {label}",
                    f"{service} ({ts}): {label}",
                    fn,
                )
                if case.outcome.startswith("SKIP"):
                    self.report.cases.pop()
                    self.report.skipped[case.outcome] += 1
        finally:
            for client in clients.values():
                client.close()

    def close(self) -> None:
        self.mpps_pool.close()
