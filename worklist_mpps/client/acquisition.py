"""Read the DICOM files of an acquisition into Performed Series Sequence items."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from worklist_mpps.client.messages import Instance, Series
from worklist_mpps.client.scu import ImagesError

_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesDescription",
    "ProtocolName",
    "OperatorsName",
    "PerformingPhysicianName",
]


def series_from_files(directory: str | Path, study_uid: str | None = None) -> list[Series]:
    """One Series per Series Instance UID found under ``directory`` (recursively).

    Files that are not DICOM are skipped; with ``study_uid`` only that study's
    instances count. Each SOP Instance is listed once.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ImagesError(f"--images {directory}: not a directory")
    by_series: dict[str, Series] = {}
    seen: set[str] = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        sop_uid, series_uid = ds.get("SOPInstanceUID"), ds.get("SeriesInstanceUID")
        if not sop_uid or not series_uid or not ds.get("SOPClassUID"):
            continue
        if study_uid and ds.get("StudyInstanceUID") != study_uid:
            continue
        if sop_uid in seen:
            continue
        seen.add(sop_uid)
        series = by_series.setdefault(
            series_uid,
            Series(
                str(series_uid),
                protocol_name=str(ds.get("ProtocolName") or ""),
                series_description=str(ds.get("SeriesDescription") or ""),
                operators_name=str(ds.get("OperatorsName") or ""),
                performing_physician_name=str(ds.get("PerformingPhysicianName") or ""),
            ),
        )
        series.instances.append(Instance(str(ds.SOPClassUID), str(sop_uid)))
    if not by_series:
        where = f" of study {study_uid}" if study_uid else ""
        raise ImagesError(f"--images {directory}: no DICOM instances{where} found")
    return list(by_series.values())
