"""Stale items and retention (issue 16, deliverable 3): expiry and purge with a clock the
test controls, on SQLite and PostgreSQL; the lease with two instances; a live server."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from conftest import wait_for
from dicom_clients import findscu_files
from worklist_mpps.config import Config
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import (
    AuditEvent,
    MPPSTracking,
    OutboxMessage,
    WorklistItem,
)
from worklist_mpps.services import audit, lifecycle, schedule

NOW = datetime(2026, 6, 15, 12, 0, 0, tzinfo=UTC)


def item(db: Database, acc: str, date: str | None = None, time: str | None = None) -> int:
    data = {"accession_number": acc, "sps_start_date": date, "sps_start_time": time}
    return schedule.create_item(db, None, {"patient_id": "P-" + acc}, data)["id"]


def statuses(db: Database) -> dict[str, tuple[str, str | None]]:
    with db.read() as session:
        rows = session.scalars(select(WorklistItem))
        return {r.accession_number: (r.sps_status, r.status_reason) for r in rows}


def test_expiry_boundaries_and_audit(db):
    item(db, "BEFORE", "20260613", "115959")  # 2 days and 1 s before NOW
    item(db, "AFTER", "20260613", "120001")  # 1 s short of 2 days
    item(db, "NOTIME-OLD", "20260612")  # its day ended before the cutoff
    item(db, "NOTIME-DAY", "20260613")  # its day ends after the cutoff (13th, 12:00)
    item(db, "NODATE")
    started = item(db, "STARTED", "20260101", "080000")
    schedule.set_status(db, None, started, "IN PROGRESS", "started")

    assert lifecycle.expire(db, NOW, 0, tz=UTC) == 0, "0 days: off"
    assert lifecycle.expire(db, NOW, 2, tz=UTC) == 2
    assert statuses(db) == {
        "BEFORE": ("DISCONTINUED", "expired"),
        "AFTER": ("SCHEDULED", None),
        "NOTIME-OLD": ("DISCONTINUED", "expired"),
        "NOTIME-DAY": ("SCHEDULED", None),
        "NODATE": ("SCHEDULED", None),
        "STARTED": ("IN PROGRESS", None),
    }
    rows = audit.query(db, action="item.expire")
    assert len(rows) == 2
    assert {(r["actor"], r["channel"]) for r in rows} == {("lifecycle", "TIMER")}
    assert {r["detail"]["reason"] for r in rows} == {"expired"}
    assert {r["detail"]["sps_start"] for r in rows} == {"20260613115959", "20260612000000"}
    assert lifecycle.expire(db, NOW, 2, tz=UTC) == 0, "an expired item is expired once"
    # a day later the others are due too (but never the one without a date)
    assert lifecycle.expire(db, NOW + timedelta(days=1), 2, tz=UTC) == 2
    assert statuses(db)["NODATE"] == ("SCHEDULED", None)


def test_expiry_runs_in_batches(db):
    for n in range(7):
        item(db, f"OLD{n}", "20260101", "090000")
    stopping = threading.Event()
    stopping.set()  # a server stopping ends the pass after its current batch
    assert lifecycle.expire(db, NOW, 1, tz=UTC, batch=3, stop=stopping) == 3
    assert lifecycle.expire(db, NOW, 1, tz=UTC, batch=3) == 4
    assert {s for s, _ in statuses(db).values()} == {"DISCONTINUED"}
    assert len(audit.query(db, action="item.expire")) == 7


def finished(db: Database, acc: str, status: str, at: datetime, mpps: list[str] = ()) -> int:
    """A finished item last changed ``at``, linked to these MPPS (created if new)."""
    pk = item(db, acc, "20260101", "090000")
    with db.write() as session:
        row = session.get(WorklistItem, pk)
        row.sps_status, row.updated_at = status, at
        for uid in mpps:
            record = session.scalars(
                select(MPPSTracking).where(MPPSTracking.sop_instance_uid == uid)
            ).one_or_none() or MPPSTracking(sop_instance_uid=uid, status="COMPLETED", dataset=b"")
            row.mpps.append(record)
    return pk


def outbox(db: Database, uid: str, state: str) -> None:
    with db.write() as session:
        session.add(
            OutboxMessage(
                target="orthanc", mpps_uid=uid, event="N-SET", pps_status="COMPLETED", state=state
            )
        )


def count(db: Database, model) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_purge_boundaries_mpps_and_outbox(db):
    ended = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    finished(db, "DONE", "COMPLETED", ended, ["1.2.3.1"])
    outbox(db, "1.2.3.1", "delivered")
    finished(db, "CANCELLED", "DISCONTINUED", ended)
    finished(db, "SHARED-A", "COMPLETED", ended, ["1.2.3.2"])  # its MPPS also names ...
    shared_b = item(db, "SHARED-B", "20260101", "090000")  # ... a step still scheduled
    with db.write() as session:
        row = session.get(WorklistItem, shared_b)
        row.mpps.append(
            session.scalars(
                select(MPPSTracking).where(MPPSTracking.sop_instance_uid == "1.2.3.2")
            ).one()
        )
    finished(db, "UNDELIVERED", "COMPLETED", ended, ["1.2.3.3"])
    outbox(db, "1.2.3.3", "pending")
    item(db, "OPEN", "20260101", "090000")

    assert lifecycle.purge(db, ended + timedelta(days=400), 0)["items"] == 0, "0: off"
    before = ended + timedelta(days=30) - timedelta(seconds=1)
    assert lifecycle.purge(db, before, 30) == {"items": 0, "mpps": 0, "outbox": 0}
    after = ended + timedelta(days=30, seconds=1)
    assert lifecycle.purge(db, after, 30) == {"items": 3, "mpps": 1, "outbox": 1}
    assert sorted(statuses(db)) == ["OPEN", "SHARED-B", "UNDELIVERED"]
    with db.read() as session:
        kept = set(session.scalars(select(MPPSTracking.sop_instance_uid)))
    assert kept == {"1.2.3.2", "1.2.3.3"}, "an MPPS stays while another linked item does"
    assert count(db, OutboxMessage) == 1, "a pending notification stays, with its item"
    [summary] = audit.query(db, action="item.purge")
    assert (summary["actor"], summary["channel"]) == ("lifecycle", "TIMER")
    detail = summary["detail"]
    assert (detail["items"], detail["mpps"], detail["outbox"]) == (3, 1, 1)
    assert sorted(detail["accession_numbers"]) == ["CANCELLED", "DONE", "SHARED-A"]
    assert detail["mpps_uids"] == ["1.2.3.1"]
    assert lifecycle.purge(db, after, 30)["items"] == 0

    # the shared MPPS goes with the last item that names it
    schedule.set_status(db, None, shared_b, "DISCONTINUED", "not done")
    later = datetime.now(UTC) + timedelta(days=31)
    assert lifecycle.purge(db, later, 30) == {"items": 1, "mpps": 1, "outbox": 0}
    with db.read() as session:
        kept = set(session.scalars(select(MPPSTracking.sop_instance_uid)))
    assert kept == {"1.2.3.3"}


def test_purge_runs_in_batches(db):
    ended = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    for n in range(5):
        finished(db, f"F{n}", "COMPLETED", ended, [f"1.2.9.{n}"])
    assert lifecycle.purge(db, NOW, 10, batch=2) == {"items": 5, "mpps": 5, "outbox": 0}
    assert count(db, WorklistItem) == count(db, MPPSTracking) == 0
    assert len(audit.query(db, action="item.purge")) == 3


def test_two_instances_expire_each_item_once(pg_url):
    """Two instances on one PostgreSQL run a pass at the same moment: one holds the lease
    ``lifecycle``; each item is expired once, with one audit row."""
    first, second = Database(pg_url), Database(pg_url)
    try:
        migrate.upgrade(first.engine)
        for n in range(30):
            item(first, f"L{n}", "20260101", "090000")
        cfg = replace(Config(), worklist_expire_after=2.0, lifecycle_interval=5.0)
        barrier = threading.Barrier(2)
        results: dict[str, dict | None] = {}

        def run(name: str, db: Database) -> None:
            barrier.wait(10)
            results[name] = lifecycle.run_pass(db, cfg, name, now=NOW)

        threads = [
            threading.Thread(target=run, args=(n, d)) for n, d in (("a", first), ("b", second))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        done = [r for r in results.values() if r is not None]
        assert len(results) == 2 and len(done) == 1, results
        assert done[0]["expired"] == 30
        with first.read() as session:
            targets = list(
                session.scalars(select(AuditEvent.target).where(AuditEvent.action == "item.expire"))
            )
        assert len(targets) == len(set(targets)) == 30
        # the holder runs the next pass too; the other waits for the lease to run out
        holder = next(n for n, r in results.items() if r is not None)
        other = "b" if holder == "a" else "a"
        assert lifecycle.run_pass(first, cfg, other, now=NOW + timedelta(seconds=1)) is None
        assert lifecycle.run_pass(first, cfg, holder, now=NOW + timedelta(seconds=1)) == {
            "expired": 0,
            "items": 0,
            "mpps": 0,
            "outbox": 0,
        }
    finally:
        first.dispose()
        second.dispose()


def test_live_server_expires_an_old_item(live_server, tmp_path):
    """serve with expiry on: an item scheduled 3 days ago leaves the default worklist."""
    url = f"sqlite:///{tmp_path / 'life.db'}"
    db = Database(url)
    migrate.upgrade(db.engine)
    local = datetime.now().astimezone()
    old, today = local - timedelta(days=3), local
    schedule.create_item(
        db,
        None,
        {"patient_id": "PID-LIFE"},
        {
            "accession_number": "OLD-1",
            "modality": "CT",
            "sps_start_date": old.strftime("%Y%m%d"),
            "sps_start_time": old.strftime("%H%M%S"),
        },
    )
    schedule.create_item(
        db,
        None,
        {"patient_id": "PID-LIFE"},
        {
            "accession_number": "NEW-1",
            "modality": "CT",
            "sps_start_date": today.strftime("%Y%m%d"),
            "sps_start_time": today.strftime("%H%M%S"),
        },
    )
    server = live_server(
        url,
        "--load-sample-data",
        "false",
        "--worklist-expire-after",
        "1",
        "--lifecycle-interval",
        "0.5",
    )
    [event] = wait_for(lambda: audit.query(db, action="item.expire"), timeout=20)
    assert event["actor"] == "lifecycle" and event["detail"]["reason"] == "expired"
    found = findscu_files(
        server.port, tmp_path / "find", "PatientID=PID-LIFE", "AccessionNumber", "(0040,0100)[0]"
    )
    assert [str(ds.AccessionNumber) for ds in found] == ["NEW-1"]
    assert "Lifecycle: 1 item(s) expired" in server.log()
    server.stop()
    assert "Traceback" not in server.log()
    db.dispose()
