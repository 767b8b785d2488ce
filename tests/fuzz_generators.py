"""Fuzz harness: seeded generators of hostile but encodable C-FIND, N-CREATE, N-SET and
N-GET requests (PS3.4 K.6, F.7)."""

from __future__ import annotations

import random
from collections.abc import Callable

from pydicom import Dataset
from pydicom.sequence import Sequence

from dicom_clients import worklist_query
from fuzz_wire import SEED, show
from worklist_mpps.client.messages import ScheduledStep, n_create

NASTY_TEXT = [
    "",
    "*",
    "?",
    "**?*",
    "%",
    "_",
    "\\",
    "A" * 65,
    "A" * 1025,
    "\x00",
    "a\x00b",
    "Ü",
    "日本^太郎",
    "\u202eevil",
    "'; DROP TABLE patients; --",
    "A\\B\\C",
    "=",
    "^^^^",
    "a=b=c=d",
    "-",
    "--",
    "20200101-",
    "2020AB01",
    "99999999",
    "00000000",
    "20201332",
    "١٩٦٨٠٨٢٢",
    "２０２６０１０１",
    "1.2.3",
    "1." * 100,
    "0." * 32,
    " ",
    "\t\n",
    "x" * 64,
]
NASTY_DATES = [
    "2020AB01",
    "20201301",
    "20200132",
    "2020-01-01",
    "-",
    "--",
    "2020.01.01",
    "20200101-20200102-20200103",
    "١٩٦٨٠٨٢٢",
    "20200101\\20200102",
    "*",
    "?",
    "19000101-",
    "99991231",
    "00000000",
    "2020",
]
NASTY_TIMES = [
    "25",
    "2400",
    "1260",
    "126061",
    "12:00:00",
    "1200-0800",
    "-",
    "ab",
    "1.5",
    "120000.1234567",
    "٠٨١٥",
    "*",
    "120000-",
]
LO_1MB = "L" * 1_000_000
VR_VALUES = {  # a wrong VR for a key, with a value pydicom can encode in it
    "SQ": lambda: Sequence([Dataset()]),
    "US": lambda: 65535,
    "UL": lambda: 2**32 - 1,
    "SS": lambda: -1,
    "FD": lambda: float("nan"),
    "OB": lambda: b"\x00\xff" * 8,
    "UN": lambda: b"\x01\x02",
    "AT": lambda: 0x00100010,
    "DA": lambda: "2020AB01",
    "TM": lambda: "2500",
    "UI": lambda: "1." * 100,
    "LO": lambda: "x" * 70,
    "PN": lambda: "a=b=c",
    "DS": lambda: "1e400",
    "IS": lambda: "99999999999",
}
FIND_TOP = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureCodeSequence",
    "ReferringPhysicianName",
    "PatientWeight",
    "ReferencedStudySequence",
    "PatientComments",
    "SpecificCharacterSet",
]
FIND_SPS = [
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledPerformingPhysicianName",
    "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepStatus",
    "ScheduledProcedureStepSequence",
    "PatientName",
]
CHARSETS = [
    "ISO_IR 999",
    ["", "ISO 2022 IR 87"],
    ["ISO 2022 IR 6", "ISO 2022 IR 87"],
    "ISO_IR 192",
    "ISO_IR 100",
    "GB18030",
    "ISO 2022 IR 149",
    ["ISO_IR 100", "ISO_IR 192"],
    "",
    "\\ISO 2022 IR 87",
]


def deep_sequence(depth: int) -> Sequence:
    seq = Sequence([Dataset()])
    for _ in range(depth):
        item = Dataset()
        item.ReferencedStudySequence = seq
        seq = Sequence([item])
    return seq


def set_key(ds: Dataset, keyword: str, rng: random.Random) -> str:
    """Give ``keyword`` a nasty value, sometimes under a wrong VR; a label."""
    try:
        return _set_key(ds, keyword, rng)
    except (ValueError, TypeError, OverflowError):  # pydicom refuses the value itself
        ds.add_new(tag_for(keyword), "LO", "REFUSED")
        return f"{keyword}='REFUSED'"


def tag_for(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(keyword)


def _set_key(ds: Dataset, keyword: str, rng: random.Random) -> str:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag, vr = tag_for_keyword(keyword), dictionary_VR(keyword)
    roll = rng.random()
    if keyword == "SpecificCharacterSet":
        value = rng.choice(CHARSETS)
        ds.SpecificCharacterSet = value
        return f"SpecificCharacterSet={value!r}"
    if roll < 0.3:
        wrong = rng.choice(sorted(VR_VALUES))
        value = VR_VALUES[wrong]()
        ds.add_new(tag, wrong, value)
        return f"{keyword} as {wrong} {str(value)[:24]!r}"
    if vr == "SQ":
        pick = rng.choice(["empty", "items", "deep", "text"])
        if pick == "empty":
            ds.add_new(tag, "SQ", Sequence())
        elif pick == "items":
            ds.add_new(tag, "SQ", Sequence([Dataset() for _ in range(rng.choice([2, 30]))]))
        elif pick == "deep":
            ds.add_new(tag, "SQ", deep_sequence(rng.choice([5, 40, 120])))
        else:
            item = Dataset()
            item.CodeValue = rng.choice(NASTY_TEXT)
            item.CodeMeaning = bytes(rng.randbytes(6))  # non-decodable raw text
            ds.add_new(tag, "SQ", Sequence([item]))
        return f"{keyword} {pick}"
    if vr == "DA":
        value = rng.choice(NASTY_DATES)
    elif vr == "TM":
        value = rng.choice(NASTY_TIMES)
    elif roll < 0.35:
        value = LO_1MB
    elif roll < 0.45:
        value = rng.randbytes(rng.choice([1, 7, 40]))  # raw, maybe non-decodable, bytes
    else:
        value = rng.choice(NASTY_TEXT)
    ds.add_new(tag, vr, value)
    return f"{keyword}={show(value if isinstance(value, str) else repr(value), 40)}"


def nasty_find(rng: random.Random) -> tuple[Dataset, str]:
    if rng.random() < 0.12:  # a code item key under another VR, on a query that matches
        ds = worklist_query(AccessionNumber="A10001")
        keyword = rng.choice(["CodeValue", "CodeMeaning", "CodingSchemeDesignator"])
        wrong = rng.choice(["SQ", "US", "FD", "AT", "SH"])
        item = Dataset()
        item.add_new(tag_for(keyword), wrong, VR_VALUES.get(wrong, lambda: "")())
        where = rng.choice(["RequestedProcedureCodeSequence", "ScheduledProtocolCodeSequence"])
        target = ds if where.startswith("Requested") else ds.ScheduledProcedureStepSequence[0]
        setattr(target, where, Sequence([item]))
        return ds, f"AccessionNumber=A10001; {where}>{keyword} as {wrong}"
    ds = worklist_query()
    labels = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.6:
            keyword = rng.choice(FIND_TOP)
            labels.append(set_key(ds, keyword, rng))
        else:
            sps = ds.ScheduledProcedureStepSequence[0]
            keyword = rng.choice(FIND_SPS)
            labels.append("SPS>" + set_key(sps, keyword, rng))
    if rng.random() < 0.1:
        ds.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
        labels.append("two SPS items")
    return ds, "; ".join(labels)


CREATE_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
    "ScheduledStepAttributesSequence",
    "PerformedSeriesSequence",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDiscontinuationReasonCodeSequence",
    "SpecificCharacterSet",
    "StudyID",
    "PatientComments",
    "ProcedureCodeSequence",
]


def unscheduled(uid_n: int) -> Dataset:
    return n_create(
        [ScheduledStep(f"2.25.{SEED}{uid_n:06d}9", accession_number=f"FZ{uid_n}")],
        modality="CT",
        station_ae_title="FUZZ",
        patient_name="Fuzz^Patient",
        patient_id=f"FZ{uid_n}",
    )


def nasty_create(rng: random.Random, new_uid: Callable[[], str]) -> tuple[Dataset, str, str | None]:
    uid = new_uid()
    ds = unscheduled(int(uid[-6:]))
    labels = []
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.15:
            keyword = rng.choice(CREATE_KEYS)
            if keyword in ds:
                delattr(ds, keyword)
            labels.append(f"without {keyword}")
        elif roll < 0.25:
            status = rng.choice(
                ["COMPLETED", "in progress", "", "IN PROGRESS\\COMPLETED", "X" * 100]
            )
            ds.PerformedProcedureStepStatus = status
            labels.append(f"status {status[:20]!r}")
        else:
            labels.append(set_key(ds, rng.choice(CREATE_KEYS), rng))
    pick = rng.random()
    if pick < 0.1:
        uid, note = None, "no UID (server assigns)"
    elif pick < 0.2:
        uid, note = "1." * 100, "a 200-character UID"
    elif pick < 0.25:
        uid, note = "not.a.uid", "an invalid UID"
    else:
        note = "a fresh UID"
    labels.append(note)
    return ds, "; ".join(labels), uid


SET_KEYS = [
    "PerformedProcedureStepStatus",
    "PerformedSeriesSequence",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDiscontinuationReasonCodeSequence",
    "PatientName",
    "PerformedProcedureStepStartDate",
    "SpecificCharacterSet",
    "PatientComments",
    "ProcedureCodeSequence",
    "CommentsOnThePerformedProcedureStep",
]


def nasty_set(rng: random.Random) -> tuple[Dataset, str]:
    ds = Dataset()
    status = rng.choice(["IN PROGRESS", "COMPLETED", "DISCONTINUED", "", "X", "completed"])
    ds.PerformedProcedureStepStatus = status
    labels = [f"status {status!r}"]
    if status == "COMPLETED" and rng.random() < 0.5:
        ds.PerformedProcedureStepEndDate = "20260101"
        ds.PerformedProcedureStepEndTime = "120000"
        item = Dataset()
        item.SeriesInstanceUID = "1.2.3.4"
        item.ReferencedImageSequence = Sequence()
        ds.PerformedSeriesSequence = Sequence([item])
        labels.append("complete final-state attributes")
    for _ in range(rng.randint(1, 3)):
        labels.append(set_key(ds, rng.choice(SET_KEYS), rng))
    return ds, "; ".join(labels)


def nasty_get(rng: random.Random) -> tuple[list, str]:
    tags = rng.choice(
        [
            [],
            [0x00400252],
            [0x00400252, 0x00100010, 0x00091010],
            [0x7FE00010],
            [0xFFFFFFFF],
            [0x00400340, 0x00400340],
            [0x00400270, 0x00000000],
        ]
    )
    return tags, f"N-GET of {[f'{t:08X}' for t in tags]}"
