"""A low-overhead pynetdicom client for bench/server_cpu.py, run as its own process.

    python bench/cpu_client.py HOST PORT CALLED_AET YYYYMMDD

Its CPU is not the server's: the harness reads the server's /proc/PID/stat before
and after each batch this process runs. Commands arrive one JSON object a line on
stdin, each answered with one JSON line on stdout:

    {"cmd": "open", "kind": "find" | "mpps"}   associate and keep the association
    {"cmd": "batch", "op": OP, "n": N}         run N operations, answer when all done
    {"cmd": "run", "op": OP, "seconds": S}     operations until S seconds have passed
    {"cmd": "close"} / {"cmd": "quit"}

OP is one of echo_assoc (associate, C-ECHO, release), find_open / broad_open (a
selective / broad C-FIND on the open association), find_assoc (associate, selective
C-FIND, release), mpps (N-CREATE IN PROGRESS, N-SET, N-SET COMPLETED on the open
association). The queries are bench/run.py's findscu ones: the same return keys,
selective = modality CT + station CT01 + the day, broad = the day.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket

from worklist_mpps.client.pynetdicom_race import RequestorAE

# seconds: connection, association, each response; a stuck server fails the batch
# loudly instead of hanging it. IDLE: an open association may wait between batches.
TIMEOUT, IDLE = 30, 600

TOP_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
)
SPS_KEYS = (
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
)


def query(day: str, selective: bool) -> Dataset:
    """The C-FIND identifier of bench/run.py's findscu query (PS3.4 K.6.1.2 return keys)."""
    ds = Dataset()
    for key in TOP_KEYS:
        setattr(ds, key, "")
    sps = Dataset()
    for key in SPS_KEYS:
        setattr(sps, key, "")
    sps.ScheduledProcedureStepStartDate = day
    if selective:
        sps.Modality, sps.ScheduledStationAETitle = "CT", "CT01"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def _nodelay_socket(create):
    """pynetdicom's client socket with TCP_NODELAY, as DCMTK's clients run in bench/run.py
    (TCP_NODELAY=1): pynetdicom writes a request's command and data set in separate
    writes, and with Nagle's algorithm the second waits for the server's delayed ACK
    (~40 ms), which would make every figure the client's latency, not the server's."""

    def create_socket(self, address):
        sock = create(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return create_socket


AssociationSocket._create_socket = _nodelay_socket(AssociationSocket._create_socket)


def run_mpps_steps(assoc, uid: str, create: Dataset, *sets: Dataset) -> None:
    """N-CREATE then each N-SET on ``assoc``, each checked before the next is sent: a
    RuntimeError naming the step whose status is not Success (PS3.4 F.7.2.1.2,
    F.7.2.2.2), or that had no response (the DIMSE timeout, or an abort)."""
    steps = [("N-CREATE", create)] + [(f"N-SET {i}", ds) for i, ds in enumerate(sets, 1)]
    for name, ds in steps:
        if name == "N-CREATE":
            status, _ = assoc.send_n_create(ds, MPPS, uid)
        else:
            status, _ = assoc.send_n_set(ds, MPPS, uid)
        if not status or "Status" not in status:
            raise RuntimeError(f"MPPS {name}: no response (timeout, or association aborted)")
        if status.Status != 0:
            raise RuntimeError(f"MPPS {name} failed: status 0x{status.Status:04X}")


def cycle_messages(accession: str) -> tuple[str, Dataset, Dataset, Dataset]:
    """A new MPPS's SOP Instance UID and its cycle's data sets (PS3.4 F.7): N-CREATE IN
    PROGRESS, N-SET (one image), N-SET COMPLETED (three images)."""
    from worklist_mpps.client.messages import (
        Instance,
        ScheduledStep,
        Series,
        n_create,
        n_set_completed,
        n_set_progress,
    )

    uid, study, series = generate_uid(), generate_uid(), generate_uid()
    images = [Instance("1.2.840.10008.5.1.4.1.1.2", generate_uid()) for _ in range(3)]
    create = n_create(
        [ScheduledStep(study, accession)],
        modality="CT",
        station_ae_title="CT01",
        patient_name="Müller^Hans",
    )
    progress = n_set_progress([Series(series, images[:1])])
    return uid, create, progress, n_set_completed([Series(series, images)])


class Client:
    def __init__(self, host: str, port: int, called: str, day: str) -> None:
        self.host, self.port, self.called = host, port, called
        self.selective, self.broad = query(day, True), query(day, False)
        # one AE per kind of association, each proposing only its own SOP class (as
        # echoscu / findscu / a modality's MPPS SCU do): what the server negotiates
        self.aes = {}
        for kind, context in (("echo", Verification), ("find", MWL), ("mpps", MPPS)):
            # pynetdicom's AE with its requestor race fixed (client/pynetdicom_race.py)
            ae = RequestorAE(ae_title="BENCHSCU")
            ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = TIMEOUT
            ae.network_timeout = IDLE
            ae.add_requested_context(context)
            self.aes[kind] = ae
        self.assoc = None
        self.counter = 0

    def associate(self, kind: str):
        assoc = self.aes[kind].associate(self.host, self.port, ae_title=self.called)
        if not assoc.is_established:
            raise RuntimeError(f"association refused by {self.host}:{self.port}")
        return assoc

    def find(self, assoc, identifier: Dataset) -> int:
        """Matches of one C-FIND; an error unless its final status is Success (0x0000)."""
        matches, final = 0, None
        for status, _ in assoc.send_c_find(identifier, MWL):
            final = status.get("Status") if status else None
            if final in (0xFF00, 0xFF01):
                matches += 1
        if final != 0:
            raise RuntimeError(f"C-FIND ended with status {final!r}")
        return matches

    def mpps(self) -> int:
        """One MPPS cycle (PS3.4 F.7): N-CREATE IN PROGRESS, N-SET, N-SET COMPLETED."""
        self.counter += 1
        run_mpps_steps(self.assoc, *cycle_messages(f"B{self.counter}"))
        return 0

    def one(self, op: str) -> int:
        if op == "echo_assoc":
            assoc = self.associate("echo")
            status = assoc.send_c_echo()
            assoc.release()
            if not status or status.Status != 0:
                raise RuntimeError(f"C-ECHO failed: {status!r}")
            return 0
        if op == "find_assoc":
            assoc = self.associate("find")
            try:
                return self.find(assoc, self.selective)
            finally:
                assoc.release()
        if op == "find_open":
            return self.find(self.assoc, self.selective)
        if op == "broad_open":
            return self.find(self.assoc, self.broad)
        if op == "mpps":
            return self.mpps()
        raise ValueError(f"unknown operation {op!r}")

    def open(self, kind: str) -> None:
        self.assoc = self.associate(kind)

    def close(self) -> None:
        if self.assoc is not None:
            self.assoc.release()
            self.assoc = None


def handle(client, command: dict) -> dict:
    """One command of the line protocol for ``client`` (``open(kind)``, ``close()``,
    ``one(op)`` -> matches): this client's, and bench/raw_client.py's."""
    cmd = command["cmd"]
    if cmd == "open":
        client.open(command["kind"])
        return {"ok": True}
    if cmd == "close":
        client.close()
        return {"ok": True}
    if cmd == "batch":
        matches, latencies = 0, []
        for _ in range(int(command["n"])):
            start = time.perf_counter()
            matches = client.one(command["op"])
            latencies.append((time.perf_counter() - start) * 1000)
        latencies.sort()
        return {
            "ok": True,
            "done": len(latencies),
            "matches": matches,
            "median_ms": latencies[len(latencies) // 2],
            "max_ms": latencies[-1],
        }
    if cmd == "run":
        deadline, done = time.monotonic() + float(command["seconds"]), 0
        while time.monotonic() < deadline and done < 1_000_000:
            client.one(command["op"])
            done += 1
        return {"ok": True, "done": done}
    raise ValueError(f"unknown command {cmd!r}")


def serve(client) -> int:
    """Answer the harness's commands on stdin, one JSON line each, until quit."""
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        try:
            answer = handle(client, command)
        except Exception as exc:  # noqa: BLE001 - reported to the harness, which stops the run
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    client.close()
    return 0


def main() -> int:
    host, port, called, day = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    return serve(Client(host, port, called, day))


if __name__ == "__main__":
    sys.exit(main())
