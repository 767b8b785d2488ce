"""Worklist management API (JSON): patients and worklist items for a RIS or scripts.

Shapes are checked by pydantic; DICOM rules (dates, statuses, lengths, the
Study Instance UID created once) by items.py, the same code the YAML loader
uses. A rule broken is a 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from worklist_mpps.services import audit
from worklist_mpps.services import schedule as store
from worklist_mpps.services import matching
from worklist_mpps.db.models import STEP_STATUSES, Patient, WorklistItem, as_utc
from worklist_mpps.services.schedule import ItemError
from worklist_mpps.web.context import web_actor, web_context
from worklist_mpps.web.errors import HTTPProblem

router = APIRouter(tags=["worklist management"])
MAX_PAGE = 500
MAX_ID = 2**63 - 1  # SQL BIGINT: larger numbers are no id at all (422, not a driver overflow)
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]
PatientPk = Annotated[int, Path(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


class Code(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(min_length=1, max_length=16)
    scheme: str = Field(min_length=1, max_length=16)
    meaning: str = Field("", max_length=64)
    version: str | None = Field(None, max_length=16)


class PatientFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    issuer_of_patient_id: str | None = Field(None, max_length=64)
    patient_name: str | None = Field(None, max_length=324, examples=["Müller^Hans"])
    birth_date: str | None = Field(None, examples=["19650314"])
    sex: Literal["M", "F", "O"] | None = None
    weight: str | None = Field(None, max_length=16)
    medical_alerts: str | None = Field(None, max_length=64)
    allergies: str | None = Field(None, max_length=64)
    pregnancy_status: int | None = Field(None, ge=1, le=4)


class PatientIn(PatientFields):
    patient_id: str = Field(min_length=1, max_length=64)


class PatientOut(PatientIn):
    id: int
    created_at: datetime
    updated_at: datetime


class ItemFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    referring_physician_name: str | None = Field(None, max_length=324)
    requesting_physician: str | None = Field(None, max_length=324)
    requested_procedure_id: str | None = Field(None, max_length=16)
    requested_procedure_description: str | None = Field(None, max_length=64)
    requested_procedure_priority: Literal["STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"] | None = None
    requested_procedure_codes: list[Code] | None = None
    admission_id: str | None = Field(None, max_length=64)
    current_patient_location: str | None = Field(None, max_length=64)
    sps_id: str | None = Field(None, max_length=16)
    sps_description: str | None = Field(None, max_length=64)
    sps_status: Literal[STEP_STATUSES] | None = None  # type: ignore[valid-type]
    modality: str | None = Field(None, max_length=16, examples=["CT"])
    scheduled_station_ae_title: str | None = Field(None, max_length=16)
    scheduled_station_name: str | None = Field(None, max_length=16)
    sps_location: str | None = Field(None, max_length=16)
    sps_start_date: str | None = Field(None, examples=["20261123"])
    sps_start_time: str | None = Field(None, examples=["0830"])
    scheduled_performing_physician_name: str | None = Field(None, max_length=324)
    scheduled_protocol_codes: list[Code] | None = None
    pre_medication: str | None = Field(None, max_length=64)
    requested_contrast_agent: str | None = Field(None, max_length=64)


class ItemIn(ItemFields):
    accession_number: str = Field(min_length=1, max_length=16)
    patient: PatientIn


class ItemPatch(ItemFields):
    accession_number: str | None = Field(None, min_length=1, max_length=16)
    patient_pk: int | None = Field(None, ge=1, le=MAX_ID,
                                   description="move the item to another patient")


class ItemOut(ItemFields):
    id: int
    accession_number: str | None
    study_instance_uid: str
    patient: PatientOut
    created_at: datetime
    updated_at: datetime


class Page(BaseModel):
    total: int
    offset: int
    limit: int


class ItemPage(Page):
    items: list[ItemOut]


class PatientPage(Page):
    patients: list[PatientOut]


# --- conversions ---------------------------------------------------------------------------------


def _codes_out(codes: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    if codes is None:
        return None
    keys = {"CodeValue": "value", "CodingSchemeDesignator": "scheme", "CodeMeaning": "meaning",
            "CodingSchemeVersion": "version"}
    return [{keys[k]: v for k, v in c.items() if k in keys} for c in codes]


def patient_out(p: Patient) -> dict[str, Any]:
    out = {name: getattr(p, name) for name in PatientOut.model_fields}
    out.update(created_at=as_utc(p.created_at), updated_at=as_utc(p.updated_at))
    return out


def item_out(item: WorklistItem) -> dict[str, Any]:
    out = {name: getattr(item, name) for name in ItemFields.model_fields}
    for name in store.CODE_FIELDS:
        out[name] = _codes_out(out[name])
    out.update(id=item.id, accession_number=item.accession_number,
               study_instance_uid=item.study_instance_uid, patient=patient_out(item.patient),
               created_at=as_utc(item.created_at), updated_at=as_utc(item.updated_at))
    return out


def _item_values(model: BaseModel) -> dict[str, Any]:
    values = model.model_dump(exclude_unset=True, exclude={"patient", "patient_pk"})
    for name in store.CODE_FIELDS:
        if values.get(name) is not None:
            values[name] = [{k: v for k, v in c.items() if v is not None} for c in values[name]]
    return values


def _unprocessable(exc: ItemError, patient_body: bool = False) -> HTTPProblem:
    """422 naming the field; a patients endpoint's body has no 'patient.' level."""
    field = exc.field.removeprefix("patient.") if patient_body else exc.field
    message = str(exc).removeprefix("patient.") if patient_body else str(exc)
    return HTTPProblem(422, message, field=field)


def _get_item(session: Session, item_id: int) -> WorklistItem:
    item = session.get(WorklistItem, item_id, options=[selectinload(WorklistItem.patient)])
    if item is None:
        raise HTTPProblem(404, f"no worklist item {item_id}")
    return item


def _duplicate(exc: IntegrityError) -> HTTPProblem:
    return HTTPProblem(409, "an item with this accession number and step ID exists",
                       field="accession_number")


# --- worklist items ------------------------------------------------------------------------------


@router.post("/worklist-items", status_code=201, response_model=ItemOut,
             responses={409: {}, 422: {}})
def create_item(body: ItemIn, request: Request, response: Response) -> dict:
    """Schedule a step. The Study Instance UID is generated here, once."""
    ctx = web_context(request)
    try:
        with ctx.db.write() as session:
            patient = store.get_or_create_patient(session, body.patient.model_dump(
                exclude_unset=True))
            values = _item_values(body)
            values["accession_number"] = body.accession_number
            key = store.normalize_item({k: values.get(k) for k in ("accession_number",
                                                                    "sps_id")})
            exists = store.duplicate_of(session, key["accession_number"], key["sps_id"])
            if exists:
                raise HTTPProblem(409, f"worklist item {exists} has this accession number "
                                       "and step ID", field="accession_number")
            item = store.create_item(session, patient, values, ctx.config.uid_prefix)
            session.flush()
            result = item_out(item)
            audit.record(session, web_actor(request), "item.create", f"item:{item.id}", {
                "accession_number": item.accession_number, "sps_id": item.sps_id,
                "study_instance_uid": item.study_instance_uid, "patient_id": patient.patient_id})
    except ItemError as exc:
        raise _unprocessable(exc) from None
    except IntegrityError as exc:
        raise _duplicate(exc) from None
    response.headers["Location"] = f"/api/worklist-items/{result['id']}"
    return result


@router.get("/worklist-items", response_model=ItemPage)
def list_items(request: Request,
               date: str | None = Query(None, description="YYYYMMDD or a range a-b"),
               modality: str | None = None,
               station: str | None = Query(None, description="Scheduled Station AE Title"),
               status: Literal[STEP_STATUSES] | None = None,  # type: ignore[valid-type]
               accession: str | None = None,
               patient_id: str | None = None,
               patient_name: str | None = Query(None, description="wildcards * and ?"),
               offset: Offset = 0, limit: int = Query(50, ge=1, le=MAX_PAGE)) -> dict:
    """Items of every status unless ``status`` is given; matching as C-FIND."""
    ctx = web_context(request)
    W = WorklistItem
    try:
        filters = [
            matching.date_match(W.sps_start_date, "date", date) if date else None,
            matching.string_match(W.modality, modality, "CS") if modality else None,
            matching.string_match(W.scheduled_station_ae_title, station, "AE")
            if station else None,
            W.sps_status == status if status else None,
            matching.string_match(W.accession_number, accession, "SH") if accession else None,
            matching.string_match(Patient.patient_id, patient_id, "LO") if patient_id else None,
            matching.person_name(Patient.patient_name_folded, patient_name)
            if patient_name else None,
        ]
    except matching.MatchError as exc:
        raise HTTPProblem(422, str(exc), field=exc.keyword) from None
    stmt = select(W).join(Patient, W.patient)
    for clause in filters:
        if clause is not None:
            stmt = stmt.where(clause)
    with ctx.db.read() as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery()))
        rows = session.scalars(stmt.options(selectinload(W.patient))
                               .order_by(W.sps_start, W.id).offset(offset).limit(limit))
        return {"total": total, "offset": offset, "limit": limit,
                "items": [item_out(i) for i in rows]}


@router.get("/worklist-items/{item_id}", response_model=ItemOut, responses={404: {}})
def read_item(item_id: ItemId, request: Request) -> dict:
    with web_context(request).db.read() as session:
        return item_out(_get_item(session, item_id))


@router.patch("/worklist-items/{item_id}", response_model=ItemOut,
              responses={404: {}, 409: {}, 422: {}})
def update_item(item_id: ItemId, body: ItemPatch, request: Request) -> dict:
    """Change an item; its Study Instance UID never changes."""
    ctx = web_context(request)
    try:
        with ctx.db.write() as session:
            item = _get_item(session, item_id)
            if body.patient_pk is not None:
                patient = session.get(Patient, body.patient_pk)
                if patient is None:
                    raise HTTPProblem(422, f"no patient {body.patient_pk}", field="patient_pk")
                item.patient = patient
            changes = _item_values(body)
            store.update_item(item, changes)
            audit.record(session, web_actor(request), "item.update", f"item:{item.id}",
                         {"fields": sorted(changes) + (["patient_pk"] if body.patient_pk
                                                       is not None else [])})
            other = store.duplicate_of(session, item.accession_number, item.sps_id, item.id)
            if other:
                raise HTTPProblem(409, f"worklist item {other} has this accession number and "
                                       "step ID", field="accession_number")
            session.flush()
            return item_out(item)
    except ItemError as exc:
        raise _unprocessable(exc) from None
    except IntegrityError as exc:
        raise _duplicate(exc) from None


@router.delete("/worklist-items/{item_id}", response_model=ItemOut | None,
               responses={404: {}, 409: {}})
def cancel_item(item_id: ItemId, request: Request,
                purge: bool = Query(False, description="delete instead of DISCONTINUED")
                ) -> Any:
    """Cancel: the item becomes DISCONTINUED (leaves the default worklist).

    With ``purge=true`` it is deleted, unless an MPPS refers to it (409).
    """
    ctx = web_context(request)
    with ctx.db.write() as session:
        item = _get_item(session, item_id)
        if purge:
            if item.mpps:
                raise HTTPProblem(409, f"item {item_id} has performed procedure steps: "
                                       "it can be cancelled, not deleted")
            audit.record(session, web_actor(request), "item.delete", f"item:{item.id}",
                         {"accession_number": item.accession_number})
            session.delete(item)
            return Response(status_code=204)
        audit.record(session, web_actor(request), "item.cancel", f"item:{item.id}",
                     {"from": item.sps_status, "to": "DISCONTINUED"})
        item.sps_status = "DISCONTINUED"
        session.flush()
        return item_out(item)


# --- patients ------------------------------------------------------------------------------------


def _get_patient(session: Session, patient_pk: int) -> Patient:
    patient = session.get(Patient, patient_pk)
    if patient is None:
        raise HTTPProblem(404, f"no patient {patient_pk}")
    return patient


@router.post("/patients", status_code=201, response_model=PatientOut,
             responses={409: {}, 422: {}})
def create_patient(body: PatientIn, request: Request, response: Response) -> dict:
    ctx = web_context(request)
    try:
        with ctx.db.write() as session:
            values = store.normalize_patient(body.model_dump(exclude_unset=True))
            if not values.get("patient_id"):
                raise ItemError("patient_id", "is required")
            issuer = values.get("issuer_of_patient_id")
            exists = session.scalar(select(Patient.id).where(
                Patient.patient_id == values["patient_id"],
                Patient.issuer_of_patient_id == issuer if issuer
                else Patient.issuer_of_patient_id.is_(None)))
            if exists:
                raise HTTPProblem(409, f"patient {exists} has this Patient ID",
                                  field="patient_id")
            patient = store.get_or_create_patient(session, values)
            session.flush()
            result = patient_out(patient)
            audit.record(session, web_actor(request), "patient.create", f"patient:{patient.id}",
                         {"patient_id": patient.patient_id})
    except ItemError as exc:
        raise _unprocessable(exc, patient_body=True) from None
    response.headers["Location"] = f"/api/patients/{result['id']}"
    return result


@router.get("/patients", response_model=PatientPage)
def list_patients(request: Request, patient_id: str | None = None,
                  patient_name: str | None = Query(None, description="wildcards * and ?"),
                  offset: Offset = 0,
                  limit: int = Query(50, ge=1, le=MAX_PAGE)) -> dict:
    stmt = select(Patient)
    if patient_id:
        stmt = stmt.where(matching.string_match(Patient.patient_id, patient_id, "LO"))
    if patient_name and (clause := matching.person_name(Patient.patient_name_folded,
                                                        patient_name)) is not None:
        stmt = stmt.where(clause)
    with web_context(request).db.read() as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery()))
        rows = session.scalars(stmt.order_by(Patient.id).offset(offset).limit(limit))
        return {"total": total, "offset": offset, "limit": limit,
                "patients": [patient_out(p) for p in rows]}


@router.get("/patients/{patient_pk}", response_model=PatientOut, responses={404: {}})
def read_patient(patient_pk: PatientPk, request: Request) -> dict:
    with web_context(request).db.read() as session:
        return patient_out(_get_patient(session, patient_pk))


@router.patch("/patients/{patient_pk}", response_model=PatientOut,
              responses={404: {}, 409: {}, 422: {}})
def update_patient(patient_pk: PatientPk, body: PatientFields, request: Request) -> dict:
    try:
        with web_context(request).db.write() as session:
            patient = _get_patient(session, patient_pk)
            values = store.normalize_patient(body.model_dump(exclude_unset=True))
            store.apply_values(patient, values)
            audit.record(session, web_actor(request), "patient.update", f"patient:{patient.id}",
                         {"fields": sorted(values)})
            session.flush()
            return patient_out(patient)
    except ItemError as exc:
        raise _unprocessable(exc, patient_body=True) from None
    except IntegrityError:
        raise HTTPProblem(409, "another patient has this Patient ID and issuer",
                          field="issuer_of_patient_id") from None


@router.delete("/patients/{patient_pk}", status_code=204, responses={404: {}, 409: {}})
def delete_patient(patient_pk: PatientPk, request: Request) -> Response:
    with web_context(request).db.write() as session:
        patient = _get_patient(session, patient_pk)
        if patient.items:
            raise HTTPProblem(409, f"patient {patient_pk} has worklist items")
        audit.record(session, web_actor(request), "patient.delete", f"patient:{patient.id}",
                     {"patient_id": patient.patient_id})
        session.delete(patient)
    return Response(status_code=204)
