"""The operator page's item views (issue 15 items 3 and 4): an item's page with its MPPS,
HL7 messages, audit trail and deliveries, and the actions on it (schedule, edit,
reschedule, cancel, status by hand), each a form post with the session's CSRF token.

Thin routes: the shapes are the API's pydantic models (web/schemas.py) and every rule is
in services/schedule.py, so the form accepts and refuses exactly what the API does. A
refused form is shown again with what was typed and the message next to its field (422,
409 for a duplicate); a done action redirects (303) to the item's page.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from worklist_mpps.services import item_view, schedule
from worklist_mpps.services.schedule import STATUS_MOVES, Conflict, ItemError, NotFound
from worklist_mpps.services.schedule_values import CODE_FIELDS, ITEM_FIELDS
from worklist_mpps.web.context import web_actor, web_context
from worklist_mpps.web.errors import HTTPProblem
from worklist_mpps.web.schemas import MAX_ID, ItemIn, ItemPatch, item_values
from worklist_mpps.web.ui import render

router = APIRouter(include_in_schema=False)
ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]

PATIENT_INPUTS = ("patient_id", "issuer_of_patient_id", "patient_name", "birth_date", "sex")
# the item's own fields on the form: all but the UID (assigned once), the status (its own
# actions) and the code sequences (CODE_INPUTS)
ITEM_INPUTS = tuple(
    f for f in ITEM_FIELDS if f not in ("study_instance_uid", "sps_status", *CODE_FIELDS)
)
# one code each on the form: prefix of its inputs -> the item field
CODE_INPUTS = {"rp_code": "requested_procedure_codes", "sp_code": "scheduled_protocol_codes"}
RESCHEDULE_INPUTS = ("sps_start_date", "sps_start_time", "scheduled_station_ae_title")
# the form's labels (the error summary names the fields by them)
LABELS = {
    "patient_id": "Patient ID",
    "issuer_of_patient_id": "Issuer of Patient ID",
    "patient_name": "Patient name",
    "birth_date": "Birth date",
    "sex": "Sex",
    "accession_number": "Accession number",
    "placer_order_number": "Placer order number",
    "filler_order_number": "Filler order number",
    "requested_procedure_id": "Requested procedure ID",
    "requested_procedure_description": "Requested procedure",
    "requested_procedure_priority": "Priority",
    "rp_code_value": "Procedure code",
    "rp_code_scheme": "Coding scheme",
    "rp_code_meaning": "Code meaning",
    "referring_physician_name": "Referring physician",
    "requesting_physician": "Requesting physician",
    "admission_id": "Admission ID",
    "current_patient_location": "Patient location",
    "modality": "Modality",
    "scheduled_station_ae_title": "Station AE title",
    "scheduled_station_name": "Station name",
    "sps_location": "Location",
    "sps_start_date": "Start date",
    "sps_start_time": "Start time",
    "sps_id": "Step ID (SPS ID)",
    "sps_description": "Step description",
    "scheduled_performing_physician_name": "Performing physician",
    "sp_code_value": "Protocol code",
    "sp_code_scheme": "Protocol coding scheme",
    "sp_code_meaning": "Protocol code meaning",
    "pre_medication": "Pre-medication",
    "requested_contrast_agent": "Contrast agent",
}
DONE = {
    "created": "Item scheduled.",
    "updated": "Item saved.",
    "rescheduled": "Item rescheduled.",
    "cancelled": "Item cancelled (DISCONTINUED): it left the default worklist.",
    "status": "Status changed.",
}
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
MAX_REASON = 250  # the item's status_reason column


def _date(value: str) -> str:
    """The form's YYYY-MM-DD as DICOM's YYYYMMDD; anything else as typed, for the
    one date validator (matching.normalize_date) to judge."""
    m = _ISO_DATE.fullmatch(value.strip())
    return "".join(m.groups()) if m else value


def _body(
    fields: dict[str, str], names: tuple[str, ...], blank: Any, codes: bool = False
) -> dict[str, Any]:
    """Form inputs as an API body; an empty input is ``blank`` (left out: ``...``); with
    ``codes``, the code inputs the form has as one-code lists."""
    body: dict[str, Any] = {}
    for name in names:
        if name not in fields:
            continue
        value = fields[name].strip()
        if name in ("sps_start_date", "birth_date"):
            value = _date(value)
        if value or blank is not ...:
            body[name] = value or blank
    for prefix, field in CODE_INPUTS.items():
        parts = {p: fields.get(f"{prefix}_{p}", "").strip() for p in ("value", "scheme", "meaning")}
        if not codes or f"{prefix}_value" not in fields:
            continue
        if any(parts.values()):
            body[field] = [{k: v for k, v in parts.items() if v or k != "meaning"}]
        elif blank is not ...:
            body[field] = None
    return body


def _input_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """The form input of a pydantic error location or a service error's field."""
    parts = [str(p) for p in loc if p != "patient"]
    name = parts[0] if parts else "patient_id"
    for prefix, field in CODE_INPUTS.items():
        if name == field:
            return f"{prefix}_{parts[2] if len(parts) > 2 else 'value'}"
    return name


def _errors(exc: Exception) -> dict[str, str]:
    """Messages by form input."""
    if isinstance(exc, ValidationError):
        errors: dict[str, str] = {}
        for e in exc.errors():
            message = "is required" if e["type"] == "missing" else e["msg"]
            errors.setdefault(_input_name(e["loc"]), message)
        return errors
    if isinstance(exc, ItemError):
        field = exc.field
        return {_input_name(field.split(".")): str(exc).removeprefix(f"{field}: ")}
    if isinstance(exc, Conflict):
        return {_input_name([exc.field or "accession_number"]): exc.message}
    raise exc


def _status(exc: Exception) -> int:
    return 409 if isinstance(exc, Conflict) else 422


def _form_values(item: dict[str, Any]) -> dict[str, str]:
    """An item as the form shows it (ISO dates, HH:MM times, one code each)."""
    values = {k: "" if item.get(k) is None else str(item[k]) for k in ITEM_INPUTS}
    values["sps_start_date"] = render.dicom_date(item.get("sps_start_date"))
    values["sps_start_time"] = render.dicom_time(item.get("sps_start_time"))
    for prefix, field in CODE_INPUTS.items():
        code = (item.get(field) or [{}])[0]
        for part in ("value", "scheme", "meaning"):
            values[f"{prefix}_{part}"] = code.get(part) or ""
    return values


def _codes_editable(item: dict[str, Any]) -> dict[str, bool]:
    """A list of several codes (from an HL7 order) is not on the one-code form."""
    return {prefix: len(item.get(field) or []) <= 1 for prefix, field in CODE_INPUTS.items()}


def _form(
    request: Request,
    values: dict[str, str],
    errors: dict[str, str] | None = None,
    status: int = 200,
    item: dict[str, Any] | None = None,
) -> HTMLResponse:
    return render.page(
        request,
        "item_form.html",
        status,
        item=item,
        values=values,
        errors=errors or {},
        labels=LABELS,
        codes=_codes_editable(item) if item else dict.fromkeys(CODE_INPUTS, True),
        action=f"/ui/items/{item['id']}/edit" if item else "/ui/items",
    )


async def _load(request: Request, item_id: int) -> dict[str, Any]:
    try:
        return await run_in_threadpool(item_view.item_page, web_context(request).db, item_id)
    except NotFound as exc:
        raise HTTPProblem(404, exc.message) from None


async def _item_page(
    request: Request,
    item_id: int,
    status: int = 200,
    errors: dict[str, str] | None = None,
    typed: dict[str, str] | None = None,
) -> HTMLResponse:
    item = await _load(request, item_id)
    done = request.query_params.get("done")
    resched = {k: v for k, v in _form_values(item).items() if k in RESCHEDULE_INPUTS}
    return render.page(
        request,
        "item.html",
        status,
        item=item,
        moves=STATUS_MOVES.get(item["sps_status"], ()),
        errors=errors or {},
        typed={**resched, **(typed or {})},
        notice=DONE.get(done or ""),
    )


def _done(item_id: int, what: str) -> Response:
    return render.redirect(f"/ui/items/{item_id}?done={what}")


# --- schedule a new item -------------------------------------------------------------------


@router.get("/ui/items/new")
def new_item(request: Request) -> HTMLResponse:
    return _form(request, {"sps_start_date": date.today().isoformat()})


@router.post("/ui/items")
async def create_item(request: Request) -> Response:
    fields = await render.form(request)
    ctx = web_context(request)
    try:
        body = _body(fields, ITEM_INPUTS, ..., codes=True)
        body["patient"] = _body(fields, PATIENT_INPUTS, ...)
        model = ItemIn.model_validate(body)
        data = item_values(model)
        data["accession_number"] = model.accession_number
        patient = model.patient.model_dump(exclude_unset=True)
        result = await run_in_threadpool(
            schedule.create_item, ctx.db, web_actor(request), patient, data, ctx.config.uid_prefix
        )
    except (ValidationError, ItemError, Conflict) as exc:
        request.state.reason = "; ".join(f"{k}: {v}" for k, v in _errors(exc).items())[:200]
        return _form(request, fields, _errors(exc), _status(exc))
    return _done(result["id"], "created")


# --- an item's page and its actions ------------------------------------------------------


@router.get("/ui/items/{item_id}")
async def item_page(item_id: ItemId, request: Request) -> HTMLResponse:
    return await _item_page(request, item_id)


@router.get("/ui/items/{item_id}/edit")
async def edit_form(item_id: ItemId, request: Request) -> HTMLResponse:
    item = await _load(request, item_id)
    return _form(request, _form_values(item), item=item)


async def _patch(
    request: Request, item_id: int, fields: dict[str, str], names: tuple[str, ...]
) -> dict[str, Any]:
    """update_item with the form's inputs among ``names`` (an emptied input clears)."""
    model = ItemPatch.model_validate(_body(fields, names, None, codes=names == ITEM_INPUTS))
    return await run_in_threadpool(
        schedule.update_item,
        web_context(request).db,
        web_actor(request),
        item_id,
        item_values(model),
    )


@router.post("/ui/items/{item_id}/edit")
async def edit_item(item_id: ItemId, request: Request) -> Response:
    fields = await render.form(request)
    try:
        await _patch(request, item_id, fields, ITEM_INPUTS)
    except NotFound as exc:
        raise HTTPProblem(404, exc.message) from None
    except (ValidationError, ItemError, Conflict) as exc:
        item = await _load(request, item_id)
        return _form(request, fields, _errors(exc), _status(exc), item=item)
    return _done(item_id, "updated")


@router.post("/ui/items/{item_id}/reschedule")
async def reschedule_item(item_id: ItemId, request: Request) -> Response:
    """New start date, time and station (update_item)."""
    fields = await render.form(request)
    try:
        await _patch(request, item_id, fields, RESCHEDULE_INPUTS)
    except NotFound as exc:
        raise HTTPProblem(404, exc.message) from None
    except (ValidationError, ItemError, Conflict) as exc:
        errors = {f"rs_{k}": v for k, v in _errors(exc).items()}
        typed = {k: fields.get(k, "") for k in RESCHEDULE_INPUTS}
        return await _item_page(request, item_id, _status(exc), errors, typed)
    return _done(item_id, "rescheduled")


@router.post("/ui/items/{item_id}/cancel")
async def cancel_item(item_id: ItemId, request: Request) -> Response:
    """DISCONTINUED with the reason (required here); a final step is not cancelled."""
    fields = await render.form(request)
    reason = " ".join(fields.get("reason", "").split())
    db = web_context(request).db
    item = await _load(request, item_id)
    error = (
        "a reason is required"
        if not reason
        else f"at most {MAX_REASON} characters"
        if len(reason) > MAX_REASON
        else f"a {item['sps_status']} step cannot be cancelled"
        if item["sps_status"] in ("COMPLETED", "DISCONTINUED")
        else None
    )
    if error:
        request.state.reason = error
        typed = {"cancel_reason": fields.get("reason", "")}
        return await _item_page(request, item_id, 422, {"cancel_reason": error}, typed)
    ctx = web_context(request)
    await run_in_threadpool(
        schedule.cancel_item, db, web_actor(request), item_id, reason, ctx.targets
    )
    ctx.notify()  # the order placer hears of it (an HL7 status row), as with set_status
    return _done(item_id, "cancelled")


@router.post("/ui/items/{item_id}/status")
async def set_status(item_id: ItemId, request: Request) -> Response:
    """A status by hand, with a reason (schedule.set_status: its moves, its HL7 status)."""
    fields = await render.form(request)
    ctx = web_context(request)
    try:
        await run_in_threadpool(
            schedule.set_status,
            ctx.db,
            web_actor(request),
            item_id,
            fields.get("status", ""),
            fields.get("reason", ""),
            ctx.targets,
        )
    except NotFound as exc:
        raise HTTPProblem(404, exc.message) from None
    except ItemError as exc:
        errors = {f"st_{k}": v for k, v in _errors(exc).items()}
        request.state.reason = str(exc)[:200]
        typed = {"st_status": fields.get("status", ""), "st_reason": fields.get("reason", "")}
        return await _item_page(request, item_id, 422, errors, typed)
    ctx.notify()  # an HL7 status row may be waiting for the outbox worker
    return _done(item_id, "status")
