"""Several MPPS on one study: their aggregate state (README "What Orthanc learns").

A procedure done in two steps, a repeated acquisition or an MPPS sent by mistake and
then discontinued give one study several Modality Performed Procedure Steps (PS3.4
Annex F: each is its own SOP Instance with its own state machine, IN PROGRESS ->
COMPLETED | DISCONTINUED). The study shows what all of them say together, computed from
the database, so it does not depend on the order their notifications were delivered in:

- IN PROGRESS while any step is IN PROGRESS;
- COMPLETED when every step is final and at least one COMPLETED;
- DISCONTINUED when every step is DISCONTINUED.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from worklist_mpps.db.models import MPPSTracking, WorklistItem, mpps_worklist_links
from worklist_mpps.services.dicom import decode_dataset


@dataclass(frozen=True)
class Step:
    """One MPPS of the study, as the aggregate needs it."""

    uid: str
    status: str
    reason: str | None
    start: str  # PPS Start Date+Time, YYYYMMDDHHMMSS ("" when absent)
    references: tuple[str, ...]  # SOP Instance UIDs of its Performed Series Sequence
    version: int
    pk: int  # creation order, after the start


def referenced_instances(ds) -> list[str]:  # noqa: ANN001
    """SOP Instance UIDs of every image and non-image the MPPS references (PS3.4 Table
    F.7.2-1: Referenced Image Sequence, Referenced Non-Image Composite SOP Instance
    Sequence of each Performed Series Sequence item)."""
    uids = []
    for series in ds.get("PerformedSeriesSequence") or []:
        for keyword in (
            "ReferencedImageSequence",
            "ReferencedNonImageCompositeSOPInstanceSequence",
        ):
            uids += [
                str(r.ReferencedSOPInstanceUID)
                for r in series.get(keyword) or []
                if r.get("ReferencedSOPInstanceUID")
            ]
    return list(dict.fromkeys(uids))


def study_steps(session: Session, study_uids: Iterable[str], own_uid: str) -> list[Step]:
    """Every MPPS of these studies: by the Study Instance UID of its Scheduled Step
    Attributes, or (having none) linked to an item with that Study Instance UID;
    ``own_uid`` always.
    Ordered by PPS start, then creation (N-CREATE) order: not by delivery order."""
    uids = [u for u in study_uids if u]
    linked = (
        select(mpps_worklist_links.c.mpps_pk)
        .join(WorklistItem, WorklistItem.id == mpps_worklist_links.c.item_pk)
        .where(WorklistItem.study_instance_uid.in_(uids))
    )
    conditions = [MPPSTracking.sop_instance_uid == own_uid]
    if uids:
        conditions += [
            MPPSTracking.study_instance_uid.in_(uids),
            # linked: only an MPPS without a study UID of its own (one with another UID
            # made another study, whose images are not in this one)
            and_(MPPSTracking.study_instance_uid.is_(None), MPPSTracking.id.in_(linked)),
        ]
    steps = []
    for record in session.scalars(select(MPPSTracking).where(or_(*conditions))):
        final = record.status in ("COMPLETED", "DISCONTINUED")
        references = referenced_instances(decode_dataset(record.dataset)) if final else []
        steps.append(
            Step(
                record.sop_instance_uid,
                record.status,
                record.discontinuation_reason,
                record.start_datetime or "",
                tuple(references),
                record.version,
                record.id,
            )
        )
    return sorted(steps, key=lambda s: (s.start, s.pk))


def aggregate_status(statuses: Iterable[str]) -> str:
    """IN PROGRESS while any is; COMPLETED when all are final and one completed;
    DISCONTINUED when all are discontinued (PS3.4 F.1: both final states are terminal)."""
    found = set(statuses)
    if not found or "IN PROGRESS" in found or not found <= {"COMPLETED", "DISCONTINUED"}:
        return "IN PROGRESS"
    return "COMPLETED" if "COMPLETED" in found else "DISCONTINUED"


def expected_instances(steps: Iterable[Step]) -> list[str]:
    """The union of the instances every final step references, first seen first."""
    uids: list[str] = []
    for step in steps:
        if step.status in ("COMPLETED", "DISCONTINUED"):
            uids += step.references
    return list(dict.fromkeys(uids))


def signature(steps: Iterable[Step]) -> tuple[tuple[str, str, int], ...]:
    """What changes when any step of the study changes (to detect a concurrent change)."""
    return tuple(sorted((s.uid, s.status, s.version) for s in steps))
