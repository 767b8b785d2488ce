"""What ``worklist-mpps hl7 show`` adds to the message log of :mod:`hl7_log`: the items a
message touched as they are now, and the message's bytes exactly as received (to resend
it, or to see what a sender really wrote). Plain dicts and bytes: the front ends never see
the database models."""

from __future__ import annotations

from collections.abc import Iterable

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import HL7Message, WorklistItem


def raw_message(db: Database, message_id: int) -> bytes | None:
    """The message as received (without MLLP framing), or None when there is no such
    message."""
    with db.read() as session:
        row = session.get(HL7Message, message_id)
        return None if row is None else bytes(row.raw)


def touched_items(db: Database, item_ids: Iterable[int]) -> list[dict]:
    """The worklist items a message created or changed, as they are now (a cancelled
    order's item stays, DISCONTINUED)."""
    with db.read() as session:
        items = []
        for item_id in item_ids:
            item = session.get(WorklistItem, item_id)
            items.append(
                {"id": item_id, "gone": True}
                if item is None
                else {
                    "id": item_id,
                    "accession_number": item.accession_number,
                    "sps_id": item.sps_id,
                    "modality": item.modality,
                    "sps_status": item.sps_status,
                }
            )
        return items
