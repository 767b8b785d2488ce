"""Fuzz harness: server log parsing, the run report, pynetdicom clients, the MPPS instance
pool, the module fixtures (one live server per case module, imported by each) and the
exchange of one message for the regression cases."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind

from conftest import SAMPLE, module_server
from dicom_clients import worklist_query
from fuzz_generators import unscheduled
from fuzz_wire import (
    ACSE_TIMEOUT,
    CONTEXTS,
    MAX_ASSOCIATIONS,
    PC_REJECTED,
    PENDING,
    REPLY_TIMEOUT,
    SEED,
    assoc_case,
    ds_bytes,
)
from worklist_mpps.client.pynetdicom_race import RequestorAE

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
    for a, b in itertools.pairwise(starts):
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
        found.append(
            Traceback(
                m.group(2),
                lines[0][m.end() :][:120],
                exc[:200],
                m.group(2).startswith("worklist_mpps") or bool(own),
                where,
                origin,
            )
        )
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


class Client:
    """A pynetdicom association (one transfer syntax) re-opened after an abort."""

    def __init__(self, port: int, implicit: bool) -> None:
        self.port, self.implicit, self.assoc = port, implicit, None
        self.started = 0.0

    def _assoc(self):
        if self.assoc is None or not self.assoc.is_established:
            ae = RequestorAE(ae_title="FUZZSCU")
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
            unscheduled(900_000 + self.n), ModalityPerformedProcedureStep, uid
        )
        assert status.get("Status") == 0x0000, f"valid N-CREATE failed: {status}"
        self.last = uid
        return uid

    def stored(self, uid: str, keyword: str) -> str | None:
        """One attribute of an instance as the server has it now (N-GET)."""
        from pydicom.datadict import tag_for_keyword

        _status, ds = self.client._assoc().send_n_get(
            [tag_for_keyword(keyword)], ModalityPerformedProcedureStep, uid
        )
        if ds is None or keyword not in ds:
            return None
        return str(ds[keyword].value or "")

    def close(self) -> None:
        self.client.close()


# --- fixtures ---------------------------------------------------------------------------------
# Module-scoped and imported by each test_fuzz_*.py: one server per case module (about a second
# to start), so the regression cases no longer run on the server the fuzz run has battered.


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with module_server(
        tmp_path_factory,
        "fuzz",
        "--sample-file",
        str(SAMPLE),
        "--acse-timeout",
        str(ACSE_TIMEOUT),
        "--network-timeout",
        "10",
        "--dimse-timeout",
        "10",
        "--max-associations",
        str(MAX_ASSOCIATIONS),
        # all from 127.0.0.1: its slot check opens MAX_ASSOCIATIONS at once
        "--max-connections-per-address",
        str(2 * MAX_ASSOCIATIONS),
    ) as live:
        yield live


@pytest.fixture(scope="module")
def quiet_clients() -> Iterator[None]:
    """pydicom/pynetdicom settings of this process only, restored afterwards."""
    saved = (
        pynetdicom_config.LOG_HANDLER_LEVEL,
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS,
        pydicom_config.settings.writing_validation_mode,
        sys.getrecursionlimit(),
    )
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    sys.setrecursionlimit(max(saved[3], 5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    (
        pynetdicom_config.LOG_HANDLER_LEVEL,
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS,
        pydicom_config.settings.writing_validation_mode,
    ) = saved[:3]
    sys.setrecursionlimit(saved[3])


@pytest.fixture(scope="module")
def captured(server, quiet_clients) -> dict:
    """Real PDUs of a pynetdicom client (A-ASSOCIATE-RQ, C-ECHO, C-FIND, N-CREATE, N-SET),
    recorded with EVT_DATA_SENT, plus encoded data sets for building messages."""
    sent: list[bytes] = []
    ae = RequestorAE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for _, abstract, ts in CONTEXTS:
        ae.add_requested_context(abstract, [ts])
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title="WORKLISTS",
        evt_handlers=[(evt.EVT_DATA_SENT, lambda e: sent.append(bytes(e.data)))],
    )
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
    record("N-CREATE", lambda: assoc.send_n_create(create, ModalityPerformedProcedureStep, set_uid))
    record("N-SET", lambda: assoc.send_n_set(progress, ModalityPerformedProcedureStep, set_uid))
    record("N-GET", lambda: assoc.send_n_get([0x00400252], ModalityPerformedProcedureStep, set_uid))
    assoc.release()
    rq = sent[0]
    assert rq[0] == 0x01 and all(messages.values()), messages.keys()
    return {
        "rq": rq,
        "messages": messages,
        "set_uid": set_uid,
        "find_data_i": ds_bytes(query),
        "find_data_e": ds_bytes(query, False),
        "create_data_i": ds_bytes(create),
        "create_data_e": ds_bytes(create, False),
        "set_data_i": ds_bytes(progress),
        "set_data_e": ds_bytes(progress, False),
    }


def db_path(server) -> Path:
    return Path(server.database_url.removeprefix("sqlite:///"))


# until it is fixed.


def exchange(server, captured: dict, payload: bytes) -> tuple[str, str]:
    """(outcome, server log lines) of one message on a fresh raw association."""
    tail = LogTail(server.log_path)
    outcome = assoc_case(server.port, captured["rq"], payload)
    time.sleep(0.2)
    return outcome, tail.read()


def our_tracebacks(log: str) -> list[Traceback]:
    return [tb for tb in tracebacks(log) if tb.ours]
