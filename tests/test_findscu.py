"""End to end: DCMTK findscu against a live ``worklist-mpps serve`` (Modality Worklist C-FIND).

One server per module, loaded from tests/data/e2e_worklist.yaml. findscu writes each
response identifier to a file (-X), which is read back with pydicom.

Over 400 lines: all sections query one module server through one E2E helper.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.tag import Tag

from conftest import LiveServer, module_server, require_tool

DATA = Path(__file__).resolve().parent / "data" / "e2e_worklist.yaml"
FINDSCU_TIMEOUT = 30
SPS = "(0040,0100)[0]."
UTF8 = "(0008,0005)=ISO_IR 192"
LATIN1 = "(0008,0005)=ISO_IR 100"
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
SPECIFIC_CHARSET = Tag(0x0008, 0x0005)
SPS_SEQUENCE = Tag(0x0040, 0x0100)

pytestmark = [pytest.mark.dcmtk, pytest.mark.dimse]


@dataclass(frozen=True)
class Item:
    accession: str
    patient_id: str
    name: str
    modality: str
    station: str
    day: int
    time: str  # HHMMSS as stored


# Mirrors tests/data/e2e_worklist.yaml.
ITEMS = {
    i.accession: i
    for i in [
        Item("A01", "P01", "Smith^John", "CT", "CT01", -1, "110000"),
        Item("A02", "P02", "Müller^Hans", "CT", "CT01", 0, "080000"),
        Item("A03", "P03", "MÜLLER^Greta", "MR", "MR01", 0, "103000"),
        Item("A04", "P04", "Dvořák^Antonín", "US", "US01", 0, "150000"),
        Item("A05", "P05", "山田^太郎", "CT", "CT02", 0, "120000"),
        Item("A06", "P06", "Mueller^Karl", "MR", "MR01", 1, "090000"),
        Item("A07", "P01", "Smith^John", "CT", "CT02", 1, "110000"),
        Item("A08", "P08", "Jones^Mary", "US", "US01", 1, "140000"),
        Item("A09", "P04", "Dvořák^Antonín", "CT", "CT01", 2, "110000"),
        Item("A10", "P10", "Brown^Alice", "MR", "MR01", 2, "160000"),
        Item("A11", "P11", "Taylor^Tom", "US", "US01", -1, "170000"),
        Item("A12", "P12", "Lee^Kim", "CT", "CT01", 1, "120000"),
    ]
}


@dataclass
class E2E:
    server: LiveServer
    today: dt.date
    outdir: Path
    _calls: Iterator[int]

    def date(self, offset: int) -> str:
        return (self.today + dt.timedelta(days=offset)).strftime("%Y%m%d")

    def run(self, *keys: str | bytes) -> tuple[list[Dataset], str]:
        """Run findscu -W -v with these -k keys: (response identifiers in order, its log).

        findscu exits 0 even when the C-FIND ends in a failure status, so the
        final status is read from its verbose log.
        """
        out = self.outdir / f"q{next(self._calls):03d}"
        out.mkdir()
        cmd: list[str | bytes] = [
            "findscu",
            "-v",
            "-W",
            "-aec",
            "WORKLISTS",
            "-X",
            "-od",
            str(out),
            "127.0.0.1",
            str(self.server.port),
        ]
        for key in keys:
            cmd += ["-k", key]
        proc = subprocess.run(cmd, capture_output=True, timeout=FINDSCU_TIMEOUT)
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        assert proc.returncode == 0, (
            f"findscu exited {proc.returncode}\n{text}\nserver log:\n{self.server.log()}"
        )
        return [pydicom.dcmread(f) for f in sorted(out.glob("rsp*.dcm"))], text

    def find(self, *keys: str | bytes) -> list[Dataset]:
        """The response identifiers of a C-FIND that must end in Success."""
        responses, text = self.run(*keys)
        assert "Received Final Find Response (Success)" in text, text
        return responses


@pytest.fixture(scope="module")
def e2e(tmp_path_factory) -> Iterator[E2E]:
    require_tool("findscu")
    today = dt.date.today()  # the day the YAML 'day' offsets are resolved against
    with module_server(tmp_path_factory, "findscu", "--sample-file", str(DATA)) as server:
        outdir = server.workdir / "responses"
        outdir.mkdir()
        yield E2E(server, today, outdir, itertools.count(1))


def accessions(responses: list[Dataset]) -> list[str]:
    return [r.AccessionNumber for r in responses]


def sps(ds: Dataset) -> Dataset:
    seq = ds.ScheduledProcedureStepSequence
    assert len(seq) == 1
    return seq[0]


def raw_value(ds: Dataset, tag: int) -> bytes:
    """The element's bytes as read from the file; call before accessing the element."""
    elem = ds.get_item(tag)
    assert isinstance(elem.value, bytes), "element was already decoded"
    return elem.value.rstrip(b" ")


def top_tags(ds: Dataset) -> set[Tag]:
    return {elem.tag for elem in ds if elem.tag.group != 0x0002}


STANDARD_KEYS = (
    "AccessionNumber=",
    "PatientName=",
    "PatientID=",
    SPS + "Modality=",
    SPS + "ScheduledStationAETitle=",
    SPS + "ScheduledProcedureStepStartDate=",
    SPS + "ScheduledProcedureStepStartTime=",
    SPS + "ScheduledProcedureStepStatus=",
)


def check_values(e2e: E2E, responses: list[Dataset]) -> None:
    """Every response (of a STANDARD_KEYS query) carries the values of its item."""
    for ds in responses:
        item = ITEMS[ds.AccessionNumber]
        assert str(ds.PatientName) == item.name
        assert ds.PatientID == item.patient_id
        step = sps(ds)
        assert step.Modality == item.modality
        assert step.ScheduledStationAETitle == item.station
        assert step.ScheduledProcedureStepStartDate == e2e.date(item.day)
        assert step.ScheduledProcedureStepStartTime == item.time
        assert step.ScheduledProcedureStepStatus == "SCHEDULED"


# --- universal, sequence keys, dates ----------------------------------------------------


def test_universal_query_returns_all_scheduled_items(e2e):
    responses = e2e.find(*STANDARD_KEYS)
    assert len(responses) == 12
    assert sorted(accessions(responses)) == sorted(ITEMS)
    check_values(e2e, responses)


def test_empty_identifier_sequence_returns_whole_sps_item(e2e):
    responses = e2e.find("AccessionNumber=", "(0040,0100)")
    assert sorted(accessions(responses)) == sorted(ITEMS)
    for ds in responses:
        item = ITEMS[ds.AccessionNumber]
        step = sps(ds)
        assert step.Modality == item.modality
        assert step.ScheduledStationAETitle == item.station
        assert step.ScheduledProcedureStepID == "S" + item.accession[1:]
        assert step.ScheduledProcedureStepStartDate == e2e.date(item.day)


@pytest.mark.parametrize(
    "modality, expected",
    [
        ("CT", {"A01", "A02", "A05", "A07", "A09", "A12"}),
        ("MR", {"A03", "A06", "A10"}),
        ("US", {"A04", "A08", "A11"}),
        ("XA", set()),
    ],
)
def test_by_modality(e2e, modality, expected):
    keys = [k for k in STANDARD_KEYS if "Modality" not in k] + [SPS + f"Modality={modality}"]
    responses = e2e.find(*keys)
    assert len(responses) == len(expected)
    assert set(accessions(responses)) == expected
    assert {sps(r).Modality for r in responses} <= {modality}
    check_values(e2e, responses)


def _date_keys(value: str) -> list[str]:
    return [k for k in STANDARD_KEYS if "StartDate" not in k] + [
        SPS + f"ScheduledProcedureStepStartDate={value}"
    ]


def test_by_date_range_today_tomorrow(e2e):
    responses = e2e.find(*_date_keys(f"{e2e.date(0)}-{e2e.date(1)}"))
    expected = {a for a, i in ITEMS.items() if i.day in (0, 1)}
    assert expected == {"A02", "A03", "A04", "A05", "A06", "A07", "A08", "A12"}
    assert len(responses) == 8
    assert set(accessions(responses)) == expected
    assert {sps(r).ScheduledProcedureStepStartDate for r in responses} == {e2e.date(0), e2e.date(1)}
    check_values(e2e, responses)


def test_by_single_date_today(e2e):
    responses = e2e.find(*_date_keys(e2e.date(0)))
    assert len(responses) == 4
    assert set(accessions(responses)) == {"A02", "A03", "A04", "A05"}
    assert {sps(r).ScheduledProcedureStepStartDate for r in responses} == {e2e.date(0)}
    check_values(e2e, responses)


def test_by_open_date_range_from_day_after_tomorrow(e2e):
    responses = e2e.find(*_date_keys(f"{e2e.date(2)}-"))
    assert sorted(accessions(responses)) == ["A09", "A10"]
    check_values(e2e, responses)


def test_combined_date_and_time_range(e2e):
    """Date today..tomorrow with time 10:00-12:00 is today 10:00 up to tomorrow 12:00."""
    keys = [k for k in STANDARD_KEYS if "StartDate" not in k and "StartTime" not in k] + [
        SPS + f"ScheduledProcedureStepStartDate={e2e.date(0)}-{e2e.date(1)}",
        SPS + "ScheduledProcedureStepStartTime=1000-1200",
    ]
    responses = e2e.find(*keys)
    got = set(accessions(responses))
    # A04 (today 15:00) and A06 (tomorrow 09:00) are only in the combined range;
    # per-day time filtering would return {A03, A05, A07, A12}.
    assert got == {"A03", "A04", "A05", "A06", "A07", "A12"}
    assert len(responses) == 6
    assert "A02" not in got  # today 08:00
    assert "A08" not in got  # tomorrow 14:00
    check_values(e2e, responses)


def test_time_range_alone_filters_every_day(e2e):
    keys = [k for k in STANDARD_KEYS if "StartTime" not in k] + [
        SPS + "ScheduledProcedureStepStartTime=1000-1200"
    ]
    responses = e2e.find(*keys)
    assert set(accessions(responses)) == {"A01", "A03", "A05", "A07", "A09", "A12"}
    check_values(e2e, responses)


# --- string keys ------------------------------------------------------------------------


def test_by_accession_number(e2e):
    keys = [k for k in STANDARD_KEYS if not k.startswith("AccessionNumber")] + [
        "AccessionNumber=A07"
    ]
    responses = e2e.find(*keys)
    assert len(responses) == 1
    ds = responses[0]
    assert ds.AccessionNumber == "A07"
    assert str(ds.PatientName) == "Smith^John"
    assert sps(ds).ScheduledStationAETitle == "CT02"
    assert sps(ds).ScheduledProcedureStepStartDate == e2e.date(1)
    assert sps(ds).ScheduledProcedureStepStartTime == "110000"
    check_values(e2e, responses)


def test_by_accession_number_no_match(e2e):
    assert e2e.find("AccessionNumber=A99", "PatientName=") == []


def test_by_accession_number_wildcard(e2e):
    responses = e2e.find("AccessionNumber=A1?", "PatientName=")
    assert len(responses) == 3
    assert {(r.AccessionNumber, str(r.PatientName)) for r in responses} == {
        ("A10", "Brown^Alice"),
        ("A11", "Taylor^Tom"),
        ("A12", "Lee^Kim"),
    }


def test_sequence_keys_and_top_keys_combine(e2e):
    keys = [k for k in STANDARD_KEYS if "Modality" not in k and "StartDate" not in k] + [
        SPS + "Modality=CT",
        SPS + f"ScheduledProcedureStepStartDate={e2e.date(0)}",
    ]
    responses = e2e.find(*keys)
    assert len(responses) == 2
    assert {(r.AccessionNumber, str(r.PatientName)) for r in responses} == {
        ("A02", "Müller^Hans"),
        ("A05", "山田^太郎"),
    }
    check_values(e2e, responses)


def test_by_station_ae_title(e2e):
    keys = [k for k in STANDARD_KEYS if "ScheduledStationAETitle" not in k] + [
        SPS + "ScheduledStationAETitle=CT01"
    ]
    responses = e2e.find(*keys)
    assert len(responses) == 4
    assert set(accessions(responses)) == {"A01", "A02", "A09", "A12"}
    assert {sps(r).ScheduledStationAETitle for r in responses} == {"CT01"}
    check_values(e2e, responses)


def test_patient_name_wildcard_utf8_case_insensitive(e2e):
    responses = e2e.find(UTF8, "PatientName=müller*", "AccessionNumber=", "PatientID=")
    assert len(responses) == 2
    assert {(r.AccessionNumber, str(r.PatientName)) for r in responses} == {
        ("A02", "Müller^Hans"),
        ("A03", "MÜLLER^Greta"),
    }
    for ds in responses:
        assert ds.SpecificCharacterSet == "ISO_IR 192"  # the query's set can encode it


def test_patient_name_wildcard_latin1_bytes(e2e):
    responses = e2e.find(LATIN1, b"PatientName=M\xfcller*", "AccessionNumber=")
    assert len(responses) == 2
    # Latin-1 bytes on the wire (read before pydicom decodes the element)
    assert {raw_value(r, 0x00100010) for r in responses} == {b"M\xfcller^Hans", b"M\xdcLLER^Greta"}
    assert {(r.AccessionNumber, str(r.PatientName)) for r in responses} == {
        ("A02", "Müller^Hans"),
        ("A03", "MÜLLER^Greta"),
    }
    for ds in responses:
        assert ds.SpecificCharacterSet == "ISO_IR 100"


def test_patient_name_mueller_is_not_mueller_umlaut(e2e):
    responses = e2e.find("PatientName=MUELLER*", "AccessionNumber=")
    assert len(responses) == 1
    assert responses[0].AccessionNumber == "A06"
    assert str(responses[0].PatientName) == "Mueller^Karl"
    assert "SpecificCharacterSet" not in responses[0]  # all ASCII, no set asked for


def test_patient_name_single_value_case_insensitive(e2e):
    responses = e2e.find(UTF8, "PatientName=dvorak^antonin", "AccessionNumber=")
    assert sorted(accessions(responses)) == ["A04", "A09"]
    assert {str(r.PatientName) for r in responses} == {"Dvořák^Antonín"}


# --- character sets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "accession, name, charset",
    [
        ("A01", "Smith^John", None),
        ("A02", "Müller^Hans", "ISO_IR 100"),
        ("A03", "MÜLLER^Greta", "ISO_IR 100"),
        ("A04", "Dvořák^Antonín", "ISO_IR 192"),
        ("A05", "山田^太郎", "ISO_IR 192"),
    ],
)
def test_response_character_set_without_query_charset(e2e, accession, name, charset):
    responses = e2e.find(f"AccessionNumber={accession}", "PatientName=")
    assert len(responses) == 1
    ds = responses[0]
    assert ds.AccessionNumber == accession
    assert str(ds.PatientName) == name
    if charset is None:
        assert SPECIFIC_CHARSET not in ds
    else:
        assert ds.SpecificCharacterSet == charset


def test_non_latin_name_with_latin1_query_switches_to_utf8(e2e):
    """ISO_IR 100 cannot encode 山田^太郎: the response falls back to ISO_IR 192."""
    responses = e2e.find(LATIN1, "AccessionNumber=A05", "PatientName=")
    assert len(responses) == 1
    assert raw_value(responses[0], 0x00100010) == "山田^太郎".encode()
    assert responses[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(responses[0].PatientName) == "山田^太郎"


def test_non_latin_name_query_by_name(e2e):
    responses = e2e.find(UTF8, "PatientName=山田*", "AccessionNumber=", "PatientID=")
    assert len(responses) == 1
    assert responses[0].AccessionNumber == "A05"
    assert responses[0].PatientID == "P05"
    assert responses[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(responses[0].PatientName) == "山田^太郎"


# --- response structure -----------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, top, in_sps",
    [
        (["AccessionNumber="], {(0x0008, 0x0050)}, None),
        (
            ["PatientName=", "PatientID=", "PatientBirthDate=", "PatientSex="],
            {(0x0010, 0x0010), (0x0010, 0x0020), (0x0010, 0x0030), (0x0010, 0x0040)},
            None,
        ),
        (
            [
                "AccessionNumber=",
                "StudyInstanceUID=",
                SPS + "Modality=",
                SPS + "ScheduledProcedureStepID=",
            ],
            {(0x0008, 0x0050), (0x0020, 0x000D), (0x0040, 0x0100)},
            {(0x0008, 0x0060), (0x0040, 0x0009)},
        ),
        (
            [
                "RequestedProcedureID=",
                "RequestedProcedureDescription=",
                SPS + "ScheduledProcedureStepDescription=",
                SPS + "ScheduledStationName=",
            ],
            {(0x0040, 0x1001), (0x0032, 0x1060), (0x0040, 0x0100)},
            {(0x0040, 0x0007), (0x0040, 0x0010)},
        ),
    ],
)
def test_response_holds_exactly_the_requested_keys(e2e, keys, top, in_sps):
    responses = e2e.find(*keys)
    assert len(responses) == 12
    expected_top = {Tag(t) for t in top}
    for ds in responses:
        got = top_tags(ds)
        if SPECIFIC_CHARSET in got:
            assert ds.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192")
        assert got - {SPECIFIC_CHARSET} == expected_top
        if in_sps is not None:
            assert {e.tag for e in sps(ds)} == {Tag(t) for t in in_sps}
    # the charset appears only with non-ASCII text, here only in some patient names
    with_charset = sum(SPECIFIC_CHARSET in ds for ds in responses)
    if any(k.startswith("PatientName=") for k in keys):
        assert with_charset == 5  # Müller, MÜLLER, Dvořák (x2), 山田
    else:
        assert with_charset == 0


def test_response_holds_exactly_the_requested_keys_with_query_charset(e2e):
    responses = e2e.find(UTF8, "AccessionNumber=A01", "PatientName=", SPS + "Modality=")
    assert len(responses) == 1
    ds = responses[0]
    assert top_tags(ds) == {
        SPECIFIC_CHARSET,
        Tag(0x0008, 0x0050),
        Tag(0x0010, 0x0010),
        SPS_SEQUENCE,
    }
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert {e.tag for e in sps(ds)} == {Tag(0x0008, 0x0060)}


def test_unknown_key_is_returned_empty(e2e):
    """A key outside the model (Patient Comments) comes back zero-length, status FF01."""
    responses, text = e2e.run("AccessionNumber=A01", "PatientComments=")
    assert "Pending: WarningUnsupportedOptionalKeys" in text
    assert "Received Final Find Response (Success)" in text
    assert len(responses) == 1
    ds = responses[0]
    assert top_tags(ds) == {Tag(0x0008, 0x0050), Tag(0x0010, 0x4000)}
    assert ds.get_item(0x00104000).value in (b"", None, "")


# --- Study Instance UID -----------------------------------------------------------------


def test_study_instance_uids_valid_and_stable(e2e):
    first = e2e.find("AccessionNumber=", "StudyInstanceUID=")
    second = e2e.find("AccessionNumber=", "StudyInstanceUID=")
    assert len(first) == len(second) == 12
    uids1 = {ds.AccessionNumber: ds.StudyInstanceUID for ds in first}
    uids2 = {ds.AccessionNumber: ds.StudyInstanceUID for ds in second}
    assert set(uids1) == set(ITEMS)
    assert uids1 == uids2
    assert len(set(uids1.values())) == 12  # one study per item
    for uid in uids1.values():
        assert len(uid) <= 64
        assert UID_RE.match(uid), uid
    # and a UID is a matching key that finds its item again
    responses = e2e.find("AccessionNumber=", f"StudyInstanceUID={uids1['A09']}")
    assert accessions(responses) == ["A09"]


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        SPS + "ScheduledProcedureStepStartDate=20261125-20261123",  # ends before it starts
        SPS + "ScheduledProcedureStepStartDate=2026-11-23",  # not a date range
        SPS + "ScheduledProcedureStepStartTime=2500",  # no such hour
    ],
)
def test_invalid_date_or_time_key_fails_with_a900(e2e, key):
    responses, text = e2e.run("AccessionNumber=", key)
    assert responses == []
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in text
