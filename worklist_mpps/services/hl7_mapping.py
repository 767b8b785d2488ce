"""Where an HL7 order's values go in the worklist (IHE RAD TF-2 Table 4.4-x "HL7 order
mapping to DICOM MWL" of RAD-4/RAD-13, as the Department System Scheduler applies it).

:data:`MAPPING` is the one table: the README's "HL7 order feed" table is generated from it
(``readme_table``) and a test checks the two agree. Each field is read from its locations
in order, the first non-empty wins; ``hl7_field_map`` replaces a field's locations per site,
``hl7_procedure_modalities`` gives the modality of a procedure code when no location has it.
Locations are read in the scope of one Scheduled Procedure Step: the message's PID/PV1,
the order's ORC/TQ1/OBR/ZDS and, in OMI^O23, the step's own IPC segment.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worklist_mpps import timezone
from worklist_mpps.services.hl7_parse import HL7Error, Inbound, Location, Segment


@dataclass(frozen=True)
class Field:
    """One worklist field: where HL7 has it, how it is read, where it goes."""

    name: str  # config.HL7_MAPPED_FIELDS / hl7_field_map key
    locations: tuple[str, ...]  # default, first non-empty wins
    kind: str  # text | uid | xpn | xcn | date | sex | dtm | code | priority | pl
    dicom: str  # attribute (tag)
    column: str  # where it is stored
    max_len: int = 64


MAPPING: tuple[Field, ...] = (
    Field("patient_id", ("PID-3.1",), "text", "Patient ID (0010,0020)", "patients.patient_id"),
    Field(
        "issuer_of_patient_id",
        ("PID-3.4.1",),
        "text",
        "Issuer of Patient ID (0010,0021)",
        "patients.issuer_of_patient_id",
    ),
    Field("patient_name", ("PID-5",), "xpn", "Patient's Name (0010,0010)", "patients.patient_name"),
    Field(
        "birth_date",
        ("PID-7.1",),
        "date",
        "Patient's Birth Date (0010,0030)",
        "patients.birth_date",
    ),
    Field("sex", ("PID-8",), "sex", "Patient's Sex (0010,0040)", "patients.sex"),
    Field(
        "placer_order_number",
        ("ORC-2.1", "OBR-2.1"),
        "text",
        "Placer Order Number / Imaging Service Request (0040,2016)",
        "placer_order_number",
    ),
    Field(
        "filler_order_number",
        ("ORC-3.1", "OBR-3.1"),
        "text",
        "Filler Order Number / Imaging Service Request (0040,2017)",
        "filler_order_number",
    ),
    Field(
        "accession_number",
        ("IPC-1.1", "OBR-18.1"),
        "text",
        "Accession Number (0008,0050)",
        "accession_number",
        16,
    ),
    Field(
        "requested_procedure_id",
        ("IPC-2.1", "OBR-19.1"),
        "text",
        "Requested Procedure ID (0040,1001)",
        "requested_procedure_id",
        16,
    ),
    Field(
        "sps_id",
        ("IPC-4.1", "OBR-20.1"),
        "text",
        "Scheduled Procedure Step ID (0040,0009)",
        "sps_id",
        16,
    ),
    Field("modality", ("IPC-5.1", "OBR-24.1"), "text", "Modality (0008,0060)", "modality", 16),
    Field(
        "scheduled_station_ae_title",
        ("IPC-9.1",),
        "text",
        "Scheduled Station AE Title (0040,0001)",
        "scheduled_station_ae_title",
        16,
    ),
    Field(
        "sps_start",
        ("TQ1-7.1", "ORC-7.4.1", "OBR-27.4.1"),
        "dtm",
        "SPS Start Date (0040,0002) and Time (0040,0003)",
        "sps_start_date, sps_start_time",
    ),
    Field(
        "requested_procedure_code",
        ("OBR-44", "OBR-4"),
        "code",
        "Requested Procedure Code Sequence (0032,1064)",
        "requested_procedure_codes",
    ),
    Field(
        "requested_procedure_description",
        ("OBR-44.2", "OBR-4.2"),
        "text",
        "Requested Procedure Description (0032,1060)",
        "requested_procedure_description",
    ),
    Field(
        "requesting_physician",
        ("OBR-16", "ORC-12"),
        "xcn",
        "Requesting Physician (0032,1032)",
        "requesting_physician",
        324,
    ),
    Field(
        "referring_physician_name",
        ("PV1-8",),
        "xcn",
        "Referring Physician's Name (0008,0090)",
        "referring_physician_name",
        324,
    ),
    Field(
        "study_instance_uid",
        ("IPC-3.1", "ZDS-1.1"),
        "uid",
        "Study Instance UID (0020,000D)",
        "study_instance_uid",
    ),
    Field(
        "requested_procedure_priority",
        ("TQ1-9.1", "ORC-7.6", "OBR-27.6"),
        "priority",
        "Requested Procedure Priority (0040,1003)",
        "requested_procedure_priority",
    ),
    Field("admission_id", ("PV1-19.1",), "text", "Admission ID (0038,0010)", "admission_id"),
    Field(
        "current_patient_location",
        ("PV1-3",),
        "pl",
        "Current Patient Location (0038,0300)",
        "current_patient_location",
    ),
    Field(
        "sps_description",
        ("IPC-6.2", "OBR-44.2", "OBR-4.2"),
        "text",
        "Scheduled Procedure Step Description (0040,0007)",
        "sps_description",
    ),
)
BY_NAME = {f.name: f for f in MAPPING}
PATIENT_KEYS = ("patient_id", "issuer_of_patient_id", "patient_name", "birth_date", "sex")
# HL7 Table 0001 administrative sex -> DICOM (0010,0040)
SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O"}
# TQ1-9 / TQ-6 priority (HL7 Table 0485) -> Requested Procedure Priority (0040,1003)
PRIORITY = {"S": "STAT", "A": "HIGH", "P": "HIGH", "T": "HIGH", "R": "ROUTINE", "C": "ROUTINE"}
_UID = re.compile(r"(?=.{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
LOCAL_SCHEME = "99LOCAL"  # a code without CE.3: a local scheme (PS3.16 8.2: "99" prefix)

_KIND_TEXT = {
    "text": "",
    "uid": "a UID (PS3.5 9.1: digits and dots, at most 64)",
    "xpn": "XPN family^given^middle^suffix^prefix -> PN family^given^middle^prefix^suffix",
    "xcn": "XCN id^family^given^middle^suffix^prefix -> PN",
    "date": "first 8 characters, a valid date",
    "sex": "M, F, O (A, N -> O; U -> empty)",
    "dtm": "DTM YYYYMMDD[HHMM[SS]] -> date and time",
    "code": "CE code^text^scheme -> {value, meaning, scheme}; no scheme: 99LOCAL",
    "priority": "S -> STAT; A, P, T -> HIGH; R, C -> ROUTINE",
    "pl": "PL point of care, room, bed joined by spaces",
}


def readme_table() -> str:
    """The README's mapping table (markdown), generated from :data:`MAPPING`."""
    rows = [
        "| HL7 location (first non-empty wins) | DICOM attribute (tag) | Column | Read as |",
        "|---|---|---|---|",
    ]
    for f in MAPPING:
        how = _KIND_TEXT[f.kind] or "text"
        rows.append(f"| {', '.join(f.locations)} | {f.dicom} | `{f.column}` | {how} |")
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class Scope:
    """The segments one Scheduled Procedure Step reads: the last one of each name wins."""

    segments: Mapping[str, Segment]

    def get(self, name: str) -> Segment | None:
        return self.segments.get(name)


def _parse_location(text: str) -> tuple[str, int, int, int]:
    seg, rest = text.strip().split("-", 1)
    nums = [int(n) for n in rest.split(".")]
    return seg, nums[0], (nums[1] if len(nums) > 1 else 0), (nums[2] if len(nums) > 2 else 0)


def locations(name: str, overrides: Mapping[str, str]) -> tuple[str, ...]:
    if name in overrides:
        return tuple(loc.strip() for loc in overrides[name].split(",") if loc.strip())
    return BY_NAME[name].locations


def _read(msg: Inbound, scope: Scope, field: Field, loc: str) -> tuple[Any, Location] | None:
    """The value of ``field`` at ``loc`` (None when empty), converted by the field's kind."""
    seg_name, fno, comp, sub = _parse_location(loc)
    seg = scope.get(seg_name)
    if seg is None:
        return None
    where = Location(seg_name, seg.sequence, fno, comp)
    kind = field.kind
    if kind in ("xpn", "xcn", "code", "pl") and not comp:
        parts = msg.components(seg, fno)
        value = _composite(kind, parts, field, where)
    else:
        value = msg.value(seg, fno, comp or 1, sub or 1) or None
        if value is not None:
            value = _simple(kind, value, field, where)
    return (value, where) if value not in (None, "", []) else None


def _pn(parts: list[str]) -> str | None:
    family, given, middle, suffix, prefix = (parts + [""] * 5)[:5]
    pn = "^".join([family, given, middle, prefix, suffix]).rstrip("^")
    return pn or None


def _composite(kind: str, parts: list[str], field: Field, where: Location) -> Any:
    if kind == "xpn":
        return _pn(parts)
    if kind == "xcn":
        return _pn(parts[1:6])
    if kind == "pl":
        return " ".join(p for p in parts[:3] if p) or None
    # code: CE identifier^text^coding system
    value, text, scheme = (parts + [""] * 3)[:3]
    if not value:
        return None
    code = {"value": value, "scheme": scheme or LOCAL_SCHEME, "meaning": text or value}
    for key, limit in (("value", 16), ("scheme", 16), ("meaning", 64)):
        if len(code[key]) > limit:
            raise HL7Error("AE", 102, f"{field.name}: code {key} over {limit} characters", where)
    return [code]


def _simple(kind: str, value: str, field: Field, where: Location) -> Any:
    if kind == "date":
        return _date(value[:8], field, where)
    if kind == "sex":
        return SEX.get(value.upper())
    if kind == "priority":
        return PRIORITY.get(value.upper())
    if kind == "dtm":
        return _dtm(value, field, where)
    if kind in ("xpn", "xcn"):  # a single component asked for: a name part
        return value
    if kind == "uid" and not _UID.fullmatch(value):
        raise HL7Error("AE", 102, f"{field.name}: {value[:70]!r} is not a UID", where)
    if kind == "code":  # a code value alone (an override such as OBR-4.1)
        return _composite("code", [value], field, where)
    if len(value) > field.max_len:
        raise HL7Error(
            "AE",
            102,
            f"{field.name}: {value[:20]!r}... is over {field.max_len} characters",
            where,
        )
    return value


def _date(value: str, field: Field, where: Location) -> str:
    try:
        if len(value) != 8 or not value.isdigit():
            raise ValueError
        dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        raise HL7Error(
            "AE", 102, f"{field.name}: {value!r} is not a date (YYYYMMDD)", where
        ) from None
    return value


def _dtm(value: str, field: Field, where: Location) -> tuple[str, str | None, str | None]:
    """HL7 DTM YYYYMMDD[HH[MM[SS[.S]]]][+/-ZZZZ] -> (DA, TM, offset). A time with an
    offset is stored in the server's offset (schedule_values; PS3.3 C.12.1.1.8); without
    one, or on a date alone, it is the server's local time."""
    zone = re.search(r"[+-][0-9]{4}$", value)
    offset = zone.group() if zone else None
    if offset is not None:
        try:
            timezone.parse_offset(offset)
        except timezone.OffsetError as exc:
            raise HL7Error("AE", 102, f"{field.name}: {exc}", where) from None
    body = value.split("+")[0].split("-")[0].split(".")[0]
    try:
        if len(body) < 8 or len(body) > 14 or len(body) % 2 or not body.isdigit():
            raise ValueError
        hh, mm, ss = int(body[8:10] or 0), int(body[10:12] or 0), int(body[12:14] or 0)
        dt.datetime(int(body[:4]), int(body[4:6]), int(body[6:8]), hh, mm, ss)
    except ValueError:
        raise HL7Error(
            "AE", 102, f"{field.name}: {value!r} is not a date/time (YYYYMMDD[HHMM[SS]])", where
        ) from None
    time = (body[8:14] + "0000")[:6] if len(body) > 8 else None
    return body[:8], time, offset if time else None


def extract(
    msg: Inbound,
    scope: Scope,
    overrides: Mapping[str, str],
    modalities: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, Location]]:
    """Every mapped field found in this scope, in worklist form, and where each was found."""
    values: dict[str, Any] = {}
    found: dict[str, Location] = {}
    for field in MAPPING:
        for loc in locations(field.name, overrides):
            got = _read(msg, scope, field, loc)
            if got is not None:
                values[field.name], found[field.name] = got
                break
    if "modality" not in values and values.get("requested_procedure_code"):
        code = values["requested_procedure_code"][0]["value"]
        if code in modalities:
            values["modality"] = modalities[code]
            found["modality"] = found["requested_procedure_code"]
    return values, found


def item_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The worklist item columns of extracted values (patient fields left out)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in PATIENT_KEYS:
            continue
        if name == "sps_start":
            out["sps_start_date"], out["sps_start_time"], offset = value
            if offset:
                out["timezone_offset"] = offset
        elif name == "requested_procedure_code":
            out["requested_procedure_codes"] = value
        else:
            out[name] = value
    return out


def patient_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in PATIENT_KEYS if k in values}
