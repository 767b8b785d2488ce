"""Worklist management API (JSON): patients and worklist items for a RIS or scripts.

Thin routes: shapes are checked by pydantic (schemas.py); every rule (DICOM values,
duplicates, cancel, purge, audit) is in services/schedule.py, which the HL7 feed and
the operator page use as well. Its errors become HTTP answers in :func:`_answers`:
invalid data 422 naming the field, NotFound 404, Conflict 409.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from worklist_mpps.services import schedule
from worklist_mpps.services.schedule import STEP_STATUSES, Conflict, ItemError, NotFound
from worklist_mpps.web.context import web_actor, web_context
from worklist_mpps.web.errors import HTTPProblem
from worklist_mpps.web.schemas import (
    MAX_ID,
    ItemIn,
    ItemOut,
    ItemPage,
    ItemPatch,
    PatientFields,
    PatientIn,
    PatientOut,
    PatientPage,
    item_values,
)

router = APIRouter(tags=["worklist management"])
MAX_PAGE = 500
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]
PatientPk = Annotated[int, Path(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


@contextlib.contextmanager
def _answers(patient_body: bool = False) -> Iterator[None]:
    """Service errors as HTTP problems; a patients endpoint's body has no 'patient.' level."""
    try:
        yield
    except ItemError as exc:
        field = exc.field.removeprefix("patient.") if patient_body else exc.field
        message = str(exc).removeprefix("patient.") if patient_body else str(exc)
        raise HTTPProblem(422, message, field=field) from None
    except NotFound as exc:
        raise HTTPProblem(404, exc.message, field=exc.field) from None
    except Conflict as exc:
        raise HTTPProblem(409, exc.message, field=exc.field) from None


# --- worklist items ------------------------------------------------------------------------------


@router.post(
    "/worklist-items", status_code=201, response_model=ItemOut, responses={409: {}, 422: {}}
)
def create_item(body: ItemIn, request: Request, response: Response) -> dict:
    """Schedule a step. The Study Instance UID is generated here, once."""
    ctx = web_context(request)
    data = item_values(body)
    data["accession_number"] = body.accession_number
    with _answers():
        result = schedule.create_item(
            ctx.db,
            web_actor(request),
            body.patient.model_dump(exclude_unset=True),
            data,
            ctx.config.uid_prefix,
        )
    response.headers["Location"] = f"/api/worklist-items/{result['id']}"
    return result


@router.get("/worklist-items", response_model=ItemPage)
def list_items(
    request: Request,
    date: str | None = Query(None, description="YYYYMMDD or a range a-b"),
    modality: str | None = None,
    station: str | None = Query(None, description="Scheduled Station AE Title"),
    status: Literal[STEP_STATUSES] | None = None,  # type: ignore[valid-type]
    accession: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = Query(None, description="wildcards * and ?"),
    offset: Offset = 0,
    limit: int = Query(50, ge=1, le=MAX_PAGE),
) -> dict:
    """Items of every status unless ``status`` is given; matching as C-FIND."""
    with _answers():
        page = schedule.search_items(
            web_context(request).db,
            date=date,
            modality=modality,
            station=station,
            status=status,
            accession=accession,
            patient_id=patient_id,
            patient_name=patient_name,
            offset=offset,
            limit=limit,
        )
    return {"total": page.total, "offset": offset, "limit": limit, "items": page.rows}


@router.get("/worklist-items/{item_id}", response_model=ItemOut, responses={404: {}})
def read_item(item_id: ItemId, request: Request) -> dict:
    with _answers():
        return schedule.get_item(web_context(request).db, item_id)


@router.patch(
    "/worklist-items/{item_id}", response_model=ItemOut, responses={404: {}, 409: {}, 422: {}}
)
def update_item(item_id: ItemId, body: ItemPatch, request: Request) -> dict:
    """Change an item; its Study Instance UID never changes."""
    with _answers():
        return schedule.update_item(
            web_context(request).db, web_actor(request), item_id, item_values(body), body.patient_pk
        )


@router.delete(
    "/worklist-items/{item_id}", response_model=ItemOut | None, responses={404: {}, 409: {}}
)
def cancel_item(
    item_id: ItemId,
    request: Request,
    purge: bool = Query(False, description="delete instead of DISCONTINUED"),
) -> Any:
    """Cancel: the item becomes DISCONTINUED (leaves the default worklist).

    With ``purge=true`` it is deleted, unless an MPPS refers to it (409).
    """
    ctx, actor = web_context(request), web_actor(request)
    with _answers():
        if purge:
            schedule.purge_item(ctx.db, actor, item_id)
            return Response(status_code=204)
        item = schedule.cancel_item(ctx.db, actor, item_id, targets=ctx.targets)
        ctx.notify()  # an item from an HL7 order: its placer hears of the cancel
        return item


# --- patients ------------------------------------------------------------------------------------


@router.post("/patients", status_code=201, response_model=PatientOut, responses={409: {}, 422: {}})
def create_patient(body: PatientIn, request: Request, response: Response) -> dict:
    with _answers(patient_body=True):
        result = schedule.create_patient(
            web_context(request).db, web_actor(request), body.model_dump(exclude_unset=True)
        )
    response.headers["Location"] = f"/api/patients/{result['id']}"
    return result


@router.get("/patients", response_model=PatientPage)
def list_patients(
    request: Request,
    patient_id: str | None = None,
    patient_name: str | None = Query(None, description="wildcards * and ?"),
    offset: Offset = 0,
    limit: int = Query(50, ge=1, le=MAX_PAGE),
) -> dict:
    with _answers():
        page = schedule.search_patients(
            web_context(request).db,
            patient_id=patient_id,
            patient_name=patient_name,
            offset=offset,
            limit=limit,
        )
    return {"total": page.total, "offset": offset, "limit": limit, "patients": page.rows}


@router.get("/patients/{patient_pk}", response_model=PatientOut, responses={404: {}})
def read_patient(patient_pk: PatientPk, request: Request) -> dict:
    with _answers():
        return schedule.get_patient(web_context(request).db, patient_pk)


@router.patch(
    "/patients/{patient_pk}", response_model=PatientOut, responses={404: {}, 409: {}, 422: {}}
)
def update_patient(patient_pk: PatientPk, body: PatientFields, request: Request) -> dict:
    with _answers(patient_body=True):
        return schedule.update_patient(
            web_context(request).db,
            web_actor(request),
            patient_pk,
            body.model_dump(exclude_unset=True),
        )


@router.delete("/patients/{patient_pk}", status_code=204, responses={404: {}, 409: {}})
def delete_patient(patient_pk: PatientPk, request: Request) -> Response:
    with _answers():
        schedule.delete_patient(web_context(request).db, web_actor(request), patient_pk)
    return Response(status_code=204)
