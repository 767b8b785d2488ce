"""The Today view's data (issue 15 item 2): one day's Scheduled Procedure Steps with their
patient, their MPPS progress and completeness, and the counts per status, in three SQL
queries whatever the number of rows (no query per row), plus a cheap change token for
the page's polling.

A step's status is its Scheduled Procedure Step Status (0040,0020), PS3.4 K.6.1.2.2 /
Table K.6-1; an MPPS is linked to the steps it names in its Scheduled Step Attributes
Sequence (PS3.4 F.7.2.1, services/mpps.py), several MPPS per step possible.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import (
    STEP_STATUSES,
    AuditEvent,
    MPPSTracking,
    Patient,
    WorklistItem,
    as_utc,
    mpps_worklist_links,
)
from worklist_mpps.services.matching import fold_pn

TOKEN_WINDOW = 1000  # audit ids (see change_token)
TOKEN_WINDOW_CHECKS = timedelta(minutes=10)
MAX_SEARCH = 64  # characters of the name/ID search that are used
STATUSES = STEP_STATUSES  # the Scheduled Procedure Step Status values (PS3.3 C.4.10)


@dataclass(frozen=True)
class DayFilters:
    """The filters of the view; empty strings mean "any"."""

    modality: str = ""
    station: str = ""
    status: str = ""  # one of STEP_STATUSES, or "" for all
    search: str = ""  # patient name or ID words

    @classmethod
    def parse(
        cls, modality: str = "", station: str = "", status: str = "", search: str = ""
    ) -> DayFilters:
        """Normalised filters: modality upper case (CS), station as given (AE titles are
        case-sensitive, PS3.5 6.2), an unknown status is a ValueError."""
        status = status.strip().upper().replace("_", " ")
        if status in ("", "ALL"):
            status = ""
        elif status not in STEP_STATUSES:
            raise ValueError(f"status: one of {', '.join(STEP_STATUSES)} or all, got {status!r}")
        return cls(
            modality=modality.strip().upper()[:16],
            station=station.strip()[:16],
            status=status,
            search=" ".join(search.split())[:MAX_SEARCH],
        )


@dataclass(slots=True)
class Progress:
    """One MPPS linked to the step (PS3.4 F.7.2): its status, times, counts and, with
    Orthanc configured, completeness (delivery/orthanc.py)."""

    uid: str
    status: str
    start: str | None  # YYYYMMDDHHMMSS
    end: str | None
    series: int
    images: int
    completeness: str | None  # complete | checking | incomplete | None (not checked)
    received: int | None
    missing: int

    @property
    def expected(self) -> int | None:
        return None if self.received is None else self.received + self.missing


@dataclass(slots=True)
class Row:
    id: int
    start_date: str | None
    start_time: str | None
    patient_name: str | None
    patient_id: str
    birth_date: str | None
    sex: str | None
    accession: str | None
    procedure: str | None  # Requested Procedure Description
    step: str | None  # Scheduled Procedure Step Description
    modality: str | None
    station: str | None
    status: str
    status_reason: str | None
    study_uid: str
    mpps: list[Progress] = field(default_factory=list)


@dataclass(frozen=True)
class DayView:
    day: date
    filters: DayFilters
    rows: list[Row]
    counts: dict[str, int]  # per status, under the filters other than status
    modalities: list[str]  # the day's, for the filter's choices
    stations: list[str]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_clause(search: str) -> ColumnElement[bool] | None:
    """Every word of the search in the patient's name or ID. Names are compared folded as
    the worklist's Person Name matching folds them (matching.fold_pn: case and accents, so
    "dvorak" finds Dvořák); a "Family, Given" or "Family^Given" search is words too."""
    words = (fold_pn(search.replace(",", " ").replace("^", " ").replace("=", " ")) or "").split()
    clauses = []
    for word in words:
        pattern = _like(word)
        clauses.append(
            or_(
                Patient.patient_name_folded.like(pattern, escape="\\"),
                func.lower(Patient.patient_id).like(pattern, escape="\\"),
            )
        )
    return and_(*clauses) if clauses else None


def _where(day: date, filters: DayFilters, *, status: bool = True) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [WorklistItem.sps_start_date == day.strftime("%Y%m%d")]
    if filters.modality:
        where.append(WorklistItem.modality == filters.modality)
    if filters.station:
        where.append(WorklistItem.scheduled_station_ae_title == filters.station)
    if status and filters.status:
        where.append(WorklistItem.sps_status == filters.status)
    if filters.search and (clause := search_clause(filters.search)) is not None:
        where.append(clause)
    return where


def day_view(db: Database, day: date, filters: DayFilters | None = None) -> DayView:
    """The day's steps under ``filters``, sorted by scheduled time, with their MPPS."""
    filters = filters or DayFilters()
    where = _where(day, filters)
    with db.read() as session:
        items = session.execute(
            select(
                WorklistItem.id,
                WorklistItem.sps_start_date,
                WorklistItem.sps_start_time,
                Patient.patient_name,
                Patient.patient_id,
                Patient.birth_date,
                Patient.sex,
                WorklistItem.accession_number,
                WorklistItem.requested_procedure_description,
                WorklistItem.sps_description,
                WorklistItem.modality,
                WorklistItem.scheduled_station_ae_title,
                WorklistItem.sps_status,
                WorklistItem.status_reason,
                WorklistItem.study_instance_uid,
            )
            .join(Patient, Patient.id == WorklistItem.patient_pk)
            .where(*where)
            # by time, steps without one last on every database (SQLite sorts NULL first)
            .order_by(
                WorklistItem.sps_start_time.is_(None), WorklistItem.sps_start_time, WorklistItem.id
            )
        ).all()
        # the MPPS of those steps, through the link table, in one query
        link = mpps_worklist_links.c
        progress = session.execute(
            select(
                link.item_pk,
                MPPSTracking.sop_instance_uid,
                MPPSTracking.status,
                MPPSTracking.start_datetime,
                MPPSTracking.end_datetime,
                MPPSTracking.series_count,
                MPPSTracking.instance_count,
                MPPSTracking.completeness,
                MPPSTracking.received_count,
                MPPSTracking.missing_instances,
            )
            .join(MPPSTracking, MPPSTracking.id == link.mpps_pk)
            .join(WorklistItem, WorklistItem.id == link.item_pk)
            .join(Patient, Patient.id == WorklistItem.patient_pk)
            .where(*where)
            .order_by(MPPSTracking.start_datetime, MPPSTracking.id)
        ).all()
        # counts per status (the other filters applied) and the day's filter choices
        groups = session.execute(
            select(
                WorklistItem.sps_status,
                WorklistItem.modality,
                WorklistItem.scheduled_station_ae_title,
                func.count(),
            )
            .join(Patient, Patient.id == WorklistItem.patient_pk)
            .where(*_where(day, DayFilters(search=filters.search)))
            .group_by(
                WorklistItem.sps_status,
                WorklistItem.modality,
                WorklistItem.scheduled_station_ae_title,
            )
        ).all()
    by_item: dict[int, list[Progress]] = {}
    for p in progress:
        by_item.setdefault(p.item_pk, []).append(
            Progress(
                uid=p.sop_instance_uid,
                status=p.status,
                start=p.start_datetime,
                end=p.end_datetime,
                series=p.series_count or 0,
                images=p.instance_count or 0,
                completeness=p.completeness,
                received=p.received_count,
                missing=len(p.missing_instances or []),
            )
        )
    rows = [
        Row(
            id=r.id,
            start_date=r.sps_start_date,
            start_time=r.sps_start_time,
            patient_name=r.patient_name,
            patient_id=r.patient_id,
            birth_date=r.birth_date,
            sex=r.sex,
            accession=r.accession_number,
            procedure=r.requested_procedure_description,
            step=r.sps_description,
            modality=r.modality,
            station=r.scheduled_station_ae_title,
            status=r.sps_status,
            status_reason=r.status_reason,
            study_uid=r.study_instance_uid,
            mpps=by_item.get(r.id, []),
        )
        for r in items
    ]
    counts: Counter[str] = Counter(dict.fromkeys(STEP_STATUSES, 0))
    modalities, stations = set(), set()
    for status, modality, station, count in groups:
        if modality:
            modalities.add(modality)
        if station:
            stations.add(station)
        if (not filters.modality or modality == filters.modality) and (
            not filters.station or station == filters.station
        ):
            counts[status] += count
    return DayView(
        day=day,
        filters=filters,
        rows=rows,
        counts=dict(counts),
        modalities=sorted(modalities | ({filters.modality} - {""})),
        stations=sorted(stations | ({filters.station} - {""})),
    )


def change_token(db: Database) -> str:
    """Changes when anything the view shows may have changed, in two indexed queries.

    Every change to items, orders and MPPS is audited in its own transaction (MPPS N-CREATE
    and N-SET, HL7 orders, API and page edits, cancels, status changes), so the newest
    audit id moves with each; the completeness check (delivery/orthanc.py) is not audited,
    so the newest ``mpps.completeness_checked_at`` (indexed, migration 0007) is added.
    On PostgreSQL, transactions may commit out of id order (id 10 committing after id 11):
    the number of rows in the last TOKEN_WINDOW ids (and checks in the last
    TOKEN_WINDOW_CHECKS) counts a late commit too. Read it before the rows: a change in
    between shows on the next poll, it is never lost.
    """
    with db.read() as session:
        top, checked = session.execute(
            select(
                select(func.max(AuditEvent.id)).scalar_subquery(),
                select(func.max(MPPSTracking.completeness_checked_at)).scalar_subquery(),
            )
        ).one()
        top = top or 0
        recent = session.scalar(select(func.count()).where(AuditEvent.id > top - TOKEN_WINDOW))
        checks = 0
        if isinstance(checked, datetime):
            checks = (
                session.scalar(
                    select(func.count()).where(
                        MPPSTracking.completeness_checked_at > checked - TOKEN_WINDOW_CHECKS
                    )
                )
                or 0
            )
            checked = as_utc(checked).isoformat()
    digest = hashlib.sha256(f"{top}|{recent}|{checked}|{checks}".encode()).hexdigest()[:12]
    return f"{top}-{digest}"
