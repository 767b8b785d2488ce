"""The received HL7 messages with their outcome (the ``hl7_messages`` table), for
``worklist-mpps hl7 list|show`` and the management views: plain dicts, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import HL7Message, as_utc
from worklist_mpps.hl7_charsets import python_codec


def _summary(row: HL7Message) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": as_utc(row.received_at).isoformat(timespec="milliseconds"),
        "address": row.address,
        "sending_application": row.sending_application,
        "sending_facility": row.sending_facility,
        "control_id": row.control_id,
        "message_type": row.message_type,
        "version": row.version,
        "order_control": row.order_control,
        "placer_order_number": row.placer_order_number,
        "filler_order_number": row.filler_order_number,
        "patient_id": row.patient_id,
        "ack_code": row.ack_code,
        "error": row.error,
        "item_ids": row.item_ids or [],
    }


def list_messages(
    db: Database,
    *,
    ack_code: str | None = None,
    message_type: str | None = None,
    order: str | None = None,
    patient_id: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Messages newest first; ``order`` matches the placer or the filler order number."""
    M = HL7Message
    stmt = select(M).order_by(M.id.desc()).limit(limit)
    if ack_code:
        stmt = stmt.where(M.ack_code == ack_code.upper())
    if message_type:
        stmt = stmt.where(M.message_type == message_type.upper())
    if order:
        stmt = stmt.where((M.placer_order_number == order) | (M.filler_order_number == order))
    if patient_id:
        stmt = stmt.where(M.patient_id == patient_id)
    if since is not None:
        stmt = stmt.where(M.received_at >= since)
    with db.read() as session:
        return [_summary(row) for row in session.scalars(stmt)]


def _text(data: bytes) -> str:
    """Stored bytes as text: by their MSH-18 when it names a known set, else Latin-1
    (never fails); segments one per line."""
    codec = "latin-1"
    first = data.split(b"\r")[0]
    if first.startswith(b"MSH") and len(first) > 3:
        fields = first.split(first[3:4])
        if len(fields) > 17:
            codec = python_codec(fields[17].decode("latin-1")) or codec
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def show_message(db: Database, message_id: int) -> dict[str, Any] | None:
    """One message with its raw text and ACK, or None."""
    with db.read() as session:
        row = session.get(HL7Message, message_id)
        if row is None:
            return None
        out = _summary(row)
        out.update(message=_text(row.raw), ack=_text(row.ack), raw_size=len(row.raw))
        return out
