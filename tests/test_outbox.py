"""The outbox worker's rules: order, retry, supersede, failure, claims, restarts."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from worklist_mpps.config import Config, ForwardPeer
from worklist_mpps.db.models import OutboxMessage, utcnow
from worklist_mpps.delivery.worker import Failed, OutboxWorker, Retry
from worklist_mpps.services.outbox import enqueue, list_messages, retry, target_names


class Recorder:
    """A target that records deliveries and fails on demand (our own component's test)."""

    def __init__(self, name="rec", supersede=False):
        self.name, self.supersede, self.hold_after_failure = name, supersede, False
        self.delivered: list[tuple[str, str]] = []
        self.fail_next: list[Exception] = []
        self.lock = threading.Lock()

    def deliver(self, message):
        if self.fail_next:
            raise self.fail_next.pop(0)
        with self.lock:
            self.delivered.append((message.mpps_uid, message.pps_status))
        return None


def queue(db, target, uid, *statuses):
    with db.write() as session:
        for status in statuses:
            enqueue(session, [target], uid, "N-SET", status, b"")


def worker(db, *targets, **cfg):
    config = Config(outbox_retry_min=cfg.get("retry_min", 60.0), outbox_retry_max=600.0)
    return OutboxWorker(db, config, {t.name: t for t in targets})


def states(db):
    return [(m["mpps_uid"], m["pps_status"], m["state"]) for m in reversed(list_messages(db))]


def test_in_order_per_instance(db):
    rec = Recorder()
    queue(db, "rec", "1.1", "IN PROGRESS", "IN PROGRESS", "COMPLETED")
    queue(db, "rec", "1.2", "IN PROGRESS")
    w = worker(db, rec)
    while w.run_once():
        pass
    assert [d for d in rec.delivered if d[0] == "1.1"] == [
        ("1.1", "IN PROGRESS"),
        ("1.1", "IN PROGRESS"),
        ("1.1", "COMPLETED"),
    ]
    assert {s for *_, s in states(db)} == {"delivered"}


def test_retry_blocks_later_rows_of_the_same_instance_only(db):
    rec = Recorder()
    queue(db, "rec", "2.1", "IN PROGRESS", "COMPLETED")
    queue(db, "rec", "2.2", "IN PROGRESS")
    rec.fail_next = [Retry("down")]
    w = worker(db, rec)
    w.run_once()
    assert rec.delivered == [("2.2", "IN PROGRESS")]
    pending = [m for m in list_messages(db) if m["state"] == "pending"]
    assert [(m["pps_status"], m["attempts"], m["last_error"]) for m in pending] == [
        ("COMPLETED", 0, None),
        ("IN PROGRESS", 1, "down"),
    ]
    assert w.run_once() == 0  # the failed row is not due yet (backoff), the next waits
    with db.write() as s:
        s.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
    while w.run_once():
        pass
    assert rec.delivered[1:] == [("2.1", "IN PROGRESS"), ("2.1", "COMPLETED")]


def test_backoff_doubles_up_to_the_maximum(db):
    w = worker(db, Recorder())
    assert [w._backoff(n) for n in (1, 2, 3, 10, 20)] == [60, 120, 240, 600, 600]


def test_superseding_target_gets_only_the_newest_state(db):
    rec = Recorder(supersede=True)
    queue(db, "rec", "3.1", "IN PROGRESS", "COMPLETED")
    w = worker(db, rec)
    while w.run_once():
        pass
    assert rec.delivered == [("3.1", "COMPLETED")]
    assert [s for *_, s in states(db)] == ["superseded", "delivered"]


def test_failed_rows_wait_for_an_operator(db):
    rec = Recorder()
    queue(db, "rec", "4.1", "IN PROGRESS")
    rec.fail_next = [Failed("refused")]
    w = worker(db, rec)
    w.run_once()
    assert states(db) == [("4.1", "IN PROGRESS", "failed")]
    assert w.run_once() == 0
    assert retry(db, all_failed=True) == 1
    w.run_once()
    assert rec.delivered == [("4.1", "IN PROGRESS")]


def test_two_workers_never_deliver_a_row_twice(db):
    rec = Recorder()
    for n in range(30):
        queue(db, "rec", f"5.{n}", "IN PROGRESS", "COMPLETED")
    workers = [worker(db, rec), worker(db, rec)]
    barrier = threading.Barrier(2)

    def drain(w):
        barrier.wait(timeout=10)
        for _ in range(200):
            if not w.run_once():
                break

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(rec.delivered) == sorted(
        [(f"5.{n}", s) for n in range(30) for s in ("IN PROGRESS", "COMPLETED")]
    )
    for n in range(30):
        mine = [s for u, s in rec.delivered if u == f"5.{n}"]
        assert mine == ["IN PROGRESS", "COMPLETED"]


def test_rows_survive_and_expired_claims_are_taken_over(db):
    queue(db, "rec", "6.1", "IN PROGRESS")
    with db.write() as s:  # a process that died holding the row
        s.execute(
            update(OutboxMessage).values(
                claimed_by="dead", claimed_until=utcnow() - timedelta(seconds=1)
            )
        )
    rec = Recorder()
    worker(db, rec).run_once()
    assert rec.delivered == [("6.1", "IN PROGRESS")]


def test_target_names_follow_the_configuration():
    cfg = Config(
        orthanc_url="http://orthanc:8042",
        forward_peers=[
            ForwardPeer("ris", "ris", 104),
            ForwardPeer("old", "old", 104, enabled=False),
        ],
    )
    assert target_names(cfg) == ["orthanc", "forward:ris"]
    assert target_names(Config()) == []


def test_mpps_changes_are_queued_in_the_same_transaction(db):
    from worklist_mpps.client.messages import ScheduledStep, n_create, n_set_completed
    from worklist_mpps.services import dicom, mpps

    ds = n_create([ScheduledStep("1.2.3")], modality="CT", station_ae_title="CT01")
    mpps.create(db, ds, "7.1", targets=["orthanc", "forward:ris"])
    bad = n_set_completed([])  # refused: nothing may be queued
    with pytest.raises(mpps.MPPSError):
        mpps.update(db, "7.1", bad, targets=["orthanc", "forward:ris"])
    with db.read() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [(r.target, r.event, r.pps_status) for r in rows] == [
            ("orthanc", "N-CREATE", "IN PROGRESS"),
            ("forward:ris", "N-CREATE", "IN PROGRESS"),
        ]
        assert dicom.decode_dataset(rows[1].payload).Modality == "CT"
