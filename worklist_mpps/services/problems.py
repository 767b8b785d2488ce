"""The Problems view's data (issue 15 deliverable 5): what an operator must look at, as
plain dicts from bounded queries (at most ``limit`` rows a section, with the total).

- MPPS that matched no worklist item: the unscheduled case of PS3.4 F.7.2.1.2 (the
  Scheduled Step Attributes named no known step), with candidate items to link;
- outbox deliveries that failed (they wait for an operator: services/outbox.py);
- HL7 messages that were refused, AE or AR (HL7 v2.5.1 2.9.2 MSA-1), with the reason;
- which stations queried the worklist, and when (services/station_queries.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import (
    HL7Message,
    MPPSTracking,
    OutboxMessage,
    StationQuery,
    as_utc,
    mpps_worklist_links,
    utcnow,
)
from worklist_mpps.services import station_queries
from worklist_mpps.services.links import candidate_items

LIMIT = 200  # rows a section shows
REFUSED_ACKS = ("AE", "AR")


@dataclass
class Section:
    """The rows shown (newest first) and how many there are in all."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


def _unlinked():  # noqa: ANN202 - a SQL expression
    link = mpps_worklist_links.c
    return ~exists(select(link.mpps_pk).where(link.mpps_pk == MPPSTracking.id))


def _candidates(session: Session, record: MPPSTracking) -> list[dict[str, Any]]:
    """Items the MPPS may have performed (links.candidate_items)."""
    day = (record.start_datetime or "")[:8] or None
    return candidate_items(
        session, record.accession_number, record.patient_id, day, record.modality
    )


def unmatched_mpps(db: Database, limit: int = LIMIT) -> Section:
    """MPPS instances linked to no worklist item, newest first, each with candidates."""
    M = MPPSTracking
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(M).where(_unlinked())) or 0
        records = session.scalars(select(M).where(_unlinked()).order_by(M.id.desc()).limit(limit))
        rows = [
            {
                "uid": r.sop_instance_uid,
                "status": r.status,
                "patient_id": r.patient_id,
                "patient_name": r.patient_name,
                "accession_number": r.accession_number,
                "study_instance_uid": r.study_instance_uid,
                "modality": r.modality,
                "station_ae_title": r.station_ae_title,
                "calling_ae_title": r.calling_ae_title,
                "start": r.start_datetime,
                "end": r.end_datetime,
                "candidates": _candidates(session, r),
            }
            for r in records
        ]
    return Section(rows, total)


def failed_deliveries(db: Database, limit: int = LIMIT) -> Section:
    """Outbox rows in state ``failed`` (they wait for an operator's retry), newest first."""
    Out = OutboxMessage
    failed = Out.state == "failed"
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(Out).where(failed)) or 0
        rows = [
            {
                "id": m.id,
                "target": m.target,
                "key": m.mpps_uid,
                # item:ID keys are an item's status for the order placer (order_status.py)
                "item_id": int(m.mpps_uid[5:])
                if m.mpps_uid.startswith("item:") and m.mpps_uid[5:].isdigit()
                else None,
                "event": m.event,
                "pps_status": m.pps_status,
                "attempts": m.attempts,
                "last_error": m.last_error,
                "created_at": as_utc(m.created_at),
            }
            for m in session.scalars(select(Out).where(failed).order_by(Out.id.desc()).limit(limit))
        ]
    return Section(rows, total)


def refused_hl7(db: Database, limit: int = LIMIT) -> Section:
    """HL7 messages answered AE or AR, newest first (the raw text: hl7_log.show_message)."""
    H = HL7Message
    refused = H.ack_code.in_(REFUSED_ACKS)
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(H).where(refused)) or 0
        rows = [
            {
                "id": m.id,
                "received_at": as_utc(m.received_at),
                "address": m.address,
                "sending_application": m.sending_application,
                "sending_facility": m.sending_facility,
                "message_type": m.message_type,
                "control_id": m.control_id,
                "ack_code": m.ack_code,
                "error": m.error,
            }
            for m in session.scalars(select(H).where(refused).order_by(H.id.desc()).limit(limit))
        ]
    return Section(rows, total)


def ago(then: datetime, now: datetime) -> str:
    """'12 s', '5 min', '3 h', '2 d' ago."""
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def stations(db: Database, limit: int = LIMIT) -> Section:
    """The last worklist query of each calling AE title, newest first, with how long ago
    (the table lags the queries by up to station_queries.FLUSH_SECONDS)."""
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(StationQuery)) or 0
    now = utcnow()
    rows = station_queries.list_stations(db, limit)
    for row in rows:
        row["ago"] = ago(row["last_query_at"], now)
    return Section(rows, total)
