"""Request and response bodies of the worklist management API (web/api.py).

Shapes only (types, lengths, enumerations); the DICOM rules are checked by
services/schedule_values.py, the same code every writer uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worklist_mpps.services.schedule import CODE_FIELDS, STEP_STATUSES

MAX_ID = 2**63 - 1  # SQL BIGINT: larger numbers are no id at all (422, not a driver overflow)


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
    timezone_offset: str | None = Field(
        None,
        examples=["+0100"],
        description="in: the offset sps_start_date/time are given in (stored in the "
        "server's); out: the offset of the stored start (the server's)",
    )
    scheduled_performing_physician_name: str | None = Field(None, max_length=324)
    scheduled_protocol_codes: list[Code] | None = None
    pre_medication: str | None = Field(None, max_length=64)
    requested_contrast_agent: str | None = Field(None, max_length=64)
    placer_order_number: str | None = Field(None, max_length=64)
    filler_order_number: str | None = Field(None, max_length=64)


class ItemIn(ItemFields):
    accession_number: str = Field(min_length=1, max_length=16)
    patient: PatientIn


class ItemPatch(ItemFields):
    accession_number: str | None = Field(None, min_length=1, max_length=16)
    patient_pk: int | None = Field(
        None, ge=1, le=MAX_ID, description="move the item to another patient"
    )


class ItemOut(ItemFields):
    id: int
    accession_number: str | None
    study_instance_uid: str
    status_reason: str | None = None
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


def item_values(model: BaseModel) -> dict[str, Any]:
    """The item fields a request set, codes without unset (None) parts."""
    values = model.model_dump(exclude_unset=True, exclude={"patient", "patient_pk"})
    for name in CODE_FIELDS:
        if values.get(name) is not None:
            values[name] = [{k: v for k, v in c.items() if v is not None} for c in values[name]]
    return values
