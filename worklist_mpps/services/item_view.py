"""What the operator page shows of one worklist item (issue 15, the item page): the item
with its patient, its performed steps (MPPS), the HL7 messages of its order, its audit
trail and its outbox deliveries, as plain dicts.

Five queries whatever the item's history: item and patient, its MPPS, the HL7 messages,
the audit events, the outbox rows; each list is capped at MAX_ROWS (newest kept).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import joinedload

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import (
    AuditEvent,
    HL7Message,
    MPPSTracking,
    OutboxMessage,
    WorklistItem,
    as_utc,
    mpps_worklist_links,
)
from worklist_mpps.services.hl7_log import _text as hl7_text
from worklist_mpps.services.order_status import item_key
from worklist_mpps.services.schedule import NotFound, item_dict

MAX_ROWS = 200
CANDIDATES = 1000  # HL7 messages of the order or the patient looked at, newest first


def _time(value: Any) -> str | None:
    """A stored time as UTC, YYYY-MM-DD HH:MM:SS (the page says UTC in its headings)."""
    return None if value is None else as_utc(value).strftime("%Y-%m-%d %H:%M:%S")


def _mpps(m: MPPSTracking) -> dict[str, Any]:
    return {
        "uid": m.sop_instance_uid,
        "status": m.status,
        "pps_id": m.pps_id,
        "modality": m.modality,
        "station_ae_title": m.station_ae_title,
        "calling_ae_title": m.calling_ae_title,
        "start": m.start_datetime,
        "end": m.end_datetime,
        "series": m.series_count,
        "instances": m.instance_count,
        "discontinuation_reason": m.discontinuation_reason,
        "completeness": m.completeness,
        "received": m.received_count,
        "missing": m.missing_instances or [],
        "checked_at": _time(m.completeness_checked_at),
    }


def item_page(db: Database, item_id: int) -> dict[str, Any]:
    """The item (schedule.item_dict) with ``mpps`` (ordered by start, PS3.4 F.7.2.1's
    steps as performed), ``hl7`` (received order), ``audit`` (in time order, the item's
    and its MPPS'), ``outbox`` (its MPPS notifications and its HL7 status rows).
    NotFound for an unknown id."""
    W, M, H, A, Q = WorklistItem, MPPSTracking, HL7Message, AuditEvent, OutboxMessage
    links = mpps_worklist_links.c
    with db.read() as session:
        item = session.get(W, item_id, options=[joinedload(W.patient)])
        if item is None:
            raise NotFound(f"no worklist item {item_id}")
        out = item_dict(item)
        steps = session.scalars(
            select(M)
            .join(mpps_worklist_links, links.mpps_pk == M.id)
            .where(links.item_pk == item_id)
            .order_by(M.start_datetime.is_(None), M.start_datetime, M.id)
            .limit(MAX_ROWS)
        ).all()
        out["mpps"] = [_mpps(m) for m in steps]
        uids = [m.sop_instance_uid for m in steps]

        # messages of its order (placer / filler number), or that list the item among those
        # they touched (an ADT update has no order number: its patient is the candidate key,
        # every column here indexed; item_ids is checked below)
        orders = [
            H.placer_order_number == item.placer_order_number if item.placer_order_number else None,
            H.filler_order_number == item.filler_order_number if item.filler_order_number else None,
            H.patient_id == item.patient.patient_id,
        ]
        rows = session.scalars(
            select(H)
            .where(or_(*(c for c in orders if c is not None)))
            .order_by(H.id.desc())
            .limit(CANDIDATES)
        )
        hl7 = []
        for h in rows:
            of_order = bool(
                (item.placer_order_number and h.placer_order_number == item.placer_order_number)
                or (item.filler_order_number and h.filler_order_number == item.filler_order_number)
            )
            if of_order or item_id in (h.item_ids or []):
                hl7.append(
                    {
                        "id": h.id,
                        "received_at": _time(h.received_at),
                        "message_type": h.message_type,
                        "control_id": h.control_id,
                        "order_control": h.order_control,
                        "ack_code": h.ack_code,
                        "error": h.error,
                        "text": hl7_text(h.raw),
                    }
                )
                if len(hl7) >= MAX_ROWS:
                    break
        out["hl7"] = hl7[::-1]

        events = session.scalars(
            select(A)
            .where(A.target.in_([f"item:{item_id}", *uids]))
            .order_by(A.at.desc(), A.id.desc())
            .limit(MAX_ROWS)
        ).all()
        out["audit"] = [
            {
                "at": _time(e.at),
                "actor": e.actor,
                "channel": e.channel,
                "address": e.address,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in reversed(events)
        ]
        deliveries = session.execute(
            select(
                Q.id,
                Q.target,
                Q.mpps_uid,
                Q.event,
                Q.pps_status,
                Q.state,
                Q.attempts,
                Q.last_error,
                Q.created_at,
                Q.delivered_at,
                Q.next_attempt_at,
            )
            .where(Q.mpps_uid.in_([item_key(item_id), *uids]))
            .order_by(Q.id.desc())
            .limit(MAX_ROWS)
        ).all()
        out["outbox"] = [
            {
                "id": d.id,
                "target": d.target,
                "key": d.mpps_uid,
                "event": d.event,
                "pps_status": d.pps_status,
                "state": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "created_at": _time(d.created_at),
                "delivered_at": _time(d.delivered_at),
                "next_attempt_at": _time(d.next_attempt_at),
            }
            for d in reversed(deliveries)
        ]
        return out
