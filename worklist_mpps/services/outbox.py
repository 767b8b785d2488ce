"""The outbox as the service layer sees it (the worker that delivers it is
``delivery/worker.py``): every MPPS change queues one row per configured target in the
change's own transaction (:func:`enqueue`), so a notification exists exactly when the
change does; operators list rows and make failed ones due again.

Two kinds of targets share the table: MPPS targets (``orthanc``, ``forward:NAME``) get
the MPPS events keyed by the MPPS UID; HL7 destinations (``hl7:NAME``) get the status of
a worklist item that came from an order, keyed ``item:ID`` (services/order_status.py).
:func:`mpps_targets` and :func:`status_targets` are the one place that tells them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database, rowcount
from worklist_mpps.db.models import OutboxMessage, as_utc, utcnow
from worklist_mpps.services import audit
from worklist_mpps.services.audit import Actor

HL7_TARGET_PREFIX = "hl7:"  # an order placer that gets the procedure status back


def target_names(config: Config) -> list[str]:
    """The targets every MPPS change is queued for."""
    names = ["orthanc"] if config.orthanc_url else []
    names += [f"forward:{p.name}" for p in config.forward_peers if p.enabled]
    return names


def hl7_target_name(destination_name: str) -> str:
    return HL7_TARGET_PREFIX + destination_name


def status_target_names(config: Config) -> list[str]:
    """The HL7 destinations (enabled) that get the status of items from orders."""
    return [hl7_target_name(d.name) for d in config.hl7_destinations if d.enabled]


def mpps_targets(targets: Sequence[str]) -> list[str]:
    """Of the outbox targets, those that get MPPS events (N-CREATE / N-SET)."""
    return [t for t in targets if not t.startswith(HL7_TARGET_PREFIX)]


def status_targets(targets: Sequence[str]) -> list[str]:
    """Of the outbox targets, the HL7 destinations that get order status messages."""
    return [t for t in targets if t.startswith(HL7_TARGET_PREFIX)]


def enqueue(
    session: Session | Connection,
    targets: Sequence[str],
    mpps_uid: str,
    event: str,
    pps_status: str,
    payload: bytes | None,
) -> None:
    """Queue a change for each target, inside the caller's transaction (a session or a
    Core connection): one Core INSERT, sent now, rows in ``targets`` order (the ORM unit
    of work cost more than the rows, issue 18)."""
    if not targets:
        return
    session.execute(
        _INSERT,
        [
            {
                "target": target,
                "mpps_uid": mpps_uid,
                "event": event,
                "pps_status": pps_status,
                "payload": payload,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": utcnow(),
            }
            for target in targets
        ],
    )


_INSERT = insert(OutboxMessage.__table__)  # type: ignore[arg-type]


def list_messages(db: Database, state: str | None = None, limit: int = 100) -> list[dict]:
    with db.read() as session:
        stmt = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(OutboxMessage.state == state)
        return [
            {
                "id": m.id,
                "target": m.target,
                "mpps_uid": m.mpps_uid,
                "event": m.event,
                "pps_status": m.pps_status,
                "state": m.state,
                "attempts": m.attempts,
                "next_attempt_at": as_utc(m.next_attempt_at).isoformat(timespec="seconds"),
                "last_error": m.last_error,
                "created_at": as_utc(m.created_at).isoformat(timespec="seconds"),
                "delivered_at": (
                    as_utc(m.delivered_at).isoformat(timespec="seconds") if m.delivered_at else None
                ),
            }
            for m in session.scalars(stmt)
        ]


def retry(
    db: Database, ids: Sequence[int] = (), all_failed: bool = False, actor: Actor | None = None
) -> int:
    """Make failed (or waiting) rows due now again; the number of rows changed. With an
    ``actor`` (the operator page), audited ``outbox.retry`` in the same transaction."""
    with db.write() as session:
        stmt = update(OutboxMessage).where(OutboxMessage.state.in_(["failed", "pending"]))
        if not all_failed:
            stmt = stmt.where(OutboxMessage.id.in_(list(ids)))
        else:
            stmt = stmt.where(OutboxMessage.state == "failed")
        count = rowcount(
            session.execute(
                stmt.values(
                    state="pending", next_attempt_at=utcnow(), claimed_by=None, claimed_until=None
                )
            )
        )
        if actor is not None and count:
            target = "outbox:all-failed" if all_failed else f"outbox:{','.join(map(str, ids))}"
            audit.record(session, actor, "outbox.retry", target, {"rows": count})
        return count
