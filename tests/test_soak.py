"""A soak: 8 concurrent clients of every kind against one server, every response checked
(issue 18, two failures seen once under heavy load and never reproduced: a final C-FIND
response without Status; "association must be established prior to N-SET").

Clients, each a thread looping until the deadline (or its cap of operations): raw-socket
MWL clients on persistent associations (selective and broad; their own PDU parser,
stricter than bench/raw_client.py's), a pynetdicom selective client on a persistent
association, a pynetdicom client opening one association per query, a C-ECHO client
opening one association per echo, and MPPS clients (one association per cycle, and one
persistent association). Checked:

- every C-FIND response's command set has a Status (PS3.7 9.1.2.1.5 / C.4.1.1.4) and
  answers the request's Message ID (0000,0120); every pending (0xFF00/0xFF01) response
  carries an identifier (PS3.4 K.4.1.3, PS3.7 9.3.2.2: CommandDataSetType not 0x0101,
  a data set follows), the final one none; the final status is Success; each client's
  queries match as many items as its first (the items do not change meanwhile);
- every association is accepted: 8 clients stay under the admission limits from one
  address (max_connections_per_address 16, max_associations 32; dimse/admission.py);
- every MPPS step answers Success (PS3.4 F.7.2) and, after a cycle, the stored state is
  COMPLETED; a step is never sent on an association that the previous one lost;
- the server's log has no traceback and no rejected association.

The suite runs 12 s per database (SQLite, PostgreSQL when reachable). Scratch mode, to
hunt: WM_SOAK_SECONDS=600 (the server log stays in pytest's tmp_path, server.log);
WM_SOAK_STOCK_PYNETDICOM=1 runs the pynetdicom clients on pynetdicom's stock AE, without
the client wing's fix of its requestor race (tests/test_client_race.py), to watch it happen.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL
from pynetdicom.sop_class import Verification
from sqlalchemy import create_engine, text

from conftest import PG_HOST, PG_PORT, ROOT, LiveServer, port_open
from worklist_mpps.client.pynetdicom_race import RequestorAE

sys.path.insert(0, str(ROOT / "bench"))

import cpu_client
import cpu_servers
import generate
import raw_client

pytestmark = pytest.mark.dimse

SECONDS = float(os.environ.get("WM_SOAK_SECONDS", "12"))
MAX_OPS = int(os.environ.get("WM_SOAK_MAX_OPS", "100000"))  # per client, a bound on loops
ITEMS = 2000
AET = "WORKLISTS"
PENDING = (0xFF00, 0xFF01)
# the soak's pynetdicom clients are the client wing's RequestorAE, with the fix of
# pynetdicom's requestor race (client/pynetdicom_race.py, tests/test_client_race.py),
# unless WM_SOAK_STOCK_PYNETDICOM=1 (pynetdicom's stock AE, to watch the race happen)
STOCK = os.environ.get("WM_SOAK_STOCK_PYNETDICOM") == "1"


class SoakError(AssertionError):
    pass


def elements(command: bytes) -> dict[int, bytes]:
    """An implicit VR little endian command set (PS3.7 6.3.1) as {element: value}."""
    out, offset = {}, 0
    while offset + 8 <= len(command):
        group, elem, length = struct.unpack_from("<HHL", command, offset)
        if group != 0:
            raise SoakError(f"command set element ({group:04X},{elem:04X}): {command.hex()}")
        out[elem] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    if offset != len(command):
        raise SoakError(f"command set truncated at {offset}/{len(command)}: {command.hex()}")
    return out


def u16(value: bytes) -> int:
    return struct.unpack("<H", value)[0]


class CheckedRaw(raw_client.RawClient):
    """bench/raw_client.py's client, each response checked: Status present, Message ID
    answered, pending responses followed by their identifier, the final one alone."""

    def find(self, op: str) -> int:
        assert self.sock is not None
        self.message_id = self.message_id % 0xFFFF + 1
        self.sock.sendall(
            raw_client.pdata(raw_client.find_command(self.message_id), 0x03) + self.identifiers[op]
        )
        matches, command, awaiting_data = 0, b"", False
        while True:
            pdu_type, body = self._pdu()
            if pdu_type != 0x04:
                raise SoakError(f"PDU type 0x{pdu_type:02X} during a C-FIND: {body.hex()}")
            offset = 0
            while offset < len(body):
                length, _, flags = struct.unpack_from(">LBB", body, offset)
                value = body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if not flags & 0x01:  # a data set fragment
                    if not awaiting_data:
                        raise SoakError("a data set PDV with no pending response before it")
                    if flags & 0x02:
                        awaiting_data = False
                    continue
                if awaiting_data:
                    raise SoakError("a command PDV while the pending identifier was due")
                command += value
                if not flags & 0x02:
                    continue
                fields, seen, command = elements(command), command, b""
                if 0x0900 not in fields:
                    raise SoakError(f"C-FIND response without Status (0000,0900): {seen.hex()}")
                status = u16(fields[0x0900])
                if u16(fields.get(0x0120, b"\0\0")) != self.message_id:
                    raise SoakError(f"response to another Message ID: {seen.hex()}")
                has_data = u16(fields.get(0x0800, b"\x01\x01")) != 0x0101
                if status in PENDING:
                    if not has_data:
                        raise SoakError(f"pending response without identifier: {seen.hex()}")
                    matches += 1
                    awaiting_data = True
                elif status == 0:
                    if has_data:
                        raise SoakError(f"final response announces a data set: {seen.hex()}")
                    if offset != len(body):
                        raise SoakError("PDVs after the final response")
                    return matches
                else:
                    raise SoakError(f"C-FIND ended with 0x{status:04X}: {seen.hex()}")


class Soak:
    """The clients of one soak run against ``port``; counts and errors, thread-safe."""

    def __init__(self, port: int, day: str, mpps_state: Callable[[str], str | None]) -> None:
        self.port, self.day, self.mpps_state = port, day, mpps_state
        self.deadline = time.monotonic() + SECONDS
        self.errors: list[str] = []
        self.counts: Counter[str] = Counter()
        self.matches: dict[str, int] = {}  # each query client's first count
        self.lock = threading.Lock()
        self.selective = cpu_client.query(day, True)

    def error(self, who: str, what: str) -> None:
        with self.lock:
            self.errors.append(f"{who}: {what}"[:2000])

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def loop(self, who: str, step: Callable[[], None]) -> None:
        """``step`` until the deadline; the first error ends this client."""
        try:
            for _ in range(MAX_OPS):
                if time.monotonic() >= self.deadline:
                    return
                step()
        except Exception as exc:  # noqa: BLE001 - every failure is a finding, reported
            self.error(who, f"{type(exc).__name__}: {exc}")

    def ae(self, context: str, title: str) -> AE:
        ae = (AE if STOCK else RequestorAE)(ae_title=title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(context)
        return ae

    def associate(self, ae: AE):
        assoc = ae.associate("127.0.0.1", self.port, ae_title=AET)
        if not assoc.is_established:
            reason = (
                f"rejected (result {assoc.acceptor.rejection_result if assoc.is_rejected else '-'})"
                if assoc.is_rejected
                else "aborted"
                if assoc.is_aborted
                else "not established"
            )
            raise SoakError(f"association {reason}")
        self.count("associations")
        return assoc

    # --- clients ---------------------------------------------------------------------

    def raw(self, op: str, who: str) -> None:
        client = CheckedRaw("127.0.0.1", self.port, AET, self.day)
        client.open("find")
        self.count("associations")

        def step() -> None:
            matches = client.find(op)
            if not matches:
                raise SoakError(f"{op}: no match for today")
            self.same_matches(who, matches)
            self.count(f"raw {op}")

        try:
            self.loop(who, step)
        finally:
            client.close()

    def same_matches(self, who: str, matches: int) -> None:
        """The items do not change during the soak: every query of a client matches as
        many as its first (a lost pending response would be a silently missing item)."""
        with self.lock:
            first = self.matches.setdefault(who, matches)
        if matches != first:
            raise SoakError(f"{matches} matches, {first} at the first query")

    def find_checked(self, assoc) -> int:
        """One pynetdicom C-FIND: every pending with its identifier, a final Success;
        the matches."""
        final, matches = None, 0
        for status, identifier in assoc.send_c_find(self.selective, MWL):
            if not status or "Status" not in status:
                raise SoakError(
                    f"C-FIND response without Status (established {assoc.is_established}, "
                    f"aborted {assoc.is_aborted})"
                )
            final = status.Status
            if final in PENDING:
                if identifier is None:
                    raise SoakError("pending response without identifier")
                matches += 1
        if final != 0:
            raise SoakError(f"C-FIND ended with {final!r}")
        return matches

    def find_open(self, who: str) -> None:
        assoc = self.associate(self.ae(MWL, "SOAKFIND"))

        def step() -> None:
            self.same_matches(who, self.find_checked(assoc))
            self.count("pynetdicom find_open")

        try:
            self.loop(who, step)
        finally:
            assoc.release()

    def find_assoc(self, who: str) -> None:
        ae = self.ae(MWL, "SOAKFINDA")

        def step() -> None:
            assoc = self.associate(ae)
            try:
                self.same_matches(who, self.find_checked(assoc))
            finally:
                assoc.release()
            self.count("pynetdicom find_assoc")

        self.loop(who, step)

    def echo(self, who: str) -> None:
        ae = self.ae(Verification, "SOAKECHO")

        def step() -> None:
            assoc = self.associate(ae)
            status = assoc.send_c_echo()
            assoc.release()
            if not status or status.get("Status") != 0:
                raise SoakError(f"C-ECHO answered {status!r}")
            self.count("echo")

        self.loop(who, step)

    def mpps_cycle(self, assoc, who: str, n: int) -> None:
        """N-CREATE, N-SET, N-SET COMPLETED (PS3.4 F.7), each checked before the next is
        sent: a lost association is reported at the step that lost it."""
        uid, create, progress, completed = cpu_client.cycle_messages(f"{who}-{n}")
        steps = (
            ("N-CREATE", lambda: assoc.send_n_create(create, MPPS, uid)),
            ("N-SET", lambda: assoc.send_n_set(progress, MPPS, uid)),
            ("N-SET COMPLETED", lambda: assoc.send_n_set(completed, MPPS, uid)),
        )
        for name, send in steps:
            if not assoc.is_established:
                raise SoakError(
                    f"association lost before {name} (aborted {assoc.is_aborted}, "
                    f"released {assoc.is_released})"
                )
            status, _ = send()
            if not status or status.get("Status") != 0:
                raise SoakError(
                    f"{name} answered {status!r} (established {assoc.is_established}, "
                    f"aborted {assoc.is_aborted})"
                )
        state = self.mpps_state(uid)
        if state != "COMPLETED":
            raise SoakError(f"MPPS {uid} stored as {state!r} after N-SET COMPLETED")
        self.count("mpps cycles")

    def mpps_assoc(self, who: str) -> None:
        ae, n = self.ae(MPPS, "SOAKMPPSA"), iter(range(MAX_OPS))

        def step() -> None:
            assoc = self.associate(ae)
            try:
                self.mpps_cycle(assoc, who, next(n))
            finally:
                if assoc.is_established:
                    assoc.release()

        self.loop(who, step)

    def mpps_open(self, who: str) -> None:
        assoc, n = self.associate(self.ae(MPPS, "SOAKMPPS")), iter(range(MAX_OPS))
        try:
            self.loop(who, lambda: self.mpps_cycle(assoc, who, next(n)))
        finally:
            if assoc.is_established:
                assoc.release()

    def run(self) -> None:
        clients = [
            ("raw-selective-1", lambda w: self.raw("find_open", w)),
            ("raw-selective-2", lambda w: self.raw("find_open", w)),
            ("raw-broad", lambda w: self.raw("broad_open", w)),
            ("find-open", self.find_open),
            ("find-assoc", self.find_assoc),
            ("echo", self.echo),
            ("mpps-assoc", self.mpps_assoc),
            ("mpps-open", self.mpps_open),
        ]

        def guarded(who: str, body: Callable[[str], None]) -> None:
            try:
                body(who)
            except Exception as exc:  # noqa: BLE001 - a client that could not start
                self.error(who, f"{type(exc).__name__}: {exc}")

        threads = [
            threading.Thread(target=guarded, args=(who, body), name=who, daemon=True)
            for who, body in clients
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + SECONDS + 120
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            self.error("soak", "a client still running 120 s after the deadline")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(url: str, folder: Path) -> Iterator[tuple[int, Path]]:
    """worklist-mpps on 127.0.0.1 with the default admission limits; stopped by PID."""
    port, log = free_port(), folder / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "worklist_mpps", "serve"),
                *("--bind", "127.0.0.1", "--port", str(port), "--database-url", url),
                *("--http-enabled", "false", "--load-sample-data", "false"),
                *("--log-level", "INFO"),
                *(() if LiveServer.fast_path else ("--dimse-fast-path", "false")),
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        cpu_servers.wait_listening(proc, port, log)
        yield port, log
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def soak(url: str, tmp_path: Path) -> None:
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database

    today = dt.date.today()
    db = Database(url)
    migrate.upgrade(db.engine)
    generate.bulk_load(db, generate.make_items(ITEMS, today))
    db.dispose()
    engine = create_engine(url)

    def mpps_state(uid: str) -> str | None:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT status FROM mpps WHERE sop_instance_uid = :u"), {"u": uid}
            ).scalar()

    try:
        with server(url, tmp_path) as (port, log):
            run = Soak(port, today.strftime("%Y%m%d"), mpps_state)
            run.run()
    finally:
        engine.dispose()
    text_log = log.read_text(errors="replace")
    print(f"soak {SECONDS:.0f} s: {dict(run.counts)}")
    problems = list(run.errors)
    if "Traceback" in text_log:
        i = text_log.index("Traceback")
        problems.append(f"server log has a traceback: {text_log[max(0, i - 300) : i + 3000]}")
    rejected = [line for line in text_log.splitlines() if "reject" in line.lower()]
    if rejected:
        problems.append(f"server log rejected associations: {rejected[:5]}")
    assert not problems, "\n".join(problems)
    for what in ("raw find_open", "raw broad_open", "pynetdicom find_open", "echo"):
        assert run.counts[what] > 0, f"no {what} done: {dict(run.counts)}"
    assert run.counts["mpps cycles"] > 0, dict(run.counts)


def test_soak_sqlite(tmp_path):
    soak(f"sqlite:///{tmp_path / 'worklist.db'}", tmp_path)


def test_soak_postgres(tmp_path):
    if not port_open(PG_HOST, PG_PORT):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    schema = cpu_servers.new_pg_schema()
    try:
        soak(cpu_servers.pg_url(schema), tmp_path)
    finally:
        cpu_servers.drop_pg_schema(schema)
