"""Modality Performed Procedure Step (PS3.4 Annex F) as plain functions.

``create`` (N-CREATE, F.7.2.1), ``update`` (N-SET, F.7.2.2) and ``get``
(N-GET, F.8) are called by the DIMSE handlers and by DICOMweb. Each runs in
one database transaction and returns only after it committed, so a success
seen by a modality survives a crash. A rule is broken by raising
:class:`MPPSError` with the status code of PS3.7 Annex C / PS3.4 F.7.2. A change that
moves a worklist item from an HL7 order also queues the item's status for the order
placer, in the same transaction (order_status.py).

Over 400 lines: the three operations of Annex F and their Table F.7.2-1 rules read best
side by side; values and encoding are in dicom.py, links to the worklist in links.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.tag import Tag
from sqlalchemy import bindparam, exists, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worklist_mpps import timezone
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import FINAL_STATUSES, MPPSTracking, mpps_worklist_links, utcnow
from worklist_mpps.services import audit, order_status, outbox
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.dicom import (
    as_unicode,
    charset_for_storage,
    check_dates_and_times,
    datetime_value,
    decode_dataset,
    encode_dataset,
    new_study_uid,
    normalized,
    require,
    text_value,
)
from worklist_mpps.services.links import (
    find_scheduled_item_ids,
    link_labels,
    linked_item_ids,
    refresh_items,
)
from worklist_mpps.services.status import (
    ATTRIBUTE_LIST_ERROR,
    DUPLICATE_SOP_INSTANCE,
    ERROR_ID_NO_LONGER_UPDATED,
    INVALID_ATTRIBUTE_VALUE,
    MAY_NO_LONGER_BE_UPDATED,
    NO_SUCH_SOP_INSTANCE,
    OPTIONAL_ATTRIBUTES_UNSUPPORTED,
    PROCESSING_FAILURE,
    SUCCESS,
    MPPSError,
)
from worklist_mpps.services.stored_charset import set_charset_for_storage

log = logging.getLogger(__name__)

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

PPS_STATUSES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")

# Type 1 at N-CREATE (Table F.7.2-1).
CREATE_TYPE1 = (
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
)
# N-SET "Not allowed": set once, at N-CREATE (Table F.7.2-1).
CREATE_ONLY = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "OtherPatientIDsSequence",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID",
        "ServiceEpisodeDescription",
        "IssuerOfServiceEpisodeIDSequence",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
        "PerformedStationNameCodeSequence",
        "PerformedStationClassCodeSequence",
        "PerformedStationGeographicLocationCodeSequence",
        "PerformedProcessingApplicationsCodeSequence",
        # SOP Common: the offset of every date and time of the instance (PS3.3 C.12.1.1.8);
        # a later change would move the start already stored
        "TimezoneOffsetFromUTC",
    }
)
# May be set by N-SET (Table F.7.2-1, including the Radiation Dose and Billing modules).
SET_ALLOWED = frozenset(
    {
        "PerformedProcedureStepStatus",
        "PerformedProcedureStepDescription",
        "PerformedProcedureTypeDescription",
        "ProcedureCodeSequence",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "CommentsOnThePerformedProcedureStep",
        "PerformedProcedureStepDiscontinuationReasonCodeSequence",
        "ReasonForPerformedProcedureCodeSequence",
        "PerformedProtocolCodeSequence",
        "PerformedSeriesSequence",
        "AnatomicStructureSpaceOrRegionSequence",
        "TotalTimeOfFluoroscopy",
        "TotalNumberOfExposures",
        "EntranceDose",
        "EntranceDoseInmGy",
        "ExposedArea",
        "DistanceSourceToEntrance",
        "CommentsOnRadiationDose",
        "ExposureDoseSequence",
        "ImageAndFluoroscopyAreaDoseProduct",
        "OrganDose",
        "OrganExposed",
        "XRayOutput",
        "HalfValueLayer",
        "BillingProcedureStepSequence",
        "FilmConsumptionSequence",
        "BillingSuppliesAndDevicesSequence",
    }
)
MPPS_ATTRIBUTES = CREATE_ONLY | SET_ALLOWED | {"SpecificCharacterSet"}


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


# --- indexed columns ------------------------------------------------------------------


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


def _offset(ds: Dataset) -> str | None:
    """Timezone Offset From UTC (0008,0201) of the instance, 0x0106 when invalid."""
    value = text_value(ds, "TimezoneOffsetFromUTC")
    if value is None:
        return None
    try:
        timezone.parse_offset(value)
    except timezone.OffsetError as exc:
        raise MPPSError(INVALID_ATTRIBUTE_VALUE, str(exc), ["TimezoneOffsetFromUTC"]) from None
    return value


def _server_time(value: str | None, offset: str | None) -> str | None:
    """A YYYYMMDDHHMMSS of the instance in the server's local time: the dates and times
    of an instance with Timezone Offset From UTC are local time in that offset (PS3.3
    C.12.1.1.8), the worklist's are the server's; without one they are taken as the
    server's (the standard calls the offset undefined then)."""
    return timezone.convert(value, offset) if value and offset else value


def _tracking_columns(ds: Dataset) -> dict[str, Any]:
    """The indexed copies of an instance's attributes; start and end in the server's
    local time, the instance's own offset beside them."""
    offset = _offset(ds)
    ssas = _first_item(ds, "ScheduledStepAttributesSequence") or Dataset()
    reason = _first_item(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
    series, instances = _counts(ds)
    return {
        "status": text_value(ds, "PerformedProcedureStepStatus"),
        "accession_number": text_value(ssas, "AccessionNumber"),
        "study_instance_uid": text_value(ssas, "StudyInstanceUID"),
        "patient_id": text_value(ds, "PatientID"),
        "patient_name": text_value(ds, "PatientName"),
        "modality": text_value(ds, "Modality"),
        "station_ae_title": text_value(ds, "PerformedStationAETitle"),
        "pps_id": text_value(ds, "PerformedProcedureStepID"),
        "start_datetime": _server_time(
            datetime_value(
                ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"
            ),
            offset,
        ),
        "end_datetime": _server_time(
            datetime_value(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"),
            offset,
        ),
        "timezone_offset": offset,
        "series_count": series,
        "instance_count": instances,
        "discontinuation_reason": _reason(reason),
    }


def _reason(reason: Dataset | None) -> str | None:
    """The Discontinuation Reason column: code value and meaning of the first item."""
    if reason is None:
        return None
    return (
        f"{text_value(reason, 'CodeValue') or ''} {text_value(reason, 'CodeMeaning') or ''}"
    ).strip() or None


_TRACKING_KEYS = tuple(_tracking_columns(Dataset()))  # the indexed columns
# the indexed copies of N-CREATE-only attributes (Table F.7.2-1: N-SET cannot change them)
_CREATE_ONLY_KEYS = (
    "accession_number",
    "study_instance_uid",
    "patient_id",
    "patient_name",
    "modality",
    "station_ae_title",
    "pps_id",
    "start_datetime",
    "timezone_offset",
)


def _set_columns(ds: Dataset, record: Any) -> dict[str, Any]:
    """:func:`_tracking_columns` after an N-SET: the copies of N-CREATE-only attributes
    as the row has them (the attributes cannot have changed; reading them again from the
    stored instance would decode elements that are otherwise copied as stored bytes,
    issue 18), the others from ``ds``; the end in the server's local time by the stored
    offset, as at N-CREATE."""
    offset = record.timezone_offset
    series, instances = _counts(ds)
    columns = {key: getattr(record, key) for key in _CREATE_ONLY_KEYS}
    columns.update(
        status=text_value(ds, "PerformedProcedureStepStatus"),
        end_datetime=_server_time(
            datetime_value(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"),
            offset,
        ),
        series_count=series,
        instance_count=instances,
        discontinuation_reason=_reason(
            _first_item(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
        ),
    )
    return columns


# --- N-CREATE -------------------------------------------------------------------------------


def validate_create(ds: Dataset) -> None:
    """Type 1 attributes and the initial status (F.7.2.1, Table F.7.2-1)."""
    for keyword in CREATE_TYPE1:
        require(ds, keyword)
    for n, item in enumerate(ds.ScheduledStepAttributesSequence, start=1):
        require(item, "StudyInstanceUID", f"(0040,0270)[{n}] > ")
    status = text_value(ds, "PerformedProcedureStepStatus")
    if status != "IN PROGRESS":
        raise MPPSError(
            INVALID_ATTRIBUTE_VALUE,
            f"Performed Procedure Step Status must be IN PROGRESS at N-CREATE, got {status!r}",
            ["PerformedProcedureStepStatus"],
        )
    check_dates_and_times(ds)
    _offset(ds)
    datetime_value(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
    datetime_value(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")


def _payload(ds: Dataset, targets: Sequence[str]) -> bytes | None:
    """The request's attributes as they will be forwarded (only when there are MPPS
    targets: HL7 destinations get the item's status, services/order_status.py)."""
    if not outbox.mpps_targets(targets):
        return None
    charset_for_storage(ds)
    return encode_dataset(ds)


@contextlib.contextmanager
def _transaction(db: Database) -> Iterator[Connection]:
    """A write transaction on a Core connection, committed on success: what
    ``Database.write`` gives without the ORM session (issue 18: the session cost more than
    the statements); ``BEGIN IMMEDIATE`` on SQLite, as there. The answer to the modality
    goes out only after the commit (F.7.2: a success seen has been stored)."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn.execution_options(sqlite_immediate=True)
        with conn.begin():
            yield conn


@contextlib.contextmanager
def _items_session(
    db: Database, conn: Connection, item_ids: Sequence[int]
) -> Iterator[Session | None]:
    """An ORM session in ``conn``'s transaction when worklist items are linked (their
    status changes and order status messages work on the ORM objects), flushed at the
    end; None when nothing is linked."""
    if not item_ids:
        yield None
        return
    with db.sessions(bind=conn) as session:
        yield session
        session.flush()


def _record(uid: str, columns: dict[str, Any]) -> MPPSTracking:
    """The instance's indexed values as an MPPSTracking (not added to any session), for
    the order status snapshot (order_status.py)."""
    return MPPSTracking(sop_instance_uid=uid, **{k: columns[k] for k in _TRACKING_KEYS})


_INSERT = insert(MPPSTracking.__table__)  # type: ignore[arg-type]
_LINK = insert(mpps_worklist_links)


# built once: building a statement costs more than running it
_UID_IN_USE = select(MPPSTracking.id).where(MPPSTracking.sop_instance_uid == bindparam("uid"))


def _raise_if_in_use(db: Database, uid: str) -> None:
    """0x0111 Duplicate SOP Instance when ``uid`` is stored. Asked only when the request
    fails otherwise: on the success path the unique constraint answers it inside the
    transaction (IntegrityError below), without a statement of its own (issue 18)."""
    with db.query() as conn:  # one statement: no session, no transaction
        if conn.execute(_UID_IN_USE, {"uid": uid}).first() is not None:
            raise MPPSError(DUPLICATE_SOP_INSTANCE, f"SOP Instance {uid} already exists")


def create(
    db: Database,
    attributes: Dataset,
    uid: str | None = None,
    calling_ae: str | None = None,
    uid_prefix: str = "",
    targets: Sequence[str] = (),
    actor: Actor | None = None,
    emulated: bool = False,
) -> Outcome:
    """N-CREATE: store the instance, link and start its worklist items, queue the
    notifications for ``targets`` (outbox), commit. ``emulated``: made from a study in
    Orthanc for a modality that sends no MPPS (services/witness.py), not received."""
    actor = actor or Actor(calling_ae or "unknown", None, "DIMSE")  # direct calls: tests
    generated = not uid
    try:
        ds = as_unicode(attributes)
        validate_create(ds)
        uid = uid or new_study_uid(uid_prefix)
        payload = _payload(ds, targets)
        ds.SOPClassUID = MPPS_SOP_CLASS
        ds.SOPInstanceUID = uid
        charset_for_storage(ds)
        columns = _tracking_columns(ds)
        data = encode_dataset(ds)  # before the transaction: a 0x0106 takes no lock
    except Exception:
        if not generated:  # a UID in use is the first thing to tell (PS3.18 15.4: 409)
            _raise_if_in_use(db, uid)  # type: ignore[arg-type]
        raise
    try:
        with _transaction(db) as conn:
            found = find_scheduled_item_ids(conn, ds.ScheduledStepAttributesSequence)
            inserted = conn.execute(
                _INSERT,
                {
                    "sop_instance_uid": uid,
                    "dataset": data,
                    "calling_ae_title": calling_ae,
                    "emulated": emulated,
                    "version": 1,
                    **columns,
                },
            ).inserted_primary_key
            if found:
                link = [{"mpps_pk": inserted[0], "item_pk": i} for i in found]  # type: ignore[index]
                conn.execute(_LINK, link)
            with _items_session(db, conn, found) as session:
                items, changes = refresh_items(session, found) if session else ([], [])
                by_id = {i.id: i for i in items}
                items = [by_id[i] for i in found if i in by_id]  # in the order found
                into = session or conn
                outbox.enqueue(
                    into, outbox.mpps_targets(targets), uid, "N-CREATE", "IN PROGRESS", payload
                )
                if session:
                    order_status.queue_status(session, targets, changes, _record(uid, columns))
                linked = link_labels(items)
                audit.record(
                    into,
                    actor,
                    "mpps.create",
                    uid,
                    {
                        "status": "IN PROGRESS",
                        "generated_uid": generated,
                        **({"emulated": True} if emulated else {}),
                        "worklist_items": {
                            label: i.sps_status for label, i in zip(linked, items, strict=True)
                        },
                    },
                )
    except IntegrityError:  # the unique UID: a concurrent N-CREATE with the same UID won
        raise MPPSError(DUPLICATE_SOP_INSTANCE, f"SOP Instance {uid} already exists") from None
    return Outcome(uid=uid, pps_status="IN PROGRESS", generated_uid=generated, linked=linked)


# --- N-SET ------------------------------------------------------------------------------------


_UPDATE = (
    sql_update(MPPSTracking.__table__)  # type: ignore[arg-type]
    .where(MPPSTracking.__table__.c.id == bindparam("pk"))
    .values({key: bindparam(key) for key in (*_TRACKING_KEYS, "dataset", "version", "updated_at")})
)
_BY_UID = select(MPPSTracking).where(MPPSTracking.sop_instance_uid == bindparam("uid"))
_BY_UID_FOR_UPDATE = _BY_UID.with_for_update()
# what N-SET reads of the stored instance, locked for the transaction (Core, issue 18)
_ROW_FOR_UPDATE = (
    select(
        MPPSTracking.id,
        MPPSTracking.status,
        MPPSTracking.version,
        MPPSTracking.dataset,
        *(MPPSTracking.__table__.c[key] for key in _CREATE_ONLY_KEYS),
        # whether any worklist item is linked: the link table is read only then (issue 18:
        # one statement fewer per N-SET of an unscheduled step)
        exists()
        .where(mpps_worklist_links.c.mpps_pk == MPPSTracking.__table__.c.id)
        .label("has_links"),
    )
    .where(MPPSTracking.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)


def _load(session: Session, uid: str, for_update: bool = False) -> MPPSTracking:
    """The stored instance (locked for the transaction with ``for_update``); 0x0112 No
    such SOP Instance when there is none (F.7.2.2, F.8)."""
    stmt = _BY_UID_FOR_UPDATE if for_update else _BY_UID
    record = session.scalars(stmt, {"uid": uid}).first()
    if record is None:
        raise MPPSError(NO_SUCH_SOP_INSTANCE, f"No such SOP Instance {uid}")
    return record


def _check_final_state(ds: Dataset) -> None:
    """Final-state requirements (Table F.7.2-1 'Final State' column)."""
    status = text_value(ds, "PerformedProcedureStepStatus")
    if status == "DISCONTINUED":
        # The SCP may complete an instance once it is final (F.7.2.2.3), in the
        # instance's offset when it has one (PS3.3 C.12.1.1.8)
        offset = _offset(ds)
        now = (
            dt.datetime.now(dt.timezone(timezone.parse_offset(offset)))
            if offset
            else dt.datetime.now()
        )
        if not text_value(ds, "PerformedProcedureStepEndDate"):
            ds.PerformedProcedureStepEndDate = now.strftime("%Y%m%d")
            ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
        elif not text_value(ds, "PerformedProcedureStepEndTime"):
            ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
        return
    if status != "COMPLETED":
        return
    why = "COMPLETED: "
    for keyword in (
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "PerformedSeriesSequence",
    ):
        require(ds, keyword, why=why)
    for n, series in enumerate(ds.PerformedSeriesSequence, start=1):
        require(series, "SeriesInstanceUID", f"(0040,0340)[{n}] > ", why)


def update(
    db: Database,
    uid: str,
    modifications: Dataset,
    calling_ae: str | None = None,
    targets: Sequence[str] = (),
    all_or_nothing: bool = False,
    actor: Actor | None = None,
) -> Outcome:
    """N-SET: apply what Table F.7.2-1 allows to an IN PROGRESS instance, commit.

    A changed value of an N-CREATE-only attribute, or an attribute the MPPS
    IOD does not have, is not applied: the allowed changes are, and the answer
    is the warning 0x0107 Attribute List Error naming the attributes not
    modified (PS3.7 C.4.2). An identical repeat of a create-only value is
    accepted silently. With ``all_or_nothing`` (DICOMweb Update, PS3.18
    15.5: 409 Conflict) such a request changes nothing and raises 0x0107.
    """
    actor = actor or Actor(calling_ae or "unknown", None, "DIMSE")  # direct calls: tests
    mods = as_unicode(modifications)
    payload = _payload(mods, targets)
    with _transaction(db) as conn:
        record = conn.execute(_ROW_FOR_UPDATE, {"uid": uid}).first()
        if record is None:
            raise MPPSError(NO_SUCH_SOP_INSTANCE, f"No such SOP Instance {uid}")
        if record.status in FINAL_STATUSES:
            raise MPPSError(
                PROCESSING_FAILURE, MAY_NO_LONGER_BE_UPDATED, error_id=ERROR_ID_NO_LONGER_UPDATED
            )
        # the linked items by one statement on the link table, read before the record
        # changes (issue 18)
        item_ids = linked_item_ids(conn, record.id) if record.has_links else []
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
                if normalized(elem.value, elem.VR) != normalized(
                    old.value if old else None, elem.VR
                ):
                    not_modified.append(elem)
            else:
                not_modified.append(elem)
        if not_modified and all_or_nothing:
            raise MPPSError(
                ATTRIBUTE_LIST_ERROR,
                "Not modifiable after creation: "
                + ", ".join(e.keyword or str(e.tag) for e in not_modified),
                [e.keyword for e in not_modified if e.keyword],
            )
        new_status = text_value(stored, "PerformedProcedureStepStatus")
        if new_status not in PPS_STATUSES:
            raise MPPSError(
                INVALID_ATTRIBUTE_VALUE,
                f"Invalid Performed Procedure Step Status {new_status!r}",
                ["PerformedProcedureStepStatus"],
            )
        _check_final_state(stored)
        set_charset_for_storage(stored)  # as charset_for_storage, keeping raw what it can
        columns = _set_columns(stored, record)  # validates the end date/time
        columns.update(
            dataset=encode_dataset(stored), version=record.version + 1, updated_at=utcnow()
        )
        # one Core UPDATE, sent now (the ORM unit of work cost more than the row, issue 18)
        conn.execute(_UPDATE, {"pk": record.id, **columns})
        with _items_session(db, conn, item_ids) as session:
            items, changes = refresh_items(session, item_ids) if session else ([], [])
            into = session or conn
            outbox.enqueue(into, outbox.mpps_targets(targets), uid, "N-SET", new_status, payload)
            if session:
                order_status.queue_status(session, targets, changes, _record(uid, columns))
            linked = link_labels(items)
            audit.record(
                into,
                actor,
                "mpps.update",
                uid,
                {
                    "from": old_status,
                    "to": new_status,
                    "applied": applied,
                    "not_modified": [e.keyword or str(e.tag) for e in not_modified],
                    "worklist_items": {
                        label: i.sps_status for label, i in zip(linked, items, strict=True)
                    },
                },
            )
    outcome = Outcome(uid=uid, pps_status=new_status, linked=linked)
    if not_modified:
        outcome.status = ATTRIBUTE_LIST_ERROR
        outcome.comment = "Not modified: " + ", ".join(
            e.keyword or str(e.tag) for e in not_modified
        )
        outcome.attributes = [int(e.tag) for e in not_modified]
    return outcome


# --- N-GET ------------------------------------------------------------------------------------


def get(db: Database, uid: str, tags: Iterable[int] | int | None = None) -> tuple[int, Dataset]:
    """N-GET (F.8): (status, attributes); all attributes when ``tags`` is empty."""
    with db.read() as session:
        stored = decode_dataset(_load(session, uid).dataset)
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
        "emulated": bool(record.emulated),
        "worklist_items": link_labels(record.worklist_items),
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
        record = _load(session, uid)
        return summary(record), decode_dataset(record.dataset)
