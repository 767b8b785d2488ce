"""Linking performed steps to worklist items (PS3.4 F.1: the MPPS drives the status of
the scheduled step it names in its Scheduled Step Attributes Sequence, F.7.2.1.2)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import MPPSTracking, Patient, WorklistItem, mpps_worklist_links
from worklist_mpps.services import audit
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.dicom import text_value


def _scheduled(*columns: Any) -> Any:
    """Items whose ``columns`` equal the bound values ``v0``, ``v1``, by id (built once:
    building a statement costs more than running it, issue 18)."""
    return (
        select(WorklistItem)
        .where(*(column == bindparam(f"v{n}") for n, column in enumerate(columns)))
        .order_by(WorklistItem.id)
    )


def _scheduled_ids(*columns: Any) -> Any:
    """As :func:`_scheduled`, the ids only: a Core statement (issue 18)."""
    return (
        select(WorklistItem.id)
        .where(*(column == bindparam(f"v{n}") for n, column in enumerate(columns)))
        .order_by(WorklistItem.id)
    )


_W = WorklistItem
_BY_ACC_STEP = _scheduled(_W.accession_number, _W.sps_id)
_BY_STUDY_STEP = _scheduled(_W.study_instance_uid, _W.sps_id)
_BY_ACC_RP = _scheduled(_W.accession_number, _W.requested_procedure_id)
_BY_STUDY = _scheduled(_W.study_instance_uid)
_BY_ACC = _scheduled(_W.accession_number)
_IDS = {
    stmt: _scheduled_ids(*columns)
    for stmt, columns in (
        (_BY_ACC_STEP, (_W.accession_number, _W.sps_id)),
        (_BY_STUDY_STEP, (_W.study_instance_uid, _W.sps_id)),
        (_BY_ACC_RP, (_W.accession_number, _W.requested_procedure_id)),
        (_BY_STUDY, (_W.study_instance_uid,)),
        (_BY_ACC, (_W.accession_number,)),
    )
}


def _strategies(ssas_item: Dataset) -> list[tuple[Any, tuple[str | None, ...]]]:
    """The identifications of one Scheduled Step Attributes Sequence item, most specific
    first: accession + step ID, study UID + step ID, accession + requested procedure ID,
    study UID, accession."""
    acc = text_value(ssas_item, "AccessionNumber")
    study = text_value(ssas_item, "StudyInstanceUID")
    step = text_value(ssas_item, "ScheduledProcedureStepID")
    rp = text_value(ssas_item, "RequestedProcedureID")
    return [
        (_BY_ACC_STEP, (acc, step)),
        (_BY_STUDY_STEP, (study, step)),
        (_BY_ACC_RP, (acc, rp)),
        (_BY_STUDY, (study,)),
        (_BY_ACC, (acc,)),
    ]


def find_scheduled_items(session: Session, ssas_item: Dataset) -> list[WorklistItem]:
    """Worklist items named by one Scheduled Step Attributes Sequence item: the first
    identification of :func:`_strategies` that finds any. No match is the unscheduled case
    (F.7.2.1.2 Note), accepted without a link."""
    for stmt, values in _strategies(ssas_item):
        if all(values):
            params = {f"v{n}": value for n, value in enumerate(values)}
            items = session.scalars(stmt, params).all()
            if items:
                return list(items)
    return []


def find_scheduled_item_ids(conn: Connection, ssas_items: Iterable[Dataset]) -> list[int]:
    """The ids of the worklist items named by the Scheduled Step Attributes Sequence
    items (:func:`find_scheduled_items` of each, in that order, each item once), by Core
    statements: nothing is loaded for an unscheduled step (issue 18)."""
    found: list[int] = []
    for ssas_item in ssas_items:
        for stmt, values in _strategies(ssas_item):
            if all(values):
                params = {f"v{n}": value for n, value in enumerate(values)}
                ids = list(conn.scalars(_IDS[stmt], params))
                if ids:
                    for item_id in ids:
                        if item_id not in found:
                            found.append(item_id)
                    break
    return found


def derived_item_status(mpps_statuses: Iterable[str]) -> str | None:
    """A worklist item's status from its performed steps (F.1: MPPS drives the SPS).

    IN PROGRESS while any step runs; otherwise COMPLETED if any completed;
    DISCONTINUED if all were discontinued; None without steps.
    """
    statuses = set(mpps_statuses)
    if not statuses:
        return None
    if "IN PROGRESS" in statuses:
        return "IN PROGRESS"
    return "COMPLETED" if "COMPLETED" in statuses else "DISCONTINUED"


@dataclass(frozen=True)
class StatusChange:
    """A worklist item whose step status an MPPS change moved (old -> new)."""

    item: WorklistItem
    old: str
    new: str


_LINKED_ITEMS = (
    select(mpps_worklist_links.c.item_pk)
    .where(mpps_worklist_links.c.mpps_pk == bindparam("pk"))
    .order_by(mpps_worklist_links.c.item_pk)
)
_LOCK_ITEMS = (
    select(WorklistItem)
    .where(WorklistItem.id.in_(bindparam("ids", expanding=True)))
    .order_by(WorklistItem.id)
    .with_for_update()
)
_ITEM_MPPS_STATUSES = (
    select(mpps_worklist_links.c.item_pk, MPPSTracking.status)
    .join(MPPSTracking, MPPSTracking.id == mpps_worklist_links.c.mpps_pk)
    .where(mpps_worklist_links.c.item_pk.in_(bindparam("ids", expanding=True)))
)


def linked_item_ids(session: Session | Connection, mpps_pk: int) -> list[int]:
    """The ids of the worklist items an MPPS is linked to, in id order: one statement on
    the link table (the ORM collection would load every item, issue 18)."""
    return list(session.scalars(_LINKED_ITEMS, {"pk": mpps_pk}))


def refresh_items(
    session: Session, item_ids: Iterable[int]
) -> tuple[list[WorklistItem], list[StatusChange]]:
    """Lock the linked items (in id order) and set each status from its MPPS (PS3.4 F.1),
    as flushed: the items, and those whose status changed, both in id order. Two
    statements whatever the number of items (issue 18: not one re-read per item)."""
    ids = sorted(set(item_ids))
    changes: list[StatusChange] = []
    if not ids:
        return [], changes
    session.flush()  # the statuses read below are the flushed ones
    items = list(session.scalars(_LOCK_ITEMS, {"ids": ids}))
    statuses: dict[int, list[str]] = {}
    for item_pk, status in session.execute(_ITEM_MPPS_STATUSES, {"ids": ids}):
        statuses.setdefault(item_pk, []).append(status)
    for item in items:
        status = derived_item_status(statuses.get(item.id, ()))
        if status is not None and status != item.sps_status:
            changes.append(StatusChange(item, item.sps_status, status))
            item.sps_status = status
    return items, changes


def refresh_item_statuses(session: Session, item_ids: Iterable[int]) -> list[StatusChange]:
    """Lock the linked items (in id order) and set each status from its MPPS; the items
    whose status changed, in id order."""
    return refresh_items(session, item_ids)[1]


def link_labels(items: Iterable[WorklistItem]) -> list[str]:
    return [f"{i.accession_number}/{i.sps_id}" for i in items]


class LinkError(Exception):
    """A link refused: ``not_found`` (no such MPPS or item) or a conflict."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.message, self.not_found = message, not_found


def link_mpps(
    db: Database,
    actor: Actor | None,
    mpps_uid: str,
    item_id: int,
    targets: Sequence[str] = (),
) -> list[StatusChange]:
    """Link an unscheduled MPPS (PS3.4 F.7.2.1.2 Note: its Scheduled Step Attributes named
    no known step) to the worklist item it performed, in one audited transaction: the
    item's status follows its MPPS from then on (F.1), and what a matched N-CREATE would
    have queued is queued now, the status for the order placer when the item came from an
    HL7 order (order_status.py; the MPPS events for Orthanc and the forward peers were
    queued when the MPPS arrived). The status changes made, in item id order.

    Refused (:class:`LinkError`): no such MPPS or item, or an MPPS already linked."""
    from worklist_mpps.services import order_status  # it imports this module

    with db.write() as session:
        record = session.scalars(
            select(MPPSTracking).where(MPPSTracking.sop_instance_uid == mpps_uid).with_for_update()
        ).first()
        if record is None:
            raise LinkError(f"no MPPS {mpps_uid}", not_found=True)
        # (an id past the 32-bit column would be a database error on PostgreSQL)
        item = session.get(WorklistItem, item_id) if 0 < item_id < 2**31 else None
        if item is None:
            raise LinkError(f"no worklist item {item_id}", not_found=True)
        if record.worklist_items:
            linked = ", ".join(link_labels(record.worklist_items))
            raise LinkError(f"MPPS {mpps_uid} is already linked to {linked}")
        old_status = item.sps_status
        record.worklist_items = [item]
        session.flush()
        changes = refresh_item_statuses(session, [item.id])
        queued = order_status.queue_status(session, targets, changes, record)
        audit.record(
            session,
            actor,
            "mpps.link",
            mpps_uid,
            {
                "item_id": item.id,
                "worklist_item": link_labels([item])[0],
                "from": old_status,
                "to": item.sps_status,
                "status_messages_queued": queued,
            },
        )
    return changes


CANDIDATES = 10  # items a link form offers


def candidate_items(
    session: Session,
    accession_number: str | None,
    patient_id: str | None,
    day: str | None,
    modality: str | None,
) -> list[dict[str, Any]]:
    """The items an unscheduled MPPS or a study without an order may be of (the link forms
    of the Problems view): the same accession, then the same patient ID, and only when
    neither finds one, the same day (and modality); SCHEDULED first, then by start. One
    indexed query each (an OR across the join would scan)."""
    W = WorklistItem
    tries: list[Any] = []
    if accession_number:
        tries.append(W.accession_number == accession_number)
    if patient_id:
        tries.append(Patient.patient_id == patient_id)
    seen: dict[int, dict[str, Any]] = {}
    for where in tries:
        _collect(session, where, seen)
    if not seen and day:  # the fallback
        _collect(
            session,
            (W.sps_start_date == day) & (W.modality == modality)
            if modality
            else W.sps_start_date == day,
            seen,
        )
    return list(seen.values())


def _collect(session: Session, where: Any, seen: dict[int, dict[str, Any]]) -> None:
    W = WorklistItem
    stmt = (
        select(W, Patient)
        .join(Patient, W.patient_pk == Patient.id)
        .where(where)
        .order_by(W.sps_status != "SCHEDULED", W.sps_start, W.id)
        .limit(CANDIDATES)
    )
    for item, patient in session.execute(stmt):
        if item.id not in seen and len(seen) < CANDIDATES:
            seen[item.id] = {
                "id": item.id,
                "accession_number": item.accession_number,
                "sps_id": item.sps_id,
                "sps_start": item.sps_start,
                "modality": item.modality,
                "status": item.sps_status,
                "patient_id": patient.patient_id,
                "patient_name": patient.patient_name,
                "description": item.requested_procedure_description or item.sps_description,
            }
