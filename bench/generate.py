"""Realistic worklist data for the benchmark, loaded into our database and as .wl files.

A department schedules PER_DAY steps a day on STATIONS; N items are N / PER_DAY
days of that, centred on today (history and the coming days), so a query for
today returns the same amount of work at every N and the figures show how the
cost grows with the size of the table alone. Items carry the IHE Scheduled
Workflow attributes, accented and non-Latin names included.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import insert

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import Patient, WorklistItem, utcnow
from worklist_mpps.services.schedule_values import FOLDED, normalize_item, normalize_patient

PER_DAY = 200
STATIONS = {  # station AE title -> modality (20 stations)
    **{f"CT0{i}": "CT" for i in range(1, 5)},
    **{f"MR0{i}": "MR" for i in range(1, 4)},
    **{f"US0{i}": "US" for i in range(1, 5)},
    **{f"CR0{i}": "CR" for i in range(1, 4)},
    **{f"DX0{i}": "DX" for i in range(1, 4)},
    "MG01": "MG",
    "XA01": "XA",
    "NM01": "NM",
}
FAMILY = [
    "Müller",
    "Sánchez",
    "Lefèvre",
    "Øster",
    "Dvořák",
    "Nuñez",
    "Björk",
    "Smith",
    "O'Brien",
    "Nguyen",
    "Kowalski",
    "Rossi",
    "Schmidt",
    "García",
    "Martin",
    "Yılmaz",
    "Papadopoulos",
    "Ivanova",
    "Haddad",
    "Novak",
    "Иванов",
    "山田",
    "Παπαδόπουλος",
]
GIVEN = [
    "Hans",
    "María",
    "Zoé",
    "Søren",
    "Antonín",
    "José",
    "Åsa",
    "John",
    "Liam",
    "Anh",
    "Ewa",
    "Giulia",
    "Jürgen",
    "Lucía",
    "Élodie",
    "Ayşe",
    "Giorgos",
    "Olga",
    "Karim",
    "Иван",
    "太郎",
    "Γιώργος",
]
PROCEDURES = {
    "CT": ["CT Thorax", "CT Abdomen", "CT Head", "CT Angio"],
    "MR": ["MR Knee", "MR Brain"],
    "US": ["US Abdomen", "US Thyroid"],
    "CR": ["Chest PA"],
    "DX": ["Hand 2 views", "Ankle"],
    "MG": ["Mammography screening"],
    "XA": ["Coronary angiography"],
    "NM": ["Bone scan"],
}


def days_for(n: int) -> list[int]:
    """Day offsets holding n items: about 40 % history, 60 % future."""
    count = max(1, -(-n // PER_DAY))
    first = -int(count * 0.4)
    return list(range(first, first + count))


def make_items(n: int, today: dt.date, seed: int = 7) -> list[tuple[dict, dict]]:
    rng = random.Random(seed)
    stations = list(STATIONS)
    pairs = []
    patients = max(1, n * 3 // 4)
    for i in range(n):
        day = days_for(n)[i // PER_DAY]
        station = stations[i % len(stations)]
        modality = STATIONS[station]
        minute = 7 * 60 + 30 + (i % PER_DAY // len(stations)) * 60 // 2 + rng.randrange(0, 25)
        pid = rng.randrange(patients)
        description = rng.choice(PROCEDURES[modality])
        patient = {
            "patient_id": f"P{pid:07d}",
            "patient_name": f"{FAMILY[pid % len(FAMILY)]}^{GIVEN[pid % len(GIVEN)]}",
            "birth_date": f"{1930 + pid % 90}{1 + pid % 12:02d}{1 + pid % 28:02d}",
            "sex": "MFO"[pid % 3 if pid % 50 else 2],
        }
        item = {
            "accession_number": f"B{i:08d}",
            "sps_id": f"S{i:08d}",
            "requested_procedure_id": f"RP{i:08d}",
            "requested_procedure_description": description,
            "requested_procedure_priority": "STAT" if i % 97 == 0 else "ROUTINE",
            "requested_procedure_codes": [
                {"value": f"{30000 + i % 40}-{i % 9}", "scheme": "LN", "meaning": description}
            ],
            "referring_physician_name": f"{FAMILY[i % 7]}^{GIVEN[i % 5]}^^Dr.",
            "sps_description": description,
            "modality": modality,
            "scheduled_station_ae_title": station,
            "scheduled_station_name": station + "-ROOM",
            "sps_location": "Radiology",
            "sps_start_date": (today + dt.timedelta(days=day)).strftime("%Y%m%d"),
            "sps_start_time": f"{min(minute // 60, 23):02d}{minute % 60:02d}00",
            "scheduled_performing_physician_name": f"{FAMILY[(i + 3) % 9]}^{GIVEN[i % 4]}",
            "scheduled_protocol_codes": [
                {"value": f"P-{modality}-{i % 5}", "scheme": "99LOCAL", "meaning": description}
            ],
        }
        pairs.append((patient, item))
    return pairs


def load(db: Database, pairs: list[tuple[dict, dict]], batch: int = 5000) -> None:
    """Bulk insert, normalized and derived as services/schedule_values.py does."""
    now = utcnow()
    patient_rows: dict[str, dict] = {}
    for patient, _ in pairs:
        if patient["patient_id"] not in patient_rows:
            row = normalize_patient(patient)
            row["patient_name_folded"] = fold(row["patient_name"])
            patient_rows[row["patient_id"]] = {**row, "created_at": now, "updated_at": now}
    with db.write() as session:
        rows = list(patient_rows.values())
        for start in range(0, len(rows), batch):
            session.execute(insert(Patient), rows[start : start + batch])
        ids = dict(
            session.execute(
                Patient.__table__.select().with_only_columns(Patient.patient_id, Patient.id)
            ).all()
        )
        items = []
        for patient, item in pairs:
            row = normalize_item(item)
            for name, folded in FOLDED.items():
                if name in row:
                    row[folded] = fold(row[name])
            row.update(
                patient_pk=ids[patient["patient_id"]],
                sps_status="SCHEDULED",
                study_instance_uid=generate_uid(prefix=None),
                created_at=now,
                updated_at=now,
                sps_start=row["sps_start_date"] + row["sps_start_time"],
            )
            items.append(row)
        for start in range(0, len(items), batch):
            session.execute(insert(WorklistItem), items[start : start + batch])


def fold(value: str | None) -> str | None:
    from worklist_mpps.services.matching import fold_pn

    return fold_pn(value)


def export_wl(pairs: list[tuple[dict, dict]], folder: Path) -> None:
    """The same items as DCMTK worklist files (wlmscpfs's data folder, AE WORKLISTS)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    for patient, item in pairs:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID = patient["patient_name"], patient["patient_id"]
        ds.PatientBirthDate, ds.PatientSex = patient["birth_date"], patient["sex"]
        ds.AccessionNumber = item["accession_number"]
        ds.RequestedProcedureID = item["requested_procedure_id"]
        ds.RequestedProcedureDescription = item["requested_procedure_description"]
        ds.RequestedProcedurePriority = item["requested_procedure_priority"]
        ds.ReferringPhysicianName = item["referring_physician_name"]
        ds.StudyInstanceUID = generate_uid(prefix=None)
        sps = Dataset()
        sps.ScheduledStationAETitle = item["scheduled_station_ae_title"]
        sps.ScheduledStationName = item["scheduled_station_name"]
        sps.ScheduledProcedureStepStartDate = item["sps_start_date"]
        sps.ScheduledProcedureStepStartTime = item["sps_start_time"]
        sps.Modality = item["modality"]
        sps.ScheduledPerformingPhysicianName = item["scheduled_performing_physician_name"]
        sps.ScheduledProcedureStepDescription = item["sps_description"]
        sps.ScheduledProcedureStepID = item["sps_id"]
        sps.ScheduledProcedureStepLocation = item["sps_location"]
        sps.ScheduledProcedureStepStatus = "SCHEDULED"
        ds.ScheduledProcedureStepSequence = Sequence([sps])
        ds.save_as(folder / f"{item['accession_number']}.wl", enforce_file_format=False)
