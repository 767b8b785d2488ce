"""Build MPPS N-CREATE and N-SET attribute lists (PS3.4 Table F.7.2-1, IHE RAD-6/7).

Everything an N-SET may set later is created at N-CREATE, empty where unknown
(F.7.2.1 Note 5: only attributes created at N-CREATE may be set).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.sequence import Sequence

# Type 2 attributes the N-CREATE carries empty so a later N-SET may fill them.
_SETTABLE_EMPTY = (
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureTypeDescription",
)
_SETTABLE_EMPTY_SEQUENCES = (
    "ProcedureCodeSequence",
    "PerformedProtocolCodeSequence",
    "PerformedSeriesSequence",
    "PerformedProcedureStepDiscontinuationReasonCodeSequence",
)


@dataclass
class Code:
    value: str
    scheme: str
    meaning: str

    def item(self) -> Dataset:
        ds = Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning
        return ds


# CID 9300 Procedure Discontinuation Reasons (DCM), the ones sites use.
DISCONTINUATION_REASONS = {
    "110500": "Doctor canceled procedure",
    "110501": "Equipment failure",
    "110502": "Incorrect procedure ordered",
    "110503": "Patient allergic to media/contrast",
    "110504": "Patient died",
    "110505": "Patient refused to continue procedure",
    "110506": "Patient taken for treatment or surgery",
    "110507": "Patient did not arrive",
    "110508": "Patient pregnant",
    "110509": "Change of procedure for correct charging",
    "110510": "Duplicate order",
    "110511": "Nursing unit cancel",
    "110512": "Incorrect side ordered",
    "110513": "Discontinued for unspecified reason",
    "110514": "Incorrect worklist entry selected",
    "110515": "Patient condition prevented continuing",
    "110516": "Equipment change",
}


def discontinuation_reason(code: str) -> Code:
    if code not in DISCONTINUATION_REASONS:
        raise ValueError(
            f"unknown discontinuation reason {code!r} (CID 9300: "
            f"{', '.join(sorted(DISCONTINUATION_REASONS))})"
        )
    return Code(code, "DCM", DISCONTINUATION_REASONS[code])


@dataclass
class Instance:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class Series:
    """One Performed Series Sequence item."""

    series_instance_uid: str
    instances: list[Instance] = field(default_factory=list)
    protocol_name: str = ""
    series_description: str = ""
    retrieve_ae_title: str = ""
    operators_name: str = ""
    performing_physician_name: str = ""

    def item(self) -> Dataset:
        ds = Dataset()
        ds.PerformingPhysicianName = self.performing_physician_name
        ds.ProtocolName = self.protocol_name
        ds.OperatorsName = self.operators_name
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SeriesDescription = self.series_description
        ds.RetrieveAETitle = self.retrieve_ae_title
        refs = []
        for inst in self.instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID = inst.sop_class_uid
            ref.ReferencedSOPInstanceUID = inst.sop_instance_uid
            refs.append(ref)
        ds.ReferencedImageSequence = Sequence(refs)
        ds.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
        return ds


@dataclass
class ScheduledStep:
    """One Scheduled Step Attributes Sequence item (empty values: unscheduled)."""

    study_instance_uid: str
    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    sps_id: str = ""
    sps_description: str = ""
    protocol_codes: list[Code] = field(default_factory=list)

    def item(self) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.ReferencedStudySequence = Sequence()
        ds.AccessionNumber = self.accession_number
        ds.RequestedProcedureID = self.requested_procedure_id
        ds.RequestedProcedureDescription = self.requested_procedure_description
        ds.ScheduledProcedureStepID = self.sps_id
        ds.ScheduledProcedureStepDescription = self.sps_description
        ds.ScheduledProtocolCodeSequence = Sequence([c.item() for c in self.protocol_codes])
        return ds


def _date_time(when: dt.datetime) -> tuple[str, str]:
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


def n_create(
    steps: list[ScheduledStep],
    *,
    modality: str,
    station_ae_title: str,
    patient_name: str = "",
    patient_id: str = "",
    birth_date: str = "",
    sex: str = "",
    pps_id: str | None = None,
    station_name: str = "",
    location: str = "",
    description: str = "",
    start: dt.datetime | None = None,
    status: str = "IN PROGRESS",
    charset: str | None = "ISO_IR 192",
) -> Dataset:
    """The N-CREATE attribute list of a procedure step that has started (RAD-6)."""
    start = start or dt.datetime.now()
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.ScheduledStepAttributesSequence = Sequence([s.item() for s in steps])
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = pps_id or start.strftime("PPS%y%m%d%H%M%S")[:16]
    ds.PerformedStationAETitle = station_ae_title
    ds.PerformedStationName = station_name
    ds.PerformedLocation = location
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = _date_time(start)
    ds.PerformedProcedureStepStatus = status
    ds.Modality = modality
    ds.StudyID = ""
    for keyword in _SETTABLE_EMPTY:
        setattr(ds, keyword, "")
    ds.PerformedProcedureStepDescription = description
    for keyword in _SETTABLE_EMPTY_SEQUENCES:
        setattr(ds, keyword, Sequence())
    return ds


def n_set_progress(series: list[Series]) -> Dataset:
    """An N-SET that reports the series acquired so far, still IN PROGRESS."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedSeriesSequence = Sequence([s.item() for s in series])
    return ds


def _final(status: str, series: list[Series] | None, end: dt.datetime | None) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = _date_time(
        end or dt.datetime.now()
    )
    if series is not None:  # None: keep the series the SCP already has
        ds.PerformedSeriesSequence = Sequence([s.item() for s in series])
    return ds


def n_set_completed(series: list[Series] | None, end: dt.datetime | None = None) -> Dataset:
    """The final N-SET of a completed step (RAD-7): end time and every series.

    A sequence in an N-SET replaces the stored one whole (F.7.2.2.2), so the
    final list of all series is sent; None leaves out the sequence.
    """
    return _final("COMPLETED", series, end)


def n_set_discontinued(
    series: list[Series] | None = None, reason: Code | None = None, end: dt.datetime | None = None
) -> Dataset:
    """The final N-SET of a discontinued step, with its reason (CID 9300)."""
    ds = _final("DISCONTINUED", series, end)
    ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence(
        [reason.item()] if reason else []
    )
    return ds
