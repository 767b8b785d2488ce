"""Procedure status back to the order placer (IHE RAD TF-2 RAD-3 Filler Order Management:
the Department System Scheduler tells the Order Placer that a procedure started, completed
or was discontinued; HL7 v2.5.1 4.5.1 ORC-1 ``SC`` status changed, ORC-5 order status).

When an MPPS change moves a worklist item that came from an HL7 order (it has a placer
or filler order number) to IN PROGRESS, COMPLETED or DISCONTINUED, :func:`queue_status`
queues one outbox row per HL7 destination in the MPPS change's own transaction, so the
message exists exactly when the change does. A status changed by hand on the operator page
(schedule.set_status, for modalities that send no MPPS) queues the same row, without MPPS.
The row is keyed ``item:ID``: the worker delivers the rows of one (destination, item) in id
order, so IP always precedes CM.

The row's payload is a JSON snapshot of what the message needs, taken now; the message
itself (format, version, MSH-10) is built at delivery time (delivery/hl7_out.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from worklist_mpps.db.models import MPPSTracking, utcnow
from worklist_mpps.services import outbox
from worklist_mpps.services.links import StatusChange

# step status -> ORC-5 Order Status (HL7 Table 0038): IP in process, CM completed,
# DC discontinued (IHE RAD TF-2 RAD-3 / dcm4chee's MPPS to HL7 mapping)
ORDER_STATUS = {"IN PROGRESS": "IP", "COMPLETED": "CM", "DISCONTINUED": "DC"}


def item_key(item_id: int) -> str:
    """The outbox ordering key (the ``mpps_uid`` column) of an item's status rows."""
    return f"item:{item_id}"


def _codes(codes: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    return [
        {
            "value": str(c.get("CodeValue") or ""),
            "scheme": str(c.get("CodingSchemeDesignator") or ""),
            "meaning": str(c.get("CodeMeaning") or ""),
        }
        for c in codes or []
    ]


def snapshot(change: StatusChange, record: MPPSTracking | None) -> dict[str, Any]:
    """What the status message of one change needs, as plain JSON values (``mpps`` None
    for a change made by hand)."""
    item = change.item
    patient = item.patient
    return {
        "item_id": item.id,
        "status": change.new,
        "previous_status": change.old,
        "order_status": ORDER_STATUS[change.new],
        "queued_at": utcnow().strftime("%Y%m%d%H%M%S+0000"),
        "patient": {
            "id": patient.patient_id,
            "issuer": patient.issuer_of_patient_id,
            "name": patient.patient_name,
            "birth_date": patient.birth_date,
            "sex": patient.sex,
        },
        "admission_id": item.admission_id,
        "placer_order_number": item.placer_order_number,
        "filler_order_number": item.filler_order_number,
        "accession_number": item.accession_number,
        "requested_procedure_id": item.requested_procedure_id,
        "requested_procedure_description": item.requested_procedure_description,
        "requested_procedure_codes": _codes(item.requested_procedure_codes),
        "study_instance_uid": item.study_instance_uid,
        "sps_id": item.sps_id,
        "sps_description": item.sps_description,
        "sps_start": item.sps_start,
        "modality": item.modality,
        "scheduled_station_ae_title": item.scheduled_station_ae_title,
        "scheduled_station_name": item.scheduled_station_name,
        "sps_location": item.sps_location,
        "status_reason": item.status_reason,  # a cancel's or a status by hand's reason
        "mpps": None
        if record is None
        else {
            "uid": record.sop_instance_uid,
            "status": record.status,
            "pps_id": record.pps_id,
            "station_ae_title": record.station_ae_title,
            "modality": record.modality,
            "start": record.start_datetime,
            "end": record.end_datetime,
            "series": record.series_count,
            "instances": record.instance_count,
            "discontinuation_reason": record.discontinuation_reason,
        },
    }


def from_order(change: StatusChange) -> bool:
    """The item came from an HL7 order, and its new status is one the placer hears of."""
    return change.new in ORDER_STATUS and bool(
        change.item.placer_order_number or change.item.filler_order_number
    )


def queue_status(
    session: Session,
    targets: Sequence[str],
    changes: Sequence[StatusChange],
    record: MPPSTracking | None,
) -> int:
    """Queue the status of each changed item for each HL7 destination among ``targets``,
    inside the caller's transaction; the number of rows queued. The outbox ``event`` is
    ``SC^<ORC-5>``; the message type (ORM^O01 / OMI^O23) is the destination's, at delivery."""
    destinations = outbox.status_targets(targets)
    queued = 0
    for change in changes:
        if not destinations or not from_order(change):
            continue
        payload = json.dumps(snapshot(change, record), ensure_ascii=False).encode("utf-8")
        outbox.enqueue(
            session,
            destinations,
            item_key(change.item.id),
            f"SC^{ORDER_STATUS[change.new]}",
            change.new,
            payload,
        )
        queued += len(destinations)
    return queued
