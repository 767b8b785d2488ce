"""Modality Performed Procedure Step (PS3.4 Annex F) as plain functions.

``create`` (N-CREATE, F.7.2.1), ``update`` (N-SET, F.7.2.2) and ``get``
(N-GET, F.8) are called by the DIMSE handlers and by DICOMweb. Each runs in
one database transaction and returns only after it committed, so a success
seen by a modality survives a crash. A rule is broken by raising
:class:`MPPSError` with the status code of PS3.7 Annex C / PS3.4 F.7.2.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Iterable, Sequence

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pynetdicom.dsutils import decode as decode_bytes
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worklist_mpps.services import audit
from worklist_mpps.services import outbox
from worklist_mpps.services.audit import Actor
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import FINAL_STATUSES, MPPSTracking, WorklistItem
from worklist_mpps.services.schedule_values import new_study_uid
from worklist_mpps.services.matching import (
    MatchError,
    check_temporal,
    normalize_date,
    normalize_time,
    strip_padding,
)

log = logging.getLogger(__name__)

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

# Status codes (PS3.7 Annex C, PS3.4 F.7.2 and F.8)
SUCCESS = 0x0000
OPTIONAL_ATTRIBUTES_UNSUPPORTED = 0x0001  # N-GET warning
ATTRIBUTE_LIST_ERROR = 0x0107  # warning: some attributes were not modified (PS3.7 C.4.2)
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
MAY_NO_LONGER_BE_UPDATED = "Performed Procedure Step Object may no longer be updated"
ERROR_ID_NO_LONGER_UPDATED = 0xA710  # Table F.7.2-2

PPS_STATUSES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")

# Type 1 at N-CREATE (Table F.7.2-1).
CREATE_TYPE1 = (
    "ScheduledStepAttributesSequence", "PerformedProcedureStepID", "PerformedStationAETitle",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus", "Modality",
)
# N-SET "Not allowed": set once, at N-CREATE (Table F.7.2-1).
CREATE_ONLY = frozenset({
    "SOPClassUID", "SOPInstanceUID", "ScheduledStepAttributesSequence",
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientSex", "ReferencedPatientSequence",
    "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID",
    "ServiceEpisodeDescription", "IssuerOfServiceEpisodeIDSequence",
    "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedStationName",
    "PerformedLocation", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "Modality", "StudyID", "PerformedStationNameCodeSequence",
    "PerformedStationClassCodeSequence", "PerformedStationGeographicLocationCodeSequence",
    "PerformedProcessingApplicationsCodeSequence",
})
# May be set by N-SET (Table F.7.2-1, including the Radiation Dose and Billing modules).
SET_ALLOWED = frozenset({
    "PerformedProcedureStepStatus", "PerformedProcedureStepDescription",
    "PerformedProcedureTypeDescription", "ProcedureCodeSequence",
    "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "CommentsOnThePerformedProcedureStep",
    "PerformedProcedureStepDiscontinuationReasonCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "PerformedProtocolCodeSequence",
    "PerformedSeriesSequence", "AnatomicStructureSpaceOrRegionSequence",
    "TotalTimeOfFluoroscopy", "TotalNumberOfExposures", "EntranceDose", "EntranceDoseInmGy",
    "ExposedArea", "DistanceSourceToEntrance", "CommentsOnRadiationDose",
    "ExposureDoseSequence", "ImageAndFluoroscopyAreaDoseProduct", "OrganDose",
    "OrganExposed", "XRayOutput", "HalfValueLayer", "BillingProcedureStepSequence",
    "FilmConsumptionSequence", "BillingSuppliesAndDevicesSequence",
})
MPPS_ATTRIBUTES = CREATE_ONLY | SET_ALLOWED | {"SpecificCharacterSet"}


class MPPSError(Exception):
    """A request refused with a DIMSE status (and the matching HTTP answer)."""

    def __init__(self, status: int, comment: str, attributes: Iterable[str | int] = (),
                 error_id: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        # the Attribute Identifier List (0000,1005) of the response: keywords or tags
        self.attributes = [a if isinstance(a, int) else int(tag_for_keyword(a))
                           for a in attributes if isinstance(a, int) or tag_for_keyword(a)]
        self.error_id = error_id


@dataclass
class Outcome:
    """A committed change: its instance, status code (success or warning)."""

    uid: str
    pps_status: str
    status: int = SUCCESS
    comment: str | None = None
    attributes: list[int] = field(default_factory=list)  # Attribute Identifier List
    generated_uid: bool = False
    linked: list[str] = field(default_factory=list)  # accession/step of linked items


# --- encoding -------------------------------------------------------------------------


def _write(ds: Dataset) -> bytes:
    """Explicit VR Little Endian bytes of a dataset, in its Specific Character Set;
    pydicom's exception when a value cannot be written."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return fp.parent.getvalue()


def encode_dataset(ds: Dataset) -> bytes:
    """Explicit VR Little Endian bytes of a dataset, in its Specific Character Set."""
    try:
        return _write(ds)
    except Exception:  # noqa: BLE001 - a value whose length or VR is wrong
        raise MPPSError(INVALID_ATTRIBUTE_VALUE,
                        "An attribute value does not fit its VR (cannot be encoded)",
                        offending_attributes(ds)) from None


def offending_attributes(ds: Dataset) -> list[int]:
    """The top-level attributes whose values cannot be read or written, each tried alone:
    the Attribute Identifier List of a 0x0106 Invalid Attribute Value (PS3.4 F.7.2.1.3);
    a value inside a sequence is named by its sequence."""
    try:
        charset = ds[0x00080005] if 0x00080005 in ds else None
    except Exception:  # noqa: BLE001
        return [0x00080005]
    bad = []
    for tag in list(ds.keys()):
        one = Dataset()
        try:
            if charset is not None and tag != 0x00080005:
                one[0x00080005] = charset
            one[tag] = ds[tag]
            _materialize(decode_dataset(_write(one)))
        except Exception:  # noqa: BLE001 - whatever pydicom raises on this value
            bad.append(int(tag))
    return bad


def decode_dataset(data: bytes) -> Dataset:
    return decode_bytes(BytesIO(data), False, True)


def _text_is_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if not all(_text_is_ascii(item) for item in elem.value):
                return False
        elif isinstance(elem.value, str) and not elem.value.isascii():
            return False
        elif elem.VR == "PN" and elem.value is not None and not str(elem.value).isascii():
            return False
        elif isinstance(elem.value, MultiValue) and not all(str(v).isascii() for v in elem.value):
            return False
    return True


def _unicode(ds: Dataset) -> Dataset:
    """Every text value as Unicode, decoded with the request's character set.

    F.7.2.2.3: the N-SET character set does not replace the N-CREATE one; the
    SCP keeps the combination. We hold every value as Unicode and store the
    instance as ISO_IR 192 when any text is outside ASCII. The dataset is
    written in its own character set and read back, so each element is decoded
    from bytes exactly once (pydicom's Dataset.decode() re-encodes str person
    names wrongly).
    """
    try:  # pydicom decodes the request lazily: a malformed value fails here
        encoded = encode_dataset(ds)  # written in the request's own character set
    except MPPSError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on bad bytes
        raise MPPSError(INVALID_ATTRIBUTE_VALUE, "Data set cannot be decoded: "
                        f"{exc.__class__.__name__}: {exc}"[:200],
                        offending_attributes(ds)) from None
    try:
        raw = decode_dataset(encoded)
        _materialize(raw)
    except (LookupError, UnicodeError) as exc:
        raise MPPSError(INVALID_ATTRIBUTE_VALUE,
                        f"Text cannot be decoded with Specific Character Set: {exc}",
                        ["SpecificCharacterSet"]) from None
    except Exception as exc:  # noqa: BLE001 - a value that does not fit its VR
        raise MPPSError(INVALID_ATTRIBUTE_VALUE, "Data set cannot be decoded: "
                        f"{exc.__class__.__name__}: {exc}"[:200],
                        offending_attributes(ds)) from None
    _check_sequence_vrs(raw)
    if "SpecificCharacterSet" in raw:
        del raw.SpecificCharacterSet
    return raw


def _check_sequence_vrs(ds: Dataset) -> None:
    """A sequence attribute sent with another VR (or the reverse) is an invalid value."""
    for elem in ds:
        if not elem.keyword:
            continue
        expected = dictionary_VR(elem.tag)
        if (expected == "SQ") != (elem.VR == "SQ"):
            raise MPPSError(INVALID_ATTRIBUTE_VALUE,
                            f"{elem.keyword} has VR {elem.VR}, the standard's is {expected}",
                            [elem.keyword])
        if elem.VR == "SQ":
            for item in elem.value:
                _check_sequence_vrs(item)


def _materialize(ds: Dataset) -> None:
    """Convert every element from bytes now; person names become plain str.

    A PersonName read from bytes keeps them and pydicom writes them again
    unchanged; stored in another character set it must be encoded anew.
    """
    for elem in ds:  # iterating converts raw elements with the dataset's charset
        if elem.VR == "SQ":
            for item in elem.value:
                _materialize(item)
        elif elem.VR == "PN" and elem.value is not None:
            if isinstance(elem.value, MultiValue):
                elem.value = [str(v) for v in elem.value]
            else:
                elem.value = str(elem.value)


def _charset_for_storage(ds: Dataset) -> None:
    if "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    if not _text_is_ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"


# --- attribute helpers ------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str | None:
    """A value as stored in the indexed columns: without padding (PS3.5 Table 6.2-1)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip().strip("\0").strip() or None


def _is_empty(elem: DataElement) -> bool:
    return len(elem.value) == 0 if elem.VR == "SQ" else elem.is_empty


def _require(ds: Dataset, keyword: str, path: str = "", why: str = "") -> None:
    """0x0120 when the attribute is absent, 0x0121 when it has no value.

    Nested attributes are named by the sequence tag and item number, so the
    comment fits the 64 characters of Error Comment (LO).
    """
    name = f"{path}{keyword}"
    if keyword not in ds:
        raise MPPSError(MISSING_ATTRIBUTE, f"{why}Missing attribute {name}", [keyword])
    if _is_empty(ds[keyword]):
        raise MPPSError(MISSING_ATTRIBUTE_VALUE, f"{why}Missing value of {name}", [keyword])


def _normalized(value: Any, vr: str = "") -> Any:
    """A comparable form of an element value (sequences recursively), without the
    padding its VR calls not significant (PS3.5 Table 6.2-1)."""
    if value is None or value == "":
        return None
    if isinstance(value, Dataset):
        return tuple(sorted((int(e.tag), _normalized(e.value, e.VR)) for e in value))
    if isinstance(value, (list, MultiValue)):
        items = tuple(_normalized(v, vr) for v in value)
        return items or None
    return strip_padding(vr, str(value)).rstrip() if vr else str(value).rstrip()


def _datetime(ds: Dataset, date_kw: str, time_kw: str) -> str | None:
    """YYYYMMDDHHMMSS of a date/time pair; 0x0106 when invalid."""
    date, time = _text(ds, date_kw), _text(ds, time_kw)
    if date is None:
        return None
    try:
        day = normalize_date(date_kw, date)
        clock = normalize_time(time_kw, time) if time else "000000"
    except MatchError as exc:
        raise MPPSError(INVALID_ATTRIBUTE_VALUE, str(exc), [exc.keyword]) from None
    return day + clock


def check_dates_and_times(ds: Dataset, path: str = "") -> None:
    """0x0106 naming the attribute unless every DA, TM and DT value of the data set, in
    sequences too, is a real date, time or date time (PS3.5 Table 6.2-1), with the one
    validator of matching.py."""
    for elem in ds:
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value, start=1):
                check_dates_and_times(
                    item, f"{path}({elem.tag.group:04X},{elem.tag.element:04X})[{n}] > ")
            continue
        if elem.VR not in ("DA", "TM", "DT") or elem.is_empty:
            continue
        keyword = elem.keyword or str(elem.tag)
        values = elem.value if isinstance(elem.value, (MultiValue, list)) else [elem.value]
        for value in values:
            try:
                check_temporal(elem.VR, keyword, str(value))
            except MatchError as exc:
                raise MPPSError(INVALID_ATTRIBUTE_VALUE, f"{path}{exc}",
                                [elem.keyword] if elem.keyword else []) from None


def _counts(ds: Dataset) -> tuple[int, int]:
    series = ds.get("PerformedSeriesSequence") or []
    instances = sum(
        len(s.get("ReferencedImageSequence") or [])
        + len(s.get("ReferencedNonImageCompositeSOPInstanceSequence") or [])
        for s in series
    )
    return len(series), instances


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _tracking_columns(ds: Dataset) -> dict[str, Any]:
    """The indexed copies of an instance's attributes."""
    ssas = _first_item(ds, "ScheduledStepAttributesSequence") or Dataset()
    reason = _first_item(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
    series, instances = _counts(ds)
    return {
        "status": _text(ds, "PerformedProcedureStepStatus"),
        "accession_number": _text(ssas, "AccessionNumber"),
        "study_instance_uid": _text(ssas, "StudyInstanceUID"),
        "patient_id": _text(ds, "PatientID"),
        "patient_name": _text(ds, "PatientName"),
        "modality": _text(ds, "Modality"),
        "station_ae_title": _text(ds, "PerformedStationAETitle"),
        "pps_id": _text(ds, "PerformedProcedureStepID"),
        "start_datetime": _datetime(ds, "PerformedProcedureStepStartDate",
                                    "PerformedProcedureStepStartTime"),
        "end_datetime": _datetime(ds, "PerformedProcedureStepEndDate",
                                  "PerformedProcedureStepEndTime"),
        "series_count": series,
        "instance_count": instances,
        "discontinuation_reason": (
            f"{_text(reason, 'CodeValue') or ''} {_text(reason, 'CodeMeaning') or ''}".strip()
            or None) if reason is not None else None,
    }


# --- worklist links and statuses ------------------------------------------------------------


def find_scheduled_items(session: Session, ssas_item: Dataset) -> list[WorklistItem]:
    """Worklist items named by one Scheduled Step Attributes Sequence item.

    Most specific identification first: accession + step ID, study UID + step
    ID, accession + requested procedure ID, study UID, accession. No match is
    the unscheduled case (F.7.2.1.2 Note), accepted without a link.
    """
    acc = _text(ssas_item, "AccessionNumber")
    study = _text(ssas_item, "StudyInstanceUID")
    step = _text(ssas_item, "ScheduledProcedureStepID")
    rp = _text(ssas_item, "RequestedProcedureID")
    W = WorklistItem
    strategies = [
        (acc and step, [W.accession_number == acc, W.sps_id == step]),
        (study and step, [W.study_instance_uid == study, W.sps_id == step]),
        (acc and rp, [W.accession_number == acc, W.requested_procedure_id == rp]),
        (study, [W.study_instance_uid == study]),
        (acc, [W.accession_number == acc]),
    ]
    for usable, where in strategies:
        if usable:
            items = session.scalars(select(W).where(*where).order_by(W.id)).all()
            if items:
                return list(items)
    return []


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


def refresh_item_statuses(session: Session, item_ids: Iterable[int]) -> None:
    """Lock the linked items (in id order) and set each status from its MPPS."""
    ids = sorted(set(item_ids))
    if not ids:
        return
    items = session.scalars(
        select(WorklistItem).where(WorklistItem.id.in_(ids)).order_by(WorklistItem.id)
        .with_for_update()
    ).all()
    for item in items:
        session.refresh(item, ["mpps"])
        status = derived_item_status(m.status for m in item.mpps)
        if status is not None and status != item.sps_status:
            item.sps_status = status


def _link_labels(items: Iterable[WorklistItem]) -> list[str]:
    return [f"{i.accession_number}/{i.sps_id}" for i in items]


# --- N-CREATE -------------------------------------------------------------------------------


def validate_create(ds: Dataset) -> None:
    """Type 1 attributes and the initial status (F.7.2.1, Table F.7.2-1)."""
    for keyword in CREATE_TYPE1:
        _require(ds, keyword)
    for n, item in enumerate(ds.ScheduledStepAttributesSequence, start=1):
        _require(item, "StudyInstanceUID", f"(0040,0270)[{n}] > ")
    status = _text(ds, "PerformedProcedureStepStatus")
    if status != "IN PROGRESS":
        raise MPPSError(
            INVALID_ATTRIBUTE_VALUE,
            f"Performed Procedure Step Status must be IN PROGRESS at N-CREATE, got {status!r}",
            ["PerformedProcedureStepStatus"],
        )
    check_dates_and_times(ds)
    _datetime(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
    _datetime(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")


def _payload(ds: Dataset, targets: Sequence[str]) -> bytes | None:
    """The request's attributes as they will be forwarded (only when there are targets)."""
    if not targets:
        return None
    _charset_for_storage(ds)
    return encode_dataset(ds)


def _actor(actor: Actor | None, calling_ae: str | None) -> Actor:
    return actor or Actor(calling_ae or "unknown", None, "DIMSE")


def create(db: Database, attributes: Dataset, uid: str | None = None,
           calling_ae: str | None = None, uid_prefix: str = "",
           targets: Sequence[str] = (), actor: Actor | None = None) -> Outcome:
    """N-CREATE: store the instance, link and start its worklist items, queue the
    notifications for ``targets`` (outbox), commit."""
    ds = _unicode(attributes)
    if uid:  # a UID in use is the first thing to tell (PS3.18 15.4: 409)
        with db.read() as session:
            if session.scalar(select(MPPSTracking.id).where(
                    MPPSTracking.sop_instance_uid == uid)) is not None:
                raise MPPSError(DUPLICATE_SOP_INSTANCE, f"SOP Instance {uid} already exists")
    validate_create(ds)
    generated = not uid
    uid = uid or new_study_uid(uid_prefix)
    payload = _payload(ds, targets)
    ds.SOPClassUID = MPPS_SOP_CLASS
    ds.SOPInstanceUID = uid
    _charset_for_storage(ds)
    columns = _tracking_columns(ds)
    try:
        with db.write() as session:
            record = MPPSTracking(sop_instance_uid=uid, dataset=encode_dataset(ds),
                                  calling_ae_title=calling_ae, version=1, **columns)
            items: list[WorklistItem] = []
            for ssas_item in ds.ScheduledStepAttributesSequence:
                for item in find_scheduled_items(session, ssas_item):
                    if item not in items:
                        items.append(item)
            record.worklist_items = items
            session.add(record)
            session.flush()
            refresh_item_statuses(session, [i.id for i in items])
            outbox.enqueue(session, targets, uid, "N-CREATE", "IN PROGRESS", payload)
            linked = _link_labels(items)
            audit.record(session, _actor(actor, calling_ae), "mpps.create", uid, {
                "status": "IN PROGRESS", "generated_uid": generated,
                "worklist_items": {label: i.sps_status for label, i in zip(linked, items)}})
    except IntegrityError:  # the unique UID: a concurrent N-CREATE with the same UID won
        raise MPPSError(DUPLICATE_SOP_INSTANCE, f"SOP Instance {uid} already exists") from None
    return Outcome(uid=uid, pps_status="IN PROGRESS", generated_uid=generated, linked=linked)


# --- N-SET ------------------------------------------------------------------------------------


def _load_for_update(session: Session, uid: str) -> MPPSTracking:
    record = session.scalars(
        select(MPPSTracking).where(MPPSTracking.sop_instance_uid == uid).with_for_update()
    ).first()
    if record is None:
        raise MPPSError(NO_SUCH_SOP_INSTANCE, f"No such SOP Instance {uid}")
    return record


def _check_final_state(ds: Dataset) -> None:
    """Final-state requirements (Table F.7.2-1 'Final State' column)."""
    status = _text(ds, "PerformedProcedureStepStatus")
    if status == "DISCONTINUED":
        # The SCP may complete an instance once it is final (F.7.2.2.3).
        now = dt.datetime.now()
        if not _text(ds, "PerformedProcedureStepEndDate"):
            ds.PerformedProcedureStepEndDate = now.strftime("%Y%m%d")
            ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
        elif not _text(ds, "PerformedProcedureStepEndTime"):
            ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
        return
    if status != "COMPLETED":
        return
    why = "COMPLETED: "
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                    "PerformedSeriesSequence"):
        _require(ds, keyword, why=why)
    for n, series in enumerate(ds.PerformedSeriesSequence, start=1):
        _require(series, "SeriesInstanceUID", f"(0040,0340)[{n}] > ", why)


def update(db: Database, uid: str, modifications: Dataset,
           calling_ae: str | None = None, targets: Sequence[str] = (),
           all_or_nothing: bool = False, actor: Actor | None = None) -> Outcome:
    """N-SET: apply what Table F.7.2-1 allows to an IN PROGRESS instance, commit.

    A changed value of an N-CREATE-only attribute, or an attribute the MPPS
    IOD does not have, is not applied: the allowed changes are, and the answer
    is the warning 0x0107 Attribute List Error naming the attributes not
    modified (PS3.7 C.4.2). An identical repeat of a create-only value is
    accepted silently. With ``all_or_nothing`` (DICOMweb Update, PS3.18
    15.5: 409 Conflict) such a request changes nothing and raises 0x0107.
    """
    mods = _unicode(modifications)
    payload = _payload(mods, targets)
    with db.write() as session:
        record = _load_for_update(session, uid)
        if record.status in FINAL_STATUSES:
            raise MPPSError(PROCESSING_FAILURE, MAY_NO_LONGER_BE_UPDATED,
                            error_id=ERROR_ID_NO_LONGER_UPDATED)
        check_dates_and_times(mods)
        stored = decode_dataset(record.dataset)
        old_status = record.status
        not_modified: list[DataElement] = []
        applied: list[str] = []
        for elem in mods:
            keyword = elem.keyword or str(elem.tag)
            if elem.tag.element == 0 or keyword == "SpecificCharacterSet":
                continue
            if keyword in SET_ALLOWED:
                stored[elem.tag] = elem  # sequences are replaced whole
                applied.append(keyword)
            elif keyword in CREATE_ONLY:
                old = stored.get(elem.tag)
                if _normalized(elem.value, elem.VR) != _normalized(old.value if old else None,
                                                                    elem.VR):
                    not_modified.append(elem)
            else:
                not_modified.append(elem)
        if not_modified and all_or_nothing:
            raise MPPSError(ATTRIBUTE_LIST_ERROR, "Not modifiable after creation: " + ", ".join(
                e.keyword or str(e.tag) for e in not_modified),
                [e.keyword for e in not_modified if e.keyword])
        new_status = _text(stored, "PerformedProcedureStepStatus")
        if new_status not in PPS_STATUSES:
            raise MPPSError(INVALID_ATTRIBUTE_VALUE,
                            f"Invalid Performed Procedure Step Status {new_status!r}",
                            ["PerformedProcedureStepStatus"])
        _check_final_state(stored)
        _charset_for_storage(stored)
        columns = _tracking_columns(stored)  # validates the end date/time
        for key, value in columns.items():
            setattr(record, key, value)
        record.dataset = encode_dataset(stored)
        record.version += 1
        session.flush()
        refresh_item_statuses(session, [i.id for i in record.worklist_items])
        outbox.enqueue(session, targets, uid, "N-SET", new_status, payload)
        linked = _link_labels(record.worklist_items)
        audit.record(session, _actor(actor, calling_ae), "mpps.update", uid, {
            "from": old_status, "to": new_status, "applied": applied,
            "not_modified": [e.keyword or str(e.tag) for e in not_modified],
            "worklist_items": {label: i.sps_status
                               for label, i in zip(linked, record.worklist_items)}})
    outcome = Outcome(uid=uid, pps_status=new_status, linked=linked)
    if not_modified:
        outcome.status = ATTRIBUTE_LIST_ERROR
        outcome.comment = "Not modified: " + ", ".join(
            e.keyword or str(e.tag) for e in not_modified)
        outcome.attributes = [int(e.tag) for e in not_modified]
    return outcome


# --- N-GET ------------------------------------------------------------------------------------


def get(db: Database, uid: str, tags: Iterable[int] | int | None = None) -> tuple[int, Dataset]:
    """N-GET (F.8): (status, attributes); all attributes when ``tags`` is empty."""
    with db.read() as session:
        record = session.scalars(
            select(MPPSTracking).where(MPPSTracking.sop_instance_uid == uid)).first()
        if record is None:
            raise MPPSError(NO_SUCH_SOP_INSTANCE, f"No such SOP Instance {uid}")
        stored = decode_dataset(record.dataset)
    if tags is None or isinstance(tags, int):  # one tag arrives bare from pydicom
        tags = [] if tags is None else [tags]
    tags = [Tag(t) for t in tags]
    if not tags:
        return SUCCESS, stored
    result = Dataset()
    if "SpecificCharacterSet" in stored:
        result.SpecificCharacterSet = stored.SpecificCharacterSet
    status = SUCCESS
    for tag in tags:
        if tag in stored:
            result[tag] = stored[tag]
        elif keyword_for_tag(tag) in MPPS_ATTRIBUTES:
            result.add_new(tag, dictionary_VR(tag), None)  # known, no value
        else:
            status = OPTIONAL_ATTRIBUTES_UNSUPPORTED
    return status, result


# --- listing for operators ---------------------------------------------------------------------


def summary(record: MPPSTracking) -> dict[str, Any]:
    return {
        "sop_instance_uid": record.sop_instance_uid,
        "status": record.status,
        "patient_id": record.patient_id,
        "patient_name": record.patient_name,
        "accession_number": record.accession_number,
        "study_instance_uid": record.study_instance_uid,
        "modality": record.modality,
        "station_ae_title": record.station_ae_title,
        "pps_id": record.pps_id,
        "start": record.start_datetime,
        "end": record.end_datetime,
        "series": record.series_count,
        "instances": record.instance_count,
        "discontinuation_reason": record.discontinuation_reason,
        "completeness": record.completeness,
        "received": record.received_count,
        "missing": record.missing_instances,
        "calling_ae_title": record.calling_ae_title,
        "worklist_items": _link_labels(record.worklist_items),
        "updated_at": record.updated_at.isoformat() if record.updated_at else None,
    }


def list_steps(db: Database, status: str | None = None, limit: int = 50) -> list[dict]:
    with db.read() as session:
        stmt = select(MPPSTracking).order_by(MPPSTracking.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(MPPSTracking.status == status)
        return [summary(r) for r in session.scalars(stmt)]


def show_step(db: Database, uid: str) -> tuple[dict, Dataset]:
    with db.read() as session:
        record = session.scalars(
            select(MPPSTracking).where(MPPSTracking.sop_instance_uid == uid)).first()
        if record is None:
            raise MPPSError(NO_SUCH_SOP_INSTANCE, f"No such SOP Instance {uid}")
        return summary(record), decode_dataset(record.dataset)
