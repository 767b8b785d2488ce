"""Resilience under load: a crash (SIGKILL), a graceful stop (SIGTERM), two server
processes on one database, and the outbox of two processes delivered once downstream.

Every test runs on a SQLite file and on PostgreSQL (skipped when it does not answer).
Modality threads open one association per message, as many modalities do, and record
each message with what they sent and the reply they saw. Every loop is bounded in
messages and in time; every server is stopped by the ``live_server`` fixture. The
counts are printed (run with ``-s`` to see them).

Over 400 lines: four scenarios on shared helpers (Reply, Step, Load, Durability: ~270 lines).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from conftest import SAMPLE
from dicom_clients import find, worklist_query
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    discontinuation_reason,
    n_create,
    n_set_completed,
    n_set_discontinued,
    n_set_progress,
)
from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.db.engine import Database
from worklist_mpps.services.outbox import list_messages

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

UID_ROOT = "1.2.826.0.1.3680043.10.543"
# Non-ASCII person names (ISO_IR 192); a middle name makes each instance's name unique.
NAMES = [
    ("Müller", "Jürgen"),
    ("Sánchez", "María"),
    ("Ødegård", "Åse"),
    ("Łukasiewicz", "Zoë"),
    ("Дмитриев", "Иван"),
    ("山田", "太郎"),
]
FINALS = ("COMPLETED", "DISCONTINUED")
NO_LONGER_UPDATED = 0xA710


# --- one message, one association -------------------------------------------------------


@dataclass
class Reply:
    status: int | None  # None: no DIMSE response (refused, aborted, timed out)
    established: bool
    error_id: int | None = None
    dataset: Dataset | None = None
    error: str = ""
    at: float = field(default_factory=time.monotonic)  # when the exchange ended


def exchange(
    port: int,
    op: str,
    uid: str,
    ds: Dataset | None = None,
    calling: str = "MODALITY",
    timeout: float = 10.0,
) -> Reply:
    """One N-CREATE / N-SET / N-GET on its own association; never raises."""
    ae = RequestorAE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(MPPS)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS")
    except Exception as exc:  # noqa: BLE001 - recorded as unacknowledged
        return Reply(None, False, error=f"associate: {exc!r}")
    if not assoc.is_established:
        return Reply(None, False, error="association not established")
    try:
        if op == "create":
            rsp, out = assoc.send_n_create(ds, MPPS, uid)
        elif op == "set":
            rsp, out = assoc.send_n_set(ds, MPPS, uid)
        else:
            rsp, out = assoc.send_n_get([], MPPS, uid)
    except Exception as exc:  # noqa: BLE001
        return Reply(None, True, error=repr(exc))
    finally:
        if assoc.is_established:
            assoc.release()
    code = rsp.get("Status") if rsp is not None else None  # empty dataset when aborted
    return Reply(
        code,
        True,
        rsp.get("ErrorID") if rsp is not None else None,
        out,
        "" if code is not None else "no response",
    )


# --- MPPS cycles ------------------------------------------------------------------------


@dataclass
class Step:
    """One message of an MPPS instance: what was sent, what it should leave, the reply."""

    uid: str
    kind: str  # create | progress | final | again (second final) | late (N-SET after final)
    ds: Dataset
    expect: dict  # status/series/refs the instance has once this message is applied
    expect_code: int = 0x0000
    server: int = 0
    reply: Reply | None = None

    @property
    def op(self) -> str:
        return "create" if self.kind == "create" else "set"

    @property
    def acked(self) -> bool:
        return self.reply is not None and self.reply.status == 0x0000


def cycle(
    prefix: str,
    t: int,
    c: int,
    final: str = "COMPLETED",
    scheduled: ScheduledStep | None = None,
    extra: bool = False,
) -> list[Step]:
    """N-CREATE, N-SET progress (one series, one image), final N-SET; with ``extra`` a
    second final N-SET of the other kind and a late progress N-SET, both to be refused."""
    uid = f"{prefix}.{t}.{c}"
    family, given = NAMES[(t + c) % len(NAMES)]
    name = f"{family}^{given}^T{t}C{c}"
    sched = scheduled or ScheduledStep(f"{uid}.1", f"ACC{t}-{c}")
    series_uid = f"{uid}.2"
    images = [Instance(CTImageStorage, f"{uid}.3.{i}") for i in (1, 2)]
    first, both = [images[0].sop_instance_uid], [i.sop_instance_uid for i in images]
    create = n_create(
        [sched],
        modality="CT",
        station_ae_title=f"CT{t:02d}",
        patient_name=name,
        patient_id=f"PID-{t}-{c}",
    )
    in_progress = {"status": "IN PROGRESS", "series": [series_uid], "refs": first}
    steps = [
        Step(
            uid,
            "create",
            create,
            {
                "patient_name": name,
                "study": sched.study_instance_uid,
                "status": "IN PROGRESS",
                "series": [],
                "refs": [],
            },
        ),
        Step(uid, "progress", n_set_progress([Series(series_uid, images[:1])]), in_progress),
    ]
    completed = n_set_completed([Series(series_uid, images)])
    discontinued = n_set_discontinued(reason=discontinuation_reason("110501"))
    if final == "COMPLETED":
        steps.append(
            Step(
                uid,
                "final",
                completed,
                {"status": "COMPLETED", "series": [series_uid], "refs": both},
            )
        )
    else:  # no series in the N-SET: the step keeps the one it has
        steps.append(Step(uid, "final", discontinued, {**in_progress, "status": "DISCONTINUED"}))
    if extra:
        again = discontinued if final == "COMPLETED" else completed
        steps.append(Step(uid, "again", again, steps[-1].expect, expect_code=0x0110))
        steps.append(
            Step(
                uid,
                "late",
                n_set_progress([Series(series_uid, images)]),
                steps[-1].expect,
                expect_code=0x0110,
            )
        )
    return steps


class Load:
    """Modality threads looping over full MPPS cycles until the first failure, ``stop``,
    ``max_messages`` each or ``max_seconds``."""

    def __init__(
        self,
        port: int,
        prefix: str,
        clients: int = 4,
        max_messages: int = 1500,
        max_seconds: float = 30.0,
    ) -> None:
        self.port, self.prefix = port, prefix
        self.stop = threading.Event()
        self.max_messages = max_messages
        self.deadline = time.monotonic() + max_seconds
        self.sent: list[list[Step]] = [[] for _ in range(clients)]
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(clients)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, t: int) -> None:
        sent = self.sent[t]
        try:
            for c in itertools.count():
                for step in cycle(self.prefix, t, c):
                    if (
                        self.stop.is_set()
                        or len(sent) >= self.max_messages
                        or time.monotonic() > self.deadline
                    ):
                        return
                    step.reply = exchange(
                        self.port, step.op, step.uid, step.ds, calling=f"CT{t:02d}"
                    )
                    sent.append(step)
                    if not step.acked:
                        return
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(f"client {t}: {exc!r}")

    def alive(self) -> int:
        return sum(t.is_alive() for t in self.threads)

    def join(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"
        assert not self.errors, self.errors

    @property
    def steps(self) -> list[Step]:
        return [s for sent in self.sent for s in sent]


# --- checking what a server has ----------------------------------------------------------


def n_get_all(port: int, uids: list[str]) -> dict[str, Dataset | None]:
    """Every instance over N-GET on one association; None for 0x0112 No such instance."""
    ae = RequestorAE(ae_title="CHECKER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS")
    assert assoc.is_established
    found: dict[str, Dataset | None] = {}
    try:
        for uid in uids:
            status, ds = assoc.send_n_get([], MPPS, uid)
            code = status.get("Status")
            assert code in (0x0000, 0x0112), f"N-GET {uid}: {status}"
            found[uid] = ds if code == 0x0000 else None
    finally:
        assoc.release()
    return found


def observed(ds: Dataset) -> dict:
    series = ds.get("PerformedSeriesSequence") or []
    ssas = ds.get("ScheduledStepAttributesSequence") or [Dataset()]
    return {
        "status": ds.get("PerformedProcedureStepStatus"),
        "series": [s.SeriesInstanceUID for s in series],
        "refs": [
            r.ReferencedSOPInstanceUID
            for s in series
            for r in (s.get("ReferencedImageSequence") or [])
        ],
        "patient_name": str(ds.get("PatientName", "")),
        "study": ssas[0].get("StudyInstanceUID"),
    }


def _state(expect: dict) -> tuple:
    return expect["status"], expect["series"], expect["refs"]


@dataclass
class Durability:
    clients: int
    sent: int
    acked: Counter
    unacked: int
    lost: int
    problems: list[str]

    def line(self) -> str:
        return (
            f"{self.clients} clients, {self.sent} messages sent, "
            f"{sum(self.acked.values())} acknowledged ({dict(self.acked)}), "
            f"{self.unacked} unacknowledged, {self.lost} acknowledged lost"
        )


def check_durable(port: int, steps: list[Step], clients: int) -> Durability:
    """Each acknowledged message, seen over N-GET.

    N-CREATE: the instance exists with its PatientName and study UID. Final N-SET: its
    status and referenced images. Progress N-SET without a later acknowledged final: IN
    PROGRESS with its series. The one unacknowledged message a client ended with may or
    may not have been applied (the reply was lost, not necessarily the change).
    """
    by_uid: dict[str, list[Step]] = defaultdict(list)
    for step in steps:
        by_uid[step.uid].append(step)
    acked_uids = [uid for uid, ss in by_uid.items() if any(s.acked for s in ss)]
    found = n_get_all(port, acked_uids)
    lost, problems = 0, []
    for uid in acked_uids:
        ss = by_uid[uid]
        inflight = [s for s in ss if not s.acked]
        assert len(inflight) <= 1 and (not inflight or inflight[0] is ss[-1]), ss
        ds = found[uid]
        seen = observed(ds) if ds is not None else None
        for n, step in enumerate(ss):
            if not step.acked:
                continue
            if seen is None:
                ok = False
            elif step.kind == "create":
                ok = (
                    seen["patient_name"] == step.expect["patient_name"]
                    and seen["study"] == step.expect["study"]
                )
            elif any(s.acked and s.kind == "final" for s in ss[n + 1 :]):
                ok = True  # replaced by the acknowledged final N-SET, checked on its own
            else:
                allowed = [_state(step.expect)] + [_state(s.expect) for s in inflight]
                ok = (seen["status"], seen["series"], seen["refs"]) in allowed
            if not ok:
                lost += 1
                problems.append(f"{uid} {step.kind}: sent {step.expect}, found {seen}")
    acked = Counter(s.kind for s in steps if s.acked)
    return Durability(clients, len(steps), acked, sum(not s.acked for s in steps), lost, problems)


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def integrity_check(url: str) -> None:
    path = sqlite_path(url)
    if path is None:
        return
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()


def cli_json(url: str, cwd: Path, *args: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKLIST_MPPS_")}
    proc = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", *args, "--json", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- 1. SIGKILL under load ----------------------------------------------------------------


def test_sigkill_under_load_loses_no_acknowledged_mpps(shared_url, live_server, capsys):
    server = live_server(shared_url, "--load-sample-data", "false")
    load = Load(server.port, f"{UID_ROOT}.1")
    time.sleep(2.0)
    sending = load.alive()
    killed_at = time.monotonic()
    server.kill()
    load.join()
    assert sending == len(load.threads), (
        f"only {sending} clients still sending at the kill: {load.steps[-3:]}"
    )
    early = [s for s in load.steps if not s.acked and s.reply.at < killed_at]
    assert not early, [(s.uid, s.kind, s.reply) for s in early]  # failures only by the kill
    integrity_check(shared_url)

    restarted = live_server(shared_url, "--load-sample-data", "false")
    report = check_durable(restarted.port, load.steps, len(load.threads))
    with capsys.disabled():
        print(f"\n[SIGKILL {shared_url.split(':')[0]}] {report.line()}")
    assert sum(report.acked.values()) >= 20, "too little load to mean anything"
    assert report.lost == 0, report.problems[:10]


# --- 2. SIGTERM under load ----------------------------------------------------------------


def test_sigterm_under_load_exits_0_and_keeps_every_acknowledged_mpps(
    shared_url, live_server, capsys
):
    grace = 5.0
    server = live_server(shared_url, "--load-sample-data", "false", "--shutdown-grace", str(grace))
    load = Load(server.port, f"{UID_ROOT}.2")
    time.sleep(2.0)
    sending = load.alive()
    proc, started = server.proc, time.monotonic()
    server.stop(timeout=grace + 10)  # SIGTERM, SIGKILL only after grace + 10 s
    took = time.monotonic() - started
    load.join()
    log = server.log()
    assert sending == len(load.threads)
    assert proc.returncode == 0, f"exit {proc.returncode} after {took:.1f} s\n{log[-3000:]}"
    assert took < grace, f"took {took:.1f} s, grace {grace} s"
    assert "Shutting down" in log
    # in-flight associations finish: a client whose association was accepted got its reply
    cut = [s for s in load.steps if s.reply.established and s.reply.status is None]
    assert not cut, [(s.uid, s.kind, s.reply) for s in cut]
    integrity_check(shared_url)

    restarted = live_server(shared_url, "--load-sample-data", "false")
    report = check_durable(restarted.port, load.steps, len(load.threads))
    with capsys.disabled():
        print(f"\n[SIGTERM {shared_url.split(':')[0]}] {report.line()}, exit 0 in {took:.2f} s")
    assert sum(report.acked.values()) >= 20
    assert report.lost == 0, report.problems[:10]


# --- 3. two processes on one database ------------------------------------------------------


def mwl_query(status: str = "") -> Dataset:
    """The shared worklist query, also asking for the step's ID and status."""
    ds = worklist_query()
    sps = ds.ScheduledProcedureStepSequence[0]
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepStatus = status
    return ds


def items_by_status(port: int, status: str) -> dict[str, str]:
    """accession/step -> status of the items a C-FIND for ``status`` returns."""
    statuses, found = find(port, mwl_query(status))
    assert statuses[-1].Status == 0x0000, statuses[-1]
    out = {}
    for ds in found:
        sps = ds.ScheduledProcedureStepSequence[0]
        out[f"{ds.AccessionNumber}/{sps.ScheduledProcedureStepID}"] = (
            sps.ScheduledProcedureStepStatus
        )
    return out


def drive(
    ports: list[int], t: int, instances: list[list[Step]], sent: list[Step], errors: list[str]
) -> None:
    """Send each instance's messages in order, alternating the server per message."""
    try:
        for k, steps in enumerate(instances):
            for i, step in enumerate(steps):
                step.server = (t + k + i) % len(ports)
                step.reply = exchange(
                    ports[step.server], step.op, step.uid, step.ds, calling=f"CT{t:02d}"
                )
                sent.append(step)
                if step.kind == "create" and not step.acked:
                    break
    except BaseException as exc:  # noqa: BLE001
        errors.append(f"driver {t}: {exc!r}")


def test_two_servers_on_one_database_keep_every_transition_legal(
    shared_url, live_server, tmp_path, capsys
):
    servers = [
        live_server(shared_url, "--sample-file", str(SAMPLE)),
        live_server(shared_url, "--load-sample-data", "false"),
    ]
    ports = [s.port for s in servers]
    statuses, found = find(ports[1], mwl_query())
    assert statuses[-1].Status == 0
    items = sorted(
        (
            ds.AccessionNumber,
            ds.StudyInstanceUID,
            ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID,
        )
        for ds in found
    )
    assert [a for a, _, _ in items] == [f"A{10001 + n}" for n in range(30)]

    drivers, per_driver = 6, 10
    plans: list[list[list[Step]]] = []
    linked: dict[str, str] = {}  # MPPS UID -> "accession/step" of its worklist item
    free_items = iter(items)
    for t in range(drivers):
        plan = []
        for k in range(per_driver):
            final = FINALS[(t + k // 2) % 2]
            sched = None
            if k % 2 == 0:  # half the instances perform one sample item each
                acc, study, sps_id = next(free_items)
                sched = ScheduledStep(study, acc, sps_id=sps_id)
            steps = cycle(f"{UID_ROOT}.3", t, k, final, sched, extra=True)
            if k % 3:  # not every instance tries a late progress N-SET
                steps.pop()
            if sched:
                linked[steps[0].uid] = f"{sched.accession_number}/{sched.sps_id}"
            plan.append(steps)
        plans.append(plan)

    done = threading.Event()
    finds: list[tuple[int, int | None, int]] = []  # server, final status, matches
    errors: list[str] = []
    accessions = {a for a, _, _ in items}

    def query(q: int) -> None:
        try:
            deadline = time.monotonic() + 90
            for n in range(400):
                if done.is_set() or time.monotonic() > deadline:
                    return
                server = (q + n) % 2
                sts, ids = find(ports[server], mwl_query())
                finds.append((server, sts[-1].get("Status") if sts else None, len(ids)))
                assert all(ds.AccessionNumber in accessions for ds in ids)
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"query {q}: {exc!r}")

    sent: list[list[Step]] = [[] for _ in range(drivers)]
    started = time.monotonic()
    threads = [
        threading.Thread(target=drive, args=(ports, t, plans[t], sent[t], errors), daemon=True)
        for t in range(drivers)
    ]
    queries = [threading.Thread(target=query, args=(q,), daemon=True) for q in range(2)]
    for thread in threads + queries:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    for thread in queries:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads + queries), "a client thread hung"
    assert not errors, errors

    steps = [s for ss in sent for s in ss]
    wrong = [
        (s.uid, s.kind, s.server, s.reply)
        for s in steps
        if s.reply.status != s.expect_code
        or (s.expect_code == 0x0110 and s.reply.error_id != NO_LONGER_UPDATED)
    ]
    assert not wrong, wrong[:10]  # every transition after a final status refused
    assert finds and all(code == 0x0000 for _, code, _ in finds), finds
    created = [s.uid for s in steps if s.kind == "create" and s.acked]
    assert len(created) == drivers * per_driver

    # every instance once, in the last acknowledged state; refused N-SETs changed nothing
    last: dict[str, dict] = {}
    for s in steps:
        if s.acked:
            last[s.uid] = s.expect
    rows = cli_json(shared_url, tmp_path, "mpps", "list", "--limit", "10000")
    uids = [r["sop_instance_uid"] for r in rows]
    assert len(uids) == len(set(uids)) == len(created)
    assert set(uids) == set(created)
    for row in rows:
        expect = last[row["sop_instance_uid"]]
        assert (row["status"], row["series"], row["instances"]) == (
            expect["status"],
            len(expect["series"]),
            len(expect["refs"]),
        ), row
        assert row["worklist_items"] == (
            [linked[row["sop_instance_uid"]]] if row["sop_instance_uid"] in linked else []
        ), row

    # linked worklist items end in the status derived from their one MPPS, on both servers
    wanted = {item: last[uid]["status"] for uid, item in linked.items()}
    for port in ports:
        seen: dict[str, str] = {}
        for status in ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED"):
            seen.update(items_by_status(port, status))
        assert seen == wanted

    with capsys.disabled():
        print(
            f"\n[scale-out {shared_url.split(':')[0]}] 2 servers, {drivers} MPPS clients, "
            f"{len(created)} instances, {len(steps)} N-CREATE/N-SET "
            f"({sum(s.acked for s in steps)} acknowledged, "
            f"{sum(s.expect_code == 0x0110 for s in steps)} refused 0x0110 as expected), "
            f"{len(linked)} worklist items linked, {len(finds)} C-FINDs, {elapsed:.1f} s"
        )


# --- 4. one outbox, two delivering processes ------------------------------------------------


DELIVERED = re.compile(
    r"Outbox #(\d+) forward:down (\S+) (N-CREATE|N-SET) "
    r"(IN PROGRESS|COMPLETED|DISCONTINUED): delivered"
)
RECEIVED = re.compile(
    r"worklist_mpps\.dimse\.mpps: (N-CREATE|N-SET) from \S+: (\S+) "
    r"(IN PROGRESS|COMPLETED|DISCONTINUED)"
)


def test_two_servers_deliver_each_outbox_row_once_in_order(
    shared_url, live_server, tmp_path, capsys
):
    downstream = live_server(
        f"sqlite:///{tmp_path / 'downstream.db'}", "--load-sample-data", "false"
    )
    peers = json.dumps(
        [{"name": "down", "host": "127.0.0.1", "port": downstream.port, "ae_title": "WORKLISTS"}]
    )
    flags = ("--load-sample-data", "false", "--outbox-retry-min", "0.3", "--outbox-retry-max", "1")
    upstream = [
        live_server(shared_url, *flags, env={"WORKLIST_MPPS_FORWARD_PEERS": peers})
        for _ in range(2)
    ]
    ports = [s.port for s in upstream]

    drivers, per_driver = 4, 6
    plans = [
        [cycle(f"{UID_ROOT}.4", t, k, FINALS[(t + k) % 2]) for k in range(per_driver)]
        for t in range(drivers)
    ]
    sent: list[list[Step]] = [[] for _ in range(drivers)]
    errors: list[str] = []
    threads = [
        threading.Thread(target=drive, args=(ports, t, plans[t], sent[t], errors), daemon=True)
        for t in range(drivers)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    steps = [s for ss in sent for s in ss]
    assert all(s.acked for s in steps), [(s.uid, s.kind, s.reply) for s in steps if not s.acked]
    final = {s.uid: s.expect for s in steps}  # the last message of each instance is final

    db = Database(shared_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            rows = list_messages(db, limit=10000)
            if len(rows) == len(steps) and all(r["state"] == "delivered" for r in rows):
                break
            assert time.monotonic() < deadline, Counter(r["state"] for r in rows)
            time.sleep(0.3)
    finally:
        db.dispose()
    delivered_in = time.monotonic() - started

    rows = cli_json(shared_url, tmp_path, "outbox", "list", "--limit", "10000")
    assert len(rows) == len(steps)
    assert Counter(r["state"] for r in rows) == {"delivered": len(steps)}
    assert {r["target"] for r in rows} == {"forward:down"}
    per_uid: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["id"]):
        per_uid[row["mpps_uid"]].append(row)
    assert set(per_uid) == set(final)
    for uid, rs in per_uid.items():
        assert [(r["event"], r["pps_status"]) for r in rs] == [
            ("N-CREATE", "IN PROGRESS"),
            ("N-SET", "IN PROGRESS"),
            ("N-SET", final[uid]["status"]),
        ], rs
        stamps = [r["delivered_at"] for r in rs]
        assert stamps == sorted(stamps), rs

    # each row delivered by exactly one of the two processes, exactly once
    deliveries = Counter()
    by_server = []
    for server in upstream:
        ids = [int(m.group(1)) for m in DELIVERED.finditer(server.log())]
        by_server.append(len(ids))
        deliveries.update(ids)
    assert deliveries == Counter({r["id"]: 1 for r in rows})

    # downstream: every instance once, its messages in order, nothing applied twice
    down_log = downstream.log()
    received: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for m in RECEIVED.finditer(down_log):
        received[m.group(2)].append((m.group(1), m.group(3)))
    for uid, rs in per_uid.items():
        assert received[uid] == [(r["event"], r["pps_status"]) for r in rs], (uid, received[uid])
    assert "0x0111" not in down_log and "0x0110" not in down_log
    down_rows = cli_json(
        f"sqlite:///{tmp_path / 'downstream.db'}", tmp_path, "mpps", "list", "--limit", "10000"
    )
    assert sorted(r["sop_instance_uid"] for r in down_rows) == sorted(final)
    creates = {s.uid: s.expect for s in steps if s.kind == "create"}
    for uid, ds in n_get_all(downstream.port, sorted(final)).items():
        assert ds is not None, uid
        seen = observed(ds)
        assert (seen["status"], seen["series"], seen["refs"]) == _state(final[uid]), seen
        assert (seen["patient_name"], seen["study"]) == (
            creates[uid]["patient_name"],
            creates[uid]["study"],
        ), seen

    with capsys.disabled():
        print(
            f"\n[outbox {shared_url.split(':')[0]}] 2 upstream servers, {drivers} clients, "
            f"{len(final)} instances, {len(steps)} messages acknowledged, {len(rows)} outbox "
            f"rows delivered once (by server: {by_server}), "
            f"{len(received)} instances downstream, {delivered_in:.1f} s"
        )
