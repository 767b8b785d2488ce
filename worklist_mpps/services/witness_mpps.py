"""An emulated MPPS made from a study in Orthanc, through the MPPS path itself
(services/mpps.py): N-CREATE with status IN PROGRESS, then N-SET COMPLETED with the
Performed Series Sequence (PS3.4 F.7.2.1, F.7.2.2, Table F.7.2-1), marked ``emulated``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import select

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import MPPSTracking, WorklistItem
from worklist_mpps.services import mpps
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.links import LinkError, link_mpps

PPS_ID = "EMULATED"
# SOP classes that are not images: Referenced Non-Image Composite SOP Instance Sequence
# (Table F.7.2-1): structured reports, key objects (…88.x), presentation states (…11.x),
# encapsulated documents (…104.x), raw data (…66), RT plans/doses/structures (…481.2-9)
_NON_IMAGE = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.66",
)


@dataclass
class SeriesContent:
    """One series of the study: its UIDs and (SOP Class UID, SOP Instance UID) pairs."""

    series_instance_uid: str
    modality: str = ""
    description: str = ""
    protocol_name: str = ""
    instances: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StudyContent:
    """What Orthanc holds of a study (read by delivery/orthanc_witness.py)."""

    orthanc_id: str
    study_instance_uid: str
    accession_number: str = ""
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    description: str = ""
    series: list[SeriesContent] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return list(dict.fromkeys(s.modality for s in self.series if s.modality))


def _is_image(sop_class: str) -> bool:
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.481."):
        return sop_class == "1.2.840.10008.5.1.4.1.1.481.1"  # RT Image
    return not sop_class.startswith(_NON_IMAGE)


def _start(content: StudyContent, now: dt.datetime) -> tuple[str, str]:
    """PPS start: the study's date and time when Orthanc has them, else now."""
    date = content.study_date if len(content.study_date or "") == 8 else ""
    time = (content.study_time or "").split(".")[0][:6]
    if date and time.isdigit() and len(time) in (2, 4, 6):
        return date, time
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def create_attributes(
    items: Sequence[WorklistItem], content: StudyContent, now: dt.datetime
) -> Dataset:
    """The N-CREATE of the emulated step: one Scheduled Step Attributes item per worklist
    item (the group case), naming its Study Instance UID, Accession Number, Requested
    Procedure ID and Scheduled Procedure Step ID (Table F.7.2-1)."""
    first = items[0]
    patient = first.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ssas = []
    for item in items:
        s = Dataset()
        s.StudyInstanceUID = item.study_instance_uid
        s.ReferencedStudySequence = DicomSequence()
        s.AccessionNumber = item.accession_number or ""
        s.RequestedProcedureID = item.requested_procedure_id or ""
        s.RequestedProcedureDescription = item.requested_procedure_description or ""
        s.ScheduledProcedureStepID = item.sps_id or ""
        s.ScheduledProcedureStepDescription = item.sps_description or ""
        s.ScheduledProtocolCodeSequence = DicomSequence()
        ssas.append(s)
    ds.ScheduledStepAttributesSequence = DicomSequence(ssas)
    ds.PatientName = patient.patient_name or content.patient_name or ""
    ds.PatientID = patient.patient_id or content.patient_id or ""
    ds.PatientBirthDate = patient.birth_date or ""
    ds.PatientSex = patient.sex or ""
    ds.ReferencedPatientSequence = DicomSequence()
    ds.PerformedProcedureStepID = PPS_ID
    ds.PerformedStationAETitle = first.scheduled_station_ae_title or "ORTHANC"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = _start(content, now)
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = (
        content.description or first.requested_procedure_description or ""
    )[:64]
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = DicomSequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = (content.modalities or [first.modality or "OT"])[0][:16]
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = DicomSequence()
    ds.PerformedSeriesSequence = DicomSequence()
    ds.CommentsOnThePerformedProcedureStep = (
        f"Emulated by worklist-mpps from Orthanc study {content.orthanc_id}"
    )
    return ds


def completed_attributes(content: StudyContent, now: dt.datetime) -> Dataset:
    """The N-SET COMPLETED: end date/time and the Performed Series Sequence with every
    image and non-image the study holds (Table F.7.2-1 final state)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = now.strftime("%Y%m%d")
    ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
    series_items = []
    for series in content.series:
        s = Dataset()
        s.SeriesInstanceUID = series.series_instance_uid
        s.SeriesDescription = series.description[:64]
        s.ProtocolName = (series.protocol_name or series.description or PPS_ID)[:64]
        s.PerformingPhysicianName = ""
        s.OperatorsName = ""
        s.RetrieveAETitle = ""
        images: list[Dataset] = []
        others: list[Dataset] = []
        for sop_class, sop_instance in series.instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = sop_instance
            (images if _is_image(sop_class) else others).append(ref)
        s.ReferencedImageSequence = DicomSequence(images)
        s.ReferencedNonImageCompositeSOPInstanceSequence = DicomSequence(others)
        series_items.append(s)
    ds.PerformedSeriesSequence = DicomSequence(series_items)
    return ds


def complete_item(
    db: Database,
    actor: Actor,
    item_ids: Sequence[int],
    content: StudyContent,
    targets: Sequence[str] = (),
    uid_prefix: str = "",
) -> str:
    """Create and complete an emulated MPPS for these items (the first one is the
    study's own); an emulated step left IN PROGRESS by a crash is completed instead. The
    MPPS UID."""
    now = dt.datetime.now()
    with db.read() as session:
        items = [i for i in (session.get(WorklistItem, n) for n in item_ids) if i is not None]
        if not items:
            raise LinkError(f"no worklist item {item_ids[0]}", not_found=True)
        resumed = session.scalar(
            select(MPPSTracking.sop_instance_uid).where(
                MPPSTracking.worklist_items.any(WorklistItem.id == items[0].id),
                MPPSTracking.emulated.is_(True),
                MPPSTracking.status == "IN PROGRESS",
            )
        )
        attributes = None if resumed else create_attributes(items, content, now)
    if resumed:
        uid = resumed
    else:
        assert attributes is not None
        uid = mpps.create(
            db,
            attributes,
            calling_ae=None,
            uid_prefix=uid_prefix,
            targets=targets,
            actor=actor,
            emulated=True,
        ).uid
        with db.read() as session:
            record = session.scalars(
                select(MPPSTracking).where(MPPSTracking.sop_instance_uid == uid)
            ).one()
            linked = {i.id for i in record.worklist_items}
        if items[0].id not in linked and not linked:
            link_mpps(db, actor, uid, items[0].id, targets)  # its attributes found no item
    mpps.update(db, uid, completed_attributes(content, now), targets=targets, actor=actor)
    return uid
