"""Scheduling operations on worklist items and patients, for every front end.

The HTTP API, and the HL7 order feed and operator page to come, call these functions
rather than the database: each opens its own transaction (``db.write()`` / ``db.read()``),
writes its audit record in that transaction, and answers with plain dicts. Broken rules
raise :class:`ItemError` (invalid data, naming the field), :class:`NotFound` or
:class:`Conflict`; a front end maps them to its own answer (HTTP 422/404/409).
Value normalisation and the row-level building blocks are in schedule_values.py.
About 480 lines: one function per operation a front end offers, each with its audit record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from worklist_mpps import timezone
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import FINAL_STATUSES, STEP_STATUSES, Patient, WorklistItem, as_utc
from worklist_mpps.services import audit, matching, order_status
from worklist_mpps.services import schedule_values as values
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.links import StatusChange
from worklist_mpps.services.schedule_values import (
    CODE_FIELDS,
    ITEM_FIELDS,
    PATIENT_FIELDS,
    ItemError,
)

__all__ = [
    "CODE_FIELDS",
    "STEP_STATUSES",
    "Conflict",
    "Invalid",
    "ItemError",
    "NotFound",
    "Page",
    "ScheduleError",
    "cancel_item",
    "create_item",
    "create_patient",
    "delete_patient",
    "get_item",
    "get_patient",
    "purge_item",
    "search_items",
    "search_patients",
    "set_status",
    "update_item",
    "update_patient",
]


class ScheduleError(Exception):
    """A rule of scheduling broken; ``message`` says which, ``field`` names the input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ScheduleError):
    """No item or patient with this id."""


class Conflict(ScheduleError):
    """The change contradicts stored data (a duplicate key, a reference that must stay)."""


class Invalid(ItemError):
    """Invalid input whose message is complete as it stands (no ``field:`` prefix)."""

    def __init__(self, field: str, message: str) -> None:
        ValueError.__init__(self, message)
        self.field = field


@dataclass(frozen=True)
class Page:
    """One page of a search: ``total`` matches, ``rows`` the dicts of this page."""

    total: int
    rows: list[dict[str, Any]]


# --- plain dicts ---------------------------------------------------------------------------


_CODE_KEYS = {
    "CodeValue": "value",
    "CodingSchemeDesignator": "scheme",
    "CodeMeaning": "meaning",
    "CodingSchemeVersion": "version",
}


def _codes_out(codes: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    """Codes in the short form callers write ({value, scheme, meaning, version})."""
    if codes is None:
        return None
    return [{_CODE_KEYS[k]: v for k, v in c.items() if k in _CODE_KEYS} for c in codes]


def patient_dict(p: Patient) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(p, name) for name in PATIENT_FIELDS}
    out.update(id=p.id, created_at=as_utc(p.created_at), updated_at=as_utc(p.updated_at))
    return out


def item_dict(item: WorklistItem) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(item, name) for name in ITEM_FIELDS}
    for name in CODE_FIELDS:
        out[name] = _codes_out(out[name])
    out.update(
        id=item.id,
        # the offset the start is stored in: the server's at that date (timezone.py)
        timezone_offset=timezone.server_offset_at(item.sps_start) if item.sps_start else None,
        status_reason=item.status_reason,
        patient=patient_dict(item.patient),
        created_at=as_utc(item.created_at),
        updated_at=as_utc(item.updated_at),
    )
    return out


# --- worklist items ------------------------------------------------------------------------


def _item(session: Session, item_id: int) -> WorklistItem:
    item = session.get(WorklistItem, item_id, options=[selectinload(WorklistItem.patient)])
    if item is None:
        raise NotFound(f"no worklist item {item_id}")
    return item


def _duplicate_key() -> Conflict:
    return Conflict(
        "an item with this accession number and step ID exists", field="accession_number"
    )


def _refuse_duplicate(
    session: Session, item_id: int | None, accession: str | None, sps_id: str | None
) -> None:
    """One item per accession number and Scheduled Procedure Step ID (PS3.4 Table K.6-1:
    the pair names the step a modality performs)."""
    other = values.duplicate_of(session, accession, sps_id, item_id)
    if other:
        raise Conflict(
            f"worklist item {other} has this accession number and step ID", field="accession_number"
        )


def search_items(
    db: Database,
    *,
    date: str | None = None,
    modality: str | None = None,
    station: str | None = None,
    status: str | None = None,
    accession: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> Page:
    """Items of every status unless ``status`` is given; the keys match as in C-FIND
    (PS3.4 C.2.2.2: single value, wildcard, date range; Person Name case-insensitive)."""
    W = WorklistItem
    if status and status not in STEP_STATUSES:
        raise ItemError("status", f"must be one of {', '.join(STEP_STATUSES)}")
    try:
        filters = [
            matching.date_match(W.sps_start_date, "date", date) if date else None,
            matching.string_match(W.modality, modality, "CS") if modality else None,
            matching.string_match(W.scheduled_station_ae_title, station, "AE") if station else None,
            W.sps_status == status if status else None,
            matching.string_match(W.accession_number, accession, "SH") if accession else None,
            matching.string_match(Patient.patient_id, patient_id, "LO") if patient_id else None,
            matching.person_name(Patient.patient_name_folded, patient_name)
            if patient_name
            else None,
        ]
    except matching.MatchError as exc:
        raise Invalid(exc.keyword, str(exc)) from None
    stmt = select(W).join(Patient, W.patient)
    for clause in filters:
        if clause is not None:
            stmt = stmt.where(clause)
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        rows = session.scalars(
            stmt.options(selectinload(W.patient))
            .order_by(W.sps_start, W.id)
            .offset(offset)
            .limit(limit)
        )
        return Page(total, [item_dict(i) for i in rows])


def get_item(db: Database, item_id: int) -> dict[str, Any]:
    with db.read() as session:
        return item_dict(_item(session, item_id))


def create_item(
    db: Database,
    actor: Actor | None,
    patient: Mapping[str, Any],
    data: Mapping[str, Any],
    uid_prefix: str = "",
) -> dict[str, Any]:
    """Schedule a step for the patient (found by Patient ID and issuer, else created).

    The Study Instance UID is generated here, once (PS3.4 Table K.6-1: the worklist
    gives it to the modality). An accession number and step ID already used: Conflict.
    """
    try:
        with db.write() as session:
            row = values.get_or_create_patient(session, patient)
            key = values.normalize_item({k: data.get(k) for k in ("accession_number", "sps_id")})
            _refuse_duplicate(session, None, key["accession_number"], key["sps_id"])
            result = item_dict(add_item(session, actor, row, data, uid_prefix))
    except IntegrityError:
        raise _duplicate_key() from None
    return result


def add_item(
    session: Session,
    actor: Actor | None,
    patient: Patient,
    data: Mapping[str, Any],
    uid_prefix: str = "",
    require_accession: bool = True,
) -> WorklistItem:
    """A new step in the caller's transaction, with its ``item.create`` audit record: the
    one way every front end (API, HL7 order feed) creates an item."""
    item = values.create_item(session, patient, data, uid_prefix, require_accession)
    session.flush()
    audit.record(
        session,
        actor,
        "item.create",
        f"item:{item.id}",
        {
            "accession_number": item.accession_number,
            "sps_id": item.sps_id,
            "placer_order_number": item.placer_order_number,
            "filler_order_number": item.filler_order_number,
            "study_instance_uid": item.study_instance_uid,
            "patient_id": patient.patient_id,
            # scheduled with an explicit offset: stored converted to the server's
            **({"timezone_offset": data["timezone_offset"]} if data.get("timezone_offset") else {}),
        },
    )
    return item


def update_item(
    db: Database,
    actor: Actor | None,
    item_id: int,
    data: Mapping[str, Any],
    patient_pk: int | None = None,
) -> dict[str, Any]:
    """Change an item, or move it to patient ``patient_pk``; its Study Instance UID never
    changes (it names the study the modality may already have made)."""
    try:
        with db.write() as session:
            item = _item(session, item_id)
            if patient_pk is not None:
                patient = session.get(Patient, patient_pk)
                if patient is None:
                    raise Invalid("patient_pk", f"no patient {patient_pk}")
                item.patient = patient
            values.update_item(item, data)
            audit.record(
                session,
                actor,
                "item.update",
                f"item:{item.id}",
                {"fields": sorted(data) + (["patient_pk"] if patient_pk is not None else [])},
            )
            _refuse_duplicate(session, item.id, item.accession_number, item.sps_id)
            session.flush()
            return item_dict(item)
    except IntegrityError:
        raise _duplicate_key() from None


def cancel_item(
    db: Database,
    actor: Actor | None,
    item_id: int,
    reason: str | None = None,
    targets: Sequence[str] = (),
) -> dict[str, Any]:
    """Cancel: the step becomes DISCONTINUED ("canceled or unsuccessfully terminated",
    PS3.4 K.6.1.2.2 / Table K.6-1 step status) and leaves the default worklist. The
    item is kept; ``reason`` (e.g. an HL7 ORC-16) is kept with it and in the audit record.

    A cancel made here (the page, the API) of an item from an HL7 order tells the order
    placer, through the HL7 destinations among ``targets`` (ORC-5 DC, the reason in
    ORC-16); a cancel the placer sent itself (the order feed) passes no targets."""
    with db.write() as session:
        item = _item(session, item_id)
        old = item.sps_status
        detail: dict[str, Any] = {"from": old, "to": "DISCONTINUED"}
        if reason:
            detail["reason"] = reason
        audit.record(session, actor, "item.cancel", f"item:{item.id}", detail)
        item.sps_status = "DISCONTINUED"
        item.status_reason = reason
        if old != "DISCONTINUED":
            change = StatusChange(item, old, "DISCONTINUED")
            order_status.queue_status(session, targets, [change], None)
        session.flush()
        return item_dict(item)


# A step's status by hand follows the performed step's state machine (PS3.4 F.7.2.1:
# IN PROGRESS, then COMPLETED or DISCONTINUED, both final): a step starts, then ends.
STATUS_MOVES = {"SCHEDULED": ("IN PROGRESS", "DISCONTINUED"), "IN PROGRESS": FINAL_STATUSES}


def set_status(
    db: Database,
    actor: Actor | None,
    item_id: int,
    status: str,
    reason: str,
    targets: Sequence[str] = (),
) -> dict[str, Any]:
    """Change a step's status by hand, with a reason (a modality that sends no MPPS): only
    the moves of STATUS_MOVES (Invalid otherwise); audited ``item.status``. An item from an
    HL7 order queues its status for the HL7 destinations among ``targets``, as an MPPS
    change does (order_status.py, IHE RAD-3)."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise Invalid("reason", "a reason is required")
    if len(reason) > 250:
        raise Invalid("reason", "at most 250 characters")
    with db.write() as session:
        item = session.get(WorklistItem, item_id, with_for_update=True)
        if item is None:
            raise NotFound(f"no worklist item {item_id}")
        old = item.sps_status
        if status not in STATUS_MOVES.get(old, ()):
            allowed = " or ".join(STATUS_MOVES.get(old, ())) or "nothing (it is final)"
            raise Invalid("status", f"a {old} step can become {allowed}, not {status}")
        audit.record(
            session,
            actor,
            "item.status",
            f"item:{item.id}",
            {"from": old, "to": status, "reason": reason},
        )
        item.sps_status = status
        item.status_reason = reason if status == "DISCONTINUED" else None
        order_status.queue_status(session, targets, [StatusChange(item, old, status)], None)
        session.flush()
        return item_dict(item)


def purge_item(db: Database, actor: Actor | None, item_id: int) -> None:
    """Delete an item, unless a performed procedure step refers to it (PS3.4 F.7.2.1:
    the MPPS's Scheduled Step Attributes Sequence names the step): then Conflict,
    and the item can only be cancelled."""
    with db.write() as session:
        item = _item(session, item_id)
        if item.mpps:
            raise Conflict(
                f"item {item_id} has performed procedure steps: it can be cancelled, not deleted"
            )
        audit.record(
            session,
            actor,
            "item.delete",
            f"item:{item.id}",
            {"accession_number": item.accession_number},
        )
        session.delete(item)


# --- patients ------------------------------------------------------------------------------


def _patient(session: Session, patient_pk: int) -> Patient:
    patient = session.get(Patient, patient_pk)
    if patient is None:
        raise NotFound(f"no patient {patient_pk}")
    return patient


def _same_patient_id(values_: Mapping[str, Any]) -> ColumnElement[bool]:
    issuer = values_.get("issuer_of_patient_id")
    return (
        Patient.issuer_of_patient_id == issuer if issuer else Patient.issuer_of_patient_id.is_(None)
    )


def search_patients(
    db: Database,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> Page:
    """Patients matching Patient ID and name as in C-FIND (PS3.4 C.2.2.2)."""
    stmt = select(Patient)
    try:
        # a universal key ('*' alone) gives no clause: every patient (PS3.4 C.2.2.2.3)
        if (
            patient_id
            and (clause := matching.string_match(Patient.patient_id, patient_id, "LO")) is not None
        ):
            stmt = stmt.where(clause)
        if (
            patient_name
            and (clause := matching.person_name(Patient.patient_name_folded, patient_name))
            is not None
        ):
            stmt = stmt.where(clause)
    except matching.MatchError as exc:
        raise Invalid(exc.keyword, str(exc)) from None
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        rows = session.scalars(stmt.order_by(Patient.id).offset(offset).limit(limit))
        return Page(total, [patient_dict(p) for p in rows])


def get_patient(db: Database, patient_pk: int) -> dict[str, Any]:
    with db.read() as session:
        return patient_dict(_patient(session, patient_pk))


def create_patient(db: Database, actor: Actor | None, data: Mapping[str, Any]) -> dict[str, Any]:
    """A new patient; one per Patient ID and Issuer of Patient ID (PS3.3 C.7.1.1)."""
    with db.write() as session:
        fields = values.normalize_patient(data)
        if not fields.get("patient_id"):
            raise ItemError("patient_id", "is required")
        exists = session.scalar(
            select(Patient.id).where(
                Patient.patient_id == fields["patient_id"], _same_patient_id(fields)
            )
        )
        if exists:
            raise Conflict(f"patient {exists} has this Patient ID", field="patient_id")
        patient = values.get_or_create_patient(session, fields)
        session.flush()
        result = patient_dict(patient)
        audit.record(
            session,
            actor,
            "patient.create",
            f"patient:{patient.id}",
            {"patient_id": patient.patient_id},
        )
    return result


def update_patient(
    db: Database, actor: Actor | None, patient_pk: int, data: Mapping[str, Any]
) -> dict[str, Any]:
    """Change a patient's demographics; Patient ID and issuer stay unique (Conflict)."""
    try:
        with db.write() as session:
            patient = _patient(session, patient_pk)
            fields = values.normalize_patient(data)
            values.apply_values(patient, fields)
            audit.record(
                session,
                actor,
                "patient.update",
                f"patient:{patient.id}",
                {"fields": sorted(fields)},
            )
            session.flush()
            return patient_dict(patient)
    except IntegrityError:
        raise Conflict(
            "another patient has this Patient ID and issuer", field="issuer_of_patient_id"
        ) from None


def delete_patient(db: Database, actor: Actor | None, patient_pk: int) -> None:
    """Delete a patient who has no worklist items (Conflict otherwise)."""
    with db.write() as session:
        patient = _patient(session, patient_pk)
        if patient.items:
            raise Conflict(f"patient {patient_pk} has worklist items")
        audit.record(
            session,
            actor,
            "patient.delete",
            f"patient:{patient.id}",
            {"patient_id": patient.patient_id},
        )
        session.delete(patient)
