"""The HL7 messages received on the order feed, as operators read them
(``worklist-mpps hl7 list|show``): each with the ACK it got (HL7 v2.5.1 2.9.2, original
mode: AA, AE, AR), why, and the worklist items it touched. Plain dicts: the front ends
never see the database models.
"""

from __future__ import annotations

from sqlalchemy import select

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import HL7Message, WorklistItem, as_utc
from worklist_mpps.hl7_charsets import python_codec


def _sender(m: HL7Message) -> str:
    """MSH-3 and MSH-4 as application/facility (first component, HD.1)."""
    application = (m.sending_application or "").split("^")[0]
    facility = (m.sending_facility or "").split("^")[0]
    return f"{application}/{facility}" if facility else application


def _summary(m: HL7Message) -> dict:
    return {
        "id": m.id,
        "received_at": as_utc(m.received_at).isoformat(timespec="seconds"),
        "address": m.address,
        "sender": _sender(m),
        "sending_application": m.sending_application,
        "sending_facility": m.sending_facility,
        "control_id": m.control_id,
        "message_type": m.message_type,
        "version": m.version,
        "order_control": m.order_control,
        "placer_order_number": m.placer_order_number,
        "filler_order_number": m.filler_order_number,
        "patient_id": m.patient_id,
        "ack_code": m.ack_code,
        "error": m.error,
        "item_ids": list(m.item_ids or []),
    }


def list_messages(db: Database, ack: str | None = None, limit: int = 100) -> list[dict]:
    """The newest ``limit`` messages, newest first; ``ack``: only AA, AE or AR."""
    with db.read() as session:
        stmt = select(HL7Message).order_by(HL7Message.id.desc()).limit(limit)
        if ack:
            stmt = stmt.where(HL7Message.ack_code == ack.upper())
        return [_summary(m) for m in session.scalars(stmt)]


def decode(raw: bytes) -> str:
    """A message's text for reading: in its MSH-18 character set when it names one we
    know (HL7 v2.5.1 2.15.9.18), else UTF-8; bytes that do not decode are shown
    escaped (a refused message may be anything)."""
    codec = "utf-8"
    first = raw.split(b"\r", 1)[0]
    if first.startswith(b"MSH") and len(first) > 3:
        fields = first.split(first[3:4])
        if len(fields) > 17:
            codec = python_codec(fields[17].decode("ascii", "replace")) or codec
    return raw.decode(codec, "backslashreplace")


def segments(raw: bytes) -> list[str]:
    """The segments of a message, one per line (CR is the segment terminator, HL7
    v2.5.1 2.5.1; LF too, as some senders write files)."""
    text = decode(raw).replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s]


def show_message(db: Database, message_id: int) -> dict | None:
    """One message with its segments, its ACK and the items it touched; None when there
    is no such message. ``raw`` and ``ack_raw`` are the bytes as received and sent."""
    with db.read() as session:
        m = session.get(HL7Message, message_id)
        if m is None:
            return None
        items = []
        for item_id in m.item_ids or []:
            item = session.get(WorklistItem, item_id)
            items.append(
                {"id": item_id}
                if item is None
                else {
                    "id": item_id,
                    "accession_number": item.accession_number,
                    "sps_id": item.sps_id,
                    "modality": item.modality,
                    "sps_status": item.sps_status,
                }
            )
        return {
            **_summary(m),
            "items": items,
            "segments": segments(m.raw or b""),
            "ack_segments": segments(m.ack or b""),
            "raw": bytes(m.raw or b""),
            "ack_raw": bytes(m.ack or b""),
        }
