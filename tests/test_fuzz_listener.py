"""Bounded fuzzing of the DICOM listener: Upper Layer PDUs (PS3.8), DIMSE messages (PS3.7)
and worklist / MPPS datasets (PS3.4 Annex K, F), against one live server.

Every case is either raw bytes on a TCP connection or a request through a real pynetdicom
association. A fixed seed makes the run repeatable; counts, per-case socket timeouts and
an overall time budget keep it bounded (well under two minutes).

The server must answer each request with a DIMSE status (failures are fine) or abort /
close the association; it must not crash, hang or stop serving, must keep its database
consistent, and must not log Python tracebacks from worklist_mpps code. Known findings
have minimal regression cases in test_fuzz_datasets.py and test_fuzz_pdu.py, marked
xfail(strict=True): when one is fixed, its xfail turns into an XPASS failure and the marker
should be removed.

The harness is in tests/fuzz_*.py (wire, mutators, generators, runner, harness: fixtures, log
and report). Run: .venv/bin/pytest tests/test_fuzz_*.py -q -p no:cacheprovider -s
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

import pytest
from pydicom import Dataset
from pynetdicom.sop_class import Verification

from dicom_clients import echo, find, worklist_query
from fuzz_harness import (  # noqa: F401 (module fixtures)
    Case,
    Report,
    Traceback,
    captured,
    db_path,
    quiet_clients,
    server,
    tracebacks,
)
from fuzz_runner import Fuzzer
from fuzz_wire import FUZZ_BUDGET, MAX_ASSOCIATIONS, SEED, show
from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.services.dicom import decode_dataset

pytestmark = pytest.mark.dimse  # talks DICOM to a live server


# --- the fuzz run ---------------------------------------------------------------------------


def known_finding(tb: Traceback) -> str | None:
    """Which open finding a worklist_mpps traceback is: none are open (F1 to F6 are fixed,
    each kept as a regression case in test_fuzz_datasets.py or test_fuzz_pdu.py), so every
    traceback from our code fails the run."""
    return None


def test_fuzz_dicom_listener(server, captured):
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
    print(
        f"\n=== DICOM fuzz: seed {SEED:#x}, {len(report.cases)} cases in {report.seconds:.1f} s ==="
    )
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
    print(
        f"\nTracebacks in the server log: {sum(v[2] for v in seen.values())} "
        f"({sum(v[2] for v in ours.values())} from worklist_mpps code)"
    )
    for sig, (tb, case, count) in sorted(seen.items()):
        tag = f"OURS {known_finding(tb) or 'NEW'}" if tb.ours else "pynetdicom"
        print(
            f"  [{tag}] x{count} {sig}\n"
            f"      {tb.message} -> {tb.exception}\n"
            f"      first: {case.category} / {case.label}: {show(case.data)} => {case.outcome}"
        )
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
            ae = RequestorAE(ae_title="SLOTS")
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
    print(
        f"MPPS rows stored: {len(rows)}, undecodable: {len(undecodable)}, status column "
        f"differing from the stored data set: {len(inconsistent)}"
    )
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
