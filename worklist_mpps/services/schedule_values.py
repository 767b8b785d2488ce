"""Values and rows of worklist items and patients: normalisation and row-level building blocks.

Every writer (the operations in schedule.py, the YAML loader) goes through here, so the
folded name columns, the combined start column and the Study Instance UID are always set
the same way. The Study Instance UID is generated once, when the item is created, and
never changes afterwards. The functions here work inside a transaction the caller holds
and write no audit record; schedule.py opens the transactions and audits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from worklist_mpps import timezone
from worklist_mpps.db.models import STEP_STATUSES, Patient, WorklistItem
from worklist_mpps.services.dicom import new_study_uid
from worklist_mpps.services.matching import MatchError, fold_pn, normalize_date, normalize_time

PATIENT_FIELDS = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "birth_date",
    "sex",
    "weight",
    "medical_alerts",
    "allergies",
    "pregnancy_status",
)
ITEM_FIELDS = (
    "accession_number",
    "referring_physician_name",
    "requesting_physician",
    "requested_procedure_id",
    "requested_procedure_description",
    "requested_procedure_priority",
    "requested_procedure_codes",
    "study_instance_uid",
    "admission_id",
    "current_patient_location",
    "sps_id",
    "sps_description",
    "sps_status",
    "modality",
    "scheduled_station_ae_title",
    "scheduled_station_name",
    "sps_location",
    "sps_start_date",
    "sps_start_time",
    "scheduled_performing_physician_name",
    "scheduled_protocol_codes",
    "pre_medication",
    "requested_contrast_agent",
    "placer_order_number",
    "filler_order_number",
)
# Person Name columns and their folded twins (matching.fold_pn).
FOLDED = {
    "patient_name": "patient_name_folded",
    "referring_physician_name": "referring_physician_name_folded",
    "requesting_physician": "requesting_physician_folded",
    "scheduled_performing_physician_name": "scheduled_performing_physician_name_folded",
}
CODE_FIELDS = ("requested_procedure_codes", "scheduled_protocol_codes")
_CODE_ALIASES = {
    "value": "CodeValue",
    "scheme": "CodingSchemeDesignator",
    "version": "CodingSchemeVersion",
    "meaning": "CodeMeaning",
}
PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")


class ItemError(ValueError):
    """Invalid item data; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


_NOT_IN_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _text(field: str, value: Any) -> Any:
    """Every field is one value of a short string VR (AE, CS, DA, LO, PN, SH, TM): no
    control characters (PS3.5 6.2, Table 6.2-1) and no backslash, which separates
    values (PS3.5 6.4)."""
    if isinstance(value, str) and (bad := _NOT_IN_TEXT.search(value)):
        what = "a backslash" if bad.group() == "\\" else f"control character {bad.group()!r}"
        raise ItemError(field, f"{what} is not allowed in a single DICOM value (PS3.5 6.2, 6.4)")
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _codes(field: str, value: Any) -> list[dict[str, str]] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise ItemError(field, "must be a list of codes {value, scheme, meaning}")
    codes = []
    for code in value:
        if not isinstance(code, Mapping):
            raise ItemError(field, "each code must be a mapping {value, scheme, meaning}")
        item: dict[str, str] = {}
        for k, v in code.items():
            name = _CODE_ALIASES.get(k) or k  # an alias, or the keyword itself
            if name not in _CODE_ALIASES.values():
                raise ItemError(field, f"unknown code field {k!r}")
            text = None if v is None else _clean(_text(field, str(v)))
            if text is not None:  # stored without padding (PS3.5 Table 6.2-1)
                item[name] = text
        if "CodeValue" not in item or "CodingSchemeDesignator" not in item:
            raise ItemError(field, "a code needs a value and a scheme")
        codes.append(item)
    return codes


def normalize_patient(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in PATIENT_FIELDS:
            raise ItemError(f"patient.{key}", "unknown field")
        out[key] = _clean(_text(f"patient.{key}", value))
    if "birth_date" in out and out["birth_date"] is not None:
        out["birth_date"] = _date("patient.birth_date", str(out["birth_date"]))
    if "pregnancy_status" in out and out["pregnancy_status"] is not None:
        try:
            out["pregnancy_status"] = int(out["pregnancy_status"])
        except ValueError:
            raise ItemError("patient.pregnancy_status", "must be 1, 2, 3 or 4") from None
    for key in ("patient_id", "patient_name", "sex", "weight"):
        if key in out and out[key] is not None:
            out[key] = str(out[key])
    return out


def _date(field: str, value: str) -> str:
    try:
        return normalize_date(field, value)
    except MatchError as exc:
        raise ItemError(field, str(exc).split(": ", 1)[1]) from None


def _in_server_offset(data: Mapping[str, Any], out: dict[str, Any]) -> None:
    """A start given with an explicit ``timezone_offset`` (the API field, an HL7 TS with
    +/-ZZZZ) is stored in the server's offset: every stored date and time of the worklist
    is local time of one zone, so a query without Timezone Offset From UTC (0008,0201)
    matches them as they are (PS3.4 C.2.2.2.1.3, C.2.2.2.5.2; README "Time zones")."""
    offset = _clean(data.get("timezone_offset"))
    if offset is None:
        return
    try:
        timezone.parse_offset(str(offset))
    except timezone.OffsetError as exc:
        raise ItemError("timezone_offset", str(exc)) from None
    if out.get("sps_start_date") is None or out.get("sps_start_time") is None:
        raise ItemError(
            "timezone_offset", "qualifies a start: give sps_start_date and sps_start_time with it"
        )
    local = timezone.convert(out["sps_start_date"] + out["sps_start_time"], str(offset))
    out["sps_start_date"], out["sps_start_time"] = local[:8], local[8:]


def normalize_item(data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate item fields; empty strings become None, dates and times DICOM form, a start
    with a ``timezone_offset`` converted to the server's offset."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "timezone_offset":
            continue  # a qualifier of the start, not a column (_in_server_offset)
        if key not in ITEM_FIELDS:
            raise ItemError(key, "unknown field")
        out[key] = _codes(key, value) if key in CODE_FIELDS else _clean(_text(key, value))
        if isinstance(out[key], (int, float)) and key not in CODE_FIELDS:
            out[key] = str(out[key])
    if out.get("sps_start_date") is not None:
        out["sps_start_date"] = _date("sps_start_date", str(out["sps_start_date"]))
    if out.get("sps_start_time") is not None:
        try:
            out["sps_start_time"] = normalize_time("sps_start_time", str(out["sps_start_time"]))
        except MatchError as exc:
            raise ItemError("sps_start_time", str(exc).split(": ", 1)[1]) from None
    _in_server_offset(data, out)
    if out.get("sps_status") is not None and out["sps_status"] not in STEP_STATUSES:
        raise ItemError("sps_status", f"must be one of {', '.join(STEP_STATUSES)}")
    priority = out.get("requested_procedure_priority")
    if priority is not None and priority not in PRIORITIES:
        raise ItemError("requested_procedure_priority", f"must be one of {', '.join(PRIORITIES)}")
    for key in (
        "accession_number",
        "requested_procedure_id",
        "sps_id",
        "sps_location",
        "scheduled_station_name",
    ):
        if out.get(key) is not None and len(out[key]) > 16:
            raise ItemError(key, "at most 16 characters (SH)")
    if (
        out.get("scheduled_station_ae_title") is not None
        and len(out["scheduled_station_ae_title"]) > 16
    ):
        raise ItemError("scheduled_station_ae_title", "at most 16 characters (AE)")
    return out


def apply_values(obj: Any, values: Mapping[str, Any]) -> None:
    """Set attributes, keeping the folded Person Name twins right."""
    for key, value in values.items():
        setattr(obj, key, value)
        if key in FOLDED:
            setattr(obj, FOLDED[key], fold_pn(value))


def _refresh_start(item: WorklistItem) -> None:
    """The combined start (server's local time) and its UTC copy, which a query carrying
    Timezone Offset From UTC (0008,0201) matches (PS3.4 C.2.2.2.5.4; README "Time zones");
    a step with a date and no time counts from midnight."""
    if item.sps_start_date:
        item.sps_start = item.sps_start_date + (item.sps_start_time or "000000")
        item.sps_start_utc = timezone.to_utc(item.sps_start)
    else:
        item.sps_start = None
        item.sps_start_utc = None


# lookups built once: building a statement costs more than running it (HL7 order feed)
_PATIENT_NO_ISSUER = select(Patient).where(
    Patient.patient_id == bindparam("pid"), Patient.issuer_of_patient_id.is_(None)
)
_PATIENT = select(Patient).where(
    Patient.patient_id == bindparam("pid"), Patient.issuer_of_patient_id == bindparam("issuer")
)


def _key_used(no_step: bool, exclude: bool) -> Select[int]:
    W = WorklistItem
    step = W.sps_id.is_(None) if no_step else W.sps_id == bindparam("sps_id")
    stmt = select(W.id).where(W.accession_number == bindparam("accession"), step)
    if exclude:
        stmt = stmt.where(W.id != bindparam("exclude"))
    return stmt.limit(1)


_KEY_USED = {(a, b): _key_used(a, b) for a in (False, True) for b in (False, True)}


def get_or_create_patient(session: Session, data: Mapping[str, Any]) -> Patient:
    """The patient with this Patient ID (and issuer), created or updated from ``data``."""
    values = normalize_patient(data)
    if not values.get("patient_id"):
        raise ItemError("patient.patient_id", "is required")
    issuer = values.get("issuer_of_patient_id")
    stmt = _PATIENT_NO_ISSUER if issuer is None else _PATIENT
    patient = session.scalars(stmt, {"pid": values["patient_id"], "issuer": issuer}).first()
    if patient is None:
        patient = Patient()
        session.add(patient)
    apply_values(patient, values)
    return patient


def duplicate_of(
    session: Session, accession: str | None, sps_id: str | None, exclude_id: int | None = None
) -> int | None:
    """The id of another item with this key (accession number + step ID), if any.

    Checked here rather than only by the unique constraint: SQL lets NULL step
    IDs repeat.
    """
    stmt = _KEY_USED[(sps_id is None, exclude_id is not None)]
    params = {"accession": accession, "sps_id": sps_id, "exclude": exclude_id}
    return session.scalar(stmt, params)


def create_item(
    session: Session,
    patient: Patient,
    data: Mapping[str, Any],
    uid_prefix: str = "",
    require_accession: bool = True,
) -> WorklistItem:
    """A new SCHEDULED step. The accession number is Type 2 in the worklist (PS3.4 Table
    K.6-1): the HL7 order feed may create a step without one (``require_accession``
    false) when the order names its procedure otherwise; the API and loader require it."""
    values = normalize_item(data)
    if require_accession and values.get("accession_number") is None:
        raise ItemError("accession_number", "is required")
    item = WorklistItem(patient=patient, sps_status="SCHEDULED")
    apply_values(item, values)
    if not item.study_instance_uid:
        item.study_instance_uid = new_study_uid(uid_prefix)
    _refresh_start(item)
    session.add(item)
    return item


REQUIRED_ON_UPDATE = ("accession_number", "sps_status")


def update_item(item: WorklistItem, data: Mapping[str, Any]) -> WorklistItem:
    """Change an item; the Study Instance UID stays as it was created."""
    values = normalize_item(data)
    values.pop("study_instance_uid", None)
    for key in REQUIRED_ON_UPDATE:
        if key in values and values[key] is None:
            raise ItemError(key, "cannot be empty")
    apply_values(item, values)
    if values.get("sps_status") not in (None, "DISCONTINUED"):
        item.status_reason = None  # a reason belongs to a discontinued step only
    _refresh_start(item)
    return item


def upsert_item(
    session: Session, patient_data: Mapping[str, Any], data: Mapping[str, Any], uid_prefix: str = ""
) -> tuple[WorklistItem, bool]:
    """Create or update the item keyed by accession number (+ step ID); (item, created)."""
    accession = _clean(data.get("accession_number"))
    if accession is None:
        raise ItemError("accession_number", "is required")
    patient = get_or_create_patient(session, patient_data)
    sps_id = _clean(data.get("sps_id"))
    item_id = duplicate_of(session, str(accession), None if sps_id is None else str(sps_id))
    item = session.get(WorklistItem, item_id) if item_id else None
    if item is None:
        return create_item(session, patient, data, uid_prefix), True
    item.patient = patient
    update_item(item, data)
    return item, False
