"""Issue 12, items 1, 2 and 4: sequence keys with one empty item, insignificant padding,
and real dates and times, on every front end.

Live: one ``worklist-mpps serve`` for the module (sample worklist loaded) with DCMTK
findscu as the worklist peer, pynetdicom as the MPPS peer, ``requests`` for DICOMweb and
the management API. Unit: the plain functions of matching.py, worklist.py, mpps.py,
items.py and loader.py.

Over 400 lines because it holds three rules times four front ends (C-FIND, MPPS DIMSE,
DICOMweb, management API) that share one live server; split by rule if it grows.

Over 400 lines: three items checked on every front end of one module server.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS_CLASS
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL_FIND

from conftest import SAMPLE, LiveServer, module_server, require_tool
from worklist_mpps.client.messages import ScheduledStep, Series, n_create, n_set_progress
from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.dimse.pynetdicom_ext import wire
from worklist_mpps.services import dicom, matching, worklist
from worklist_mpps.services.loader import load_file
from worklist_mpps.services.matching import MatchError
from worklist_mpps.services.schedule_values import ItemError, normalize_item, normalize_patient
from worklist_mpps.services.status import INVALID_ATTRIBUTE_VALUE, MPPSError

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

TIMEOUT = 15
FINDSCU_TIMEOUT = 30
SPS_TAG = Tag(0x0040, 0x0100)
RPCS = "(0032,1064)"
SPS = "(0040,0100)"
ISO2022 = "(0008,0005)=ISO 2022 IR 100"  # not encodable by wire.py: the pydicom path
JSON_HEADERS = {"Content-Type": "application/dicom+json"}


# --- the live server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    with module_server(tmp_path_factory, "i12query", "--sample-file", str(SAMPLE)) as live:
        yield live


def findscu(server: LiveServer, outdir: Path, *keys: str) -> tuple[list[Dataset], str]:
    """DCMTK findscu -W -X with these keys: (response identifiers, its verbose log)."""
    require_tool("findscu")
    outdir.mkdir(parents=True)
    cmd = [
        "findscu",
        "-v",
        "-W",
        "-aec",
        "WORKLISTS",
        "-X",
        "-od",
        str(outdir),
        "127.0.0.1",
        str(server.port),
    ]
    for key in keys:
        cmd += ["-k", key]
    proc = subprocess.run(cmd, capture_output=True, timeout=FINDSCU_TIMEOUT)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, text
    return [pydicom.dcmread(f) for f in sorted(outdir.glob("rsp*.dcm"))], text


def found(server: LiveServer, outdir: Path, *keys: str) -> list[Dataset]:
    responses, text = findscu(server, outdir, *keys)
    assert "Received Final Find Response (Success)" in text, text
    return responses


def elements(ds: Dataset) -> dict:
    """A comparable form of a response, without its Specific Character Set."""
    out = {}
    for elem in ds:
        if elem.tag == 0x00080005:
            continue
        if elem.VR == "SQ":
            out[int(elem.tag)] = [elements(item) for item in elem.value]
        else:
            out[int(elem.tag)] = str(elem.value).rstrip() if elem.value is not None else ""
    return out


def assert_whole_a10002(ds: Dataset) -> None:
    """A10002 of sample_data/worklist.yaml with its whole SPS and code sequences."""
    assert ds.AccessionNumber == "A10002"
    assert len(ds.ScheduledProcedureStepSequence) == 1
    item = ds.ScheduledProcedureStepSequence[0]
    # Table K.6-1 Type 1 return keys of the item, with their values
    assert item.ScheduledStationAETitle == "CT02"
    assert item.Modality == "CT"
    assert len(item.ScheduledProcedureStepStartDate) == 8
    assert item.ScheduledProcedureStepStartTime == "090000"
    assert item.ScheduledProcedureStepID == "S10002"
    assert item.ScheduledProcedureStepDescription == "CT chest portal venous"
    assert str(item.ScheduledPerformingPhysicianName) == "Lindqvist^Karin^^Dr."
    assert item.ScheduledStationName == "CT2_REVOLUTION"
    assert item.ScheduledProcedureStepLocation == "RAD CT ROOM 2"
    assert item.RequestedContrastAgent == "IOHEXOL 350 MG/ML 60 ML"
    assert item.ScheduledProcedureStepStatus == "SCHEDULED"
    protocol = item.ScheduledProtocolCodeSequence
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in protocol] == [
        ("CT_CH_IV", "99LOCAL", "CT Chest with IV contrast")
    ]
    codes = ds.RequestedProcedureCodeSequence
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in codes] == [
        ("24628-0", "LN", "CT Chest W contrast IV")
    ]


# --- item 1: a sequence key with one zero-length item --------------------------------------


@pytest.mark.dcmtk
@pytest.mark.parametrize("charset", [None, ISO2022], ids=["fast-path", "pydicom-path"])
def test_findscu_one_empty_item_returns_the_whole_sequence(server, tmp_path, charset):
    """PS3.4 C.2.2.2.6: `-k "(0040,0100)[0]"` (one zero-length item) is universal
    matching and returns the entire sequence, exactly as a zero-item sequence key does."""
    extra = [charset] if charset else []
    one_item = found(
        server, tmp_path / "one", "AccessionNumber=A10002", f"{SPS}[0]", f"{RPCS}[0]", *extra
    )
    zero_items = found(server, tmp_path / "zero", "AccessionNumber=A10002", SPS, RPCS, *extra)
    assert len(one_item) == len(zero_items) == 1
    assert_whole_a10002(one_item[0])
    assert elements(one_item[0]) == elements(zero_items[0])


@pytest.mark.dcmtk
@pytest.mark.parametrize("charset", [None, ISO2022], ids=["fast-path", "pydicom-path"])
def test_findscu_protocol_code_key_with_one_empty_item(server, tmp_path, charset):
    """The Scheduled Protocol Code Sequence inside the SPS item, asked with one empty item,
    answers its whole items."""
    extra = [charset] if charset else []
    responses = found(
        server, tmp_path / "q", "AccessionNumber=A10002", f"{SPS}[0].(0040,0008)[0]", *extra
    )
    assert len(responses) == 1
    item = responses[0].ScheduledProcedureStepSequence[0]
    assert [
        (c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning)
        for c in item.ScheduledProtocolCodeSequence
    ] == [("CT_CH_IV", "99LOCAL", "CT Chest with IV contrast")]


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("i12db") / "sample.db"
    database = Database(f"sqlite:///{path}")
    migrate.upgrade(database.engine)
    load_file(database, SAMPLE)
    yield database
    database.dispose()


def _identifier(sps_items: list[Dataset], code_items: list[Dataset]) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = "A10002"
    ds.RequestedProcedureCodeSequence = Sequence(code_items)
    ds.ScheduledProcedureStepSequence = Sequence(sps_items)
    return ds


def _both_paths(db: Database, identifier: Dataset) -> tuple[Dataset, Dataset]:
    """The response of the one match, by the pydicom path and by wire.py decoded."""
    query = worklist.parse_identifier(identifier)
    rows = worklist.search(db, query, ("SCHEDULED", "IN PROGRESS"))
    assert len(rows) == 1
    by_pydicom = worklist.response(rows[0], query)
    elements_ = worklist.response_elements(rows[0], query)
    raw = wire.encode_identifier(elements_, worklist.response_charset(elements_, query), True)
    by_wire = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    return by_pydicom, by_wire


def test_one_empty_item_equals_zero_items_on_both_paths(sample_db):
    """worklist.response (pydicom) and wire.encode_identifier (fast path) both answer a
    one-empty-item sequence key with the whole sequence, as for a zero-item key."""
    empty = _both_paths(sample_db, _identifier([Dataset()], [Dataset()]))
    zero = _both_paths(sample_db, _identifier([], []))
    for ds in (*empty, *zero):
        assert_whole_a10002(ds)
    assert elements(empty[0]) == elements(empty[1]) == elements(zero[0])


def test_empty_item_of_a_sequence_the_model_does_not_hold_is_not_a_matching_key():
    """ReferencedStudySequence with one empty item asks for the whole (here empty) sequence:
    universal matching, so no 0xFF01 'optional key not supported' and a zero-length answer."""
    identifier = Dataset()
    identifier.ReferencedStudySequence = Sequence([Dataset()])
    identifier.ScheduledProcedureStepSequence = Sequence([Dataset()])
    query = worklist.parse_identifier(identifier)
    assert not query.optional_keys_unsupported, query.unsupported
    assert worklist.whole_sequence(identifier["ScheduledProcedureStepSequence"])
    not_empty = Dataset()
    not_empty.Modality = ""
    assert not worklist.whole_sequence(pydicom.DataElement(SPS_TAG, "SQ", Sequence([not_empty])))


# --- item 2: padding is not significant ----------------------------------------------------


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "padded, plain",
    [
        ("AccessionNumber= A10001", "AccessionNumber=A10001"),  # SH
        ("AccessionNumber=  A10001  ", "AccessionNumber=A10001"),
        ("AccessionNumber= A1000*", "AccessionNumber=A1000*"),  # a wildcard value too
        ("PatientID= PID00014", "PatientID=PID00014"),  # LO
        ("PatientName= Johnson ^Emily", "PatientName=Johnson^Emily"),  # PN components
        (f"{SPS}[0].Modality= US", f"{SPS}[0].Modality=US"),  # CS
    ],
)
def test_findscu_leading_padding_is_ignored(server, tmp_path, padded, plain):
    """PS3.5 Table 6.2-1: a key with padding spaces finds what the key without them finds."""

    def accessions(key: str, name: str) -> list[str]:
        rsps = found(server, tmp_path / name, "AccessionNumber", "PatientID", key)
        return sorted(str(r.AccessionNumber) for r in rsps)

    expected = accessions(plain, "plain")
    assert expected
    assert accessions(padded, "padded") == expected


def test_strip_padding_follows_the_vr_table():
    """PS3.5 Table 6.2-1: leading and trailing spaces of SH, LO, AE, CS, DS, IS, PN are not
    significant; of LT, ST, UT only trailing ones (leading spaces are significant);
    DA, TM, DT are padded at the end; UI with a NUL."""
    for vr in ("SH", "LO", "AE", "CS", "DS", "IS", "PN"):
        assert matching.strip_padding(vr, "  A1 B ") == "A1 B", vr
    for vr in ("LT", "ST", "UT", "UC", "UR", "DA", "TM", "DT"):
        assert matching.strip_padding(vr, "  A1 ") == "  A1", vr
    assert matching.strip_padding("UI", "1.2.3\0") == "1.2.3"
    assert matching.fold_pn(" Johnson ^ Emily ^^") == matching.fold_pn("Johnson^Emily")


def test_padded_key_finds_the_stored_value_in_sql(sample_db):
    """The rule lives in matching.string_match: ' A10001' and ' A1000*' find A10001."""
    for value in (" A10001", "A10001 ", " A1000* "):
        identifier = Dataset()
        identifier.AccessionNumber = value
        query = worklist.parse_identifier(identifier)
        rows = worklist.search(
            sample_db, query, ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED")
        )
        assert "A10001" in {r.AccessionNumber for r in rows}, value
    identifier = Dataset()
    identifier.StudyInstanceUID = ""
    identifier.AccessionNumber = "A10001"
    rows = worklist.search(
        sample_db, worklist.parse_identifier(identifier), ("SCHEDULED", "IN PROGRESS")
    )
    uid = rows[0].StudyInstanceUID
    identifier.StudyInstanceUID = [uid + "\0", "1.2.3"]
    assert (
        len(
            worklist.search(
                sample_db, worklist.parse_identifier(identifier), ("SCHEDULED", "IN PROGRESS")
            )
        )
        == 1
    )


def test_management_api_stores_code_values_without_padding(server):
    """Every write path stores values stripped: the codes of the management API too, so
    they come back (and are answered to C-FIND) without the padding."""
    body = {
        "accession_number": " PAD0001 ",
        "sps_id": " PADS1 ",
        "modality": " CT ",
        "scheduled_station_ae_title": " PADCT ",
        "sps_start_date": "20300115",
        "sps_start_time": "0900",
        "requested_procedure_codes": [
            {"value": " 24725-4 ", "scheme": " LN ", "meaning": " CT Head "}
        ],
        "patient": {"patient_id": " PADP1 ", "patient_name": " Pad^Patient "},
    }
    rsp = requests.post(f"{server.http_url}/api/worklist-items", json=body, timeout=TIMEOUT)
    assert rsp.status_code == 201, rsp.text
    item = rsp.json()
    assert item["accession_number"] == "PAD0001"
    assert item["sps_id"] == "PADS1"
    assert [(c["value"], c["scheme"], c["meaning"]) for c in item["requested_procedure_codes"]] == [
        ("24725-4", "LN", "CT Head")
    ]


def test_loader_keys_items_by_the_unpadded_step_id(tmp_path):
    """A YAML item whose step ID carries padding is the same item when loaded again
    (before: the lookup used the padded ID and the second load failed)."""
    yaml_file = tmp_path / "padded.yaml"
    yaml_file.write_text(
        "items:\n"
        "  - accession_number: ' YA1 '\n"
        "    sps_id: ' YS1 '\n"
        "    date: 20300101\n"
        "    time: '08:00'\n"
        "    requested_procedure_codes:\n"
        "      - {value: ' C1 ', scheme: ' 99L ', meaning: ' Code one '}\n"
        "    patient: {patient_id: ' YP1 ', patient_name: 'Yaml^Pad'}\n",
        encoding="utf-8",
    )
    database = Database(f"sqlite:///{tmp_path / 'load.db'}")
    try:
        migrate.upgrade(database.engine)
        assert load_file(database, yaml_file) == (1, 0)
        assert load_file(database, yaml_file) == (0, 1)
        identifier = Dataset()
        identifier.AccessionNumber = "YA1"
        identifier.RequestedProcedureCodeSequence = Sequence([Dataset()])
        identifier.ScheduledProcedureStepSequence = Sequence([Dataset()])
        query = worklist.parse_identifier(identifier)
        rows = worklist.search(database, query, ("SCHEDULED",))
        assert len(rows) == 1
        ds = worklist.response(rows[0], query)
        assert ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "YS1"
        code = ds.RequestedProcedureCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
            "C1",
            "99L",
            "Code one",
        )
    finally:
        database.dispose()


def test_n_set_repeating_a_create_only_value_with_padding_is_no_change(server):
    """An N-SET that repeats Patient ID (LO) with a leading space repeats the same value
    (PS3.5 Table 6.2-1): success, not the 0x0107 warning 'not modified'."""
    uid = generate_uid()
    assoc = _mpps_assoc(server)
    try:
        status, _ = assoc.send_n_create(_create_ds(), MPPS_CLASS, uid)
        assert status.Status == 0x0000
        change = Dataset()
        change.PatientID = " DT0001"
        change.Modality = " CT"
        change.PerformedProcedureStepDescription = "padded repeat"
        status, _ = assoc.send_n_set(change, MPPS_CLASS, uid)
    finally:
        assoc.release()
    assert status.Status == 0x0000, status


# --- item 4: dates and times are real -------------------------------------------------------


@pytest.mark.parametrize("value", ["20260231", "20230229", "20261131", "١٩٦٨٠٨٢٢", "20260101\n"])
def test_normalize_date_refuses_what_is_no_calendar_date(value):
    with pytest.raises(MatchError):
        matching.normalize_date("PatientBirthDate", value)


def test_normalize_date_and_time_accept_real_values():
    assert matching.normalize_date("k", "20240229") == "20240229"  # leap year
    assert matching.normalize_date("k", "20261231 ") == "20261231"
    assert matching.normalize_time("k", "235960") == "235960"  # leap second
    assert matching.normalize_time("k", "235960.999999") == "235960"
    assert matching.normalize_time("k", "0000") == "000000"
    assert matching.normalize_datetime("k", "20261130101010.5+0100") == "20261130101010.5+0100"
    assert matching.normalize_datetime("k", "2026") == "2026"


@pytest.mark.parametrize("value", ["10.5", "1234.5", "٠٨١٥", "1200\n"])
def test_normalize_time_refuses_what_is_no_clock_time(value):
    with pytest.raises(MatchError):
        matching.normalize_time("ScheduledProcedureStepStartTime", value)


@pytest.mark.parametrize(
    "value",
    [
        "20260231",
        "20261130251010",
        "20261130101010+1500",
        "2026113010101",
        "20261130101010.1234567",
    ],
)
def test_normalize_datetime_refuses_what_is_no_date_time(value):
    with pytest.raises(MatchError):
        matching.normalize_datetime("k", value)


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "key",
    [
        f"{SPS}[0].ScheduledProcedureStepStartDate=20260231",
        f"{SPS}[0].ScheduledProcedureStepStartDate=20260101-20260231",
        f"{SPS}[0].ScheduledProcedureStepStartTime=10.5",
        "PatientBirthDate=19680231",
    ],
)
def test_findscu_invalid_date_or_time_key_is_0xA900(server, tmp_path, key):
    responses, text = findscu(server, tmp_path / "q", "AccessionNumber", key)
    assert responses == []
    assert "Error: DataSetDoesNotMatchSOPClass" in text, text
    _ok, text = findscu(
        server,
        tmp_path / "ok",
        "AccessionNumber=A10001",
        f"{SPS}[0].ScheduledProcedureStepStartTime=000000-235960",
    )
    assert "Received Final Find Response (Success)" in text, text


@pytest.mark.parametrize(
    "params",
    [
        {"ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate": "20260231"},
        {"PatientBirthDate": "19680231"},
        {"ScheduledProcedureStepSequence.ScheduledProcedureStepStartTime": "10.5"},
    ],
)
def test_dicomweb_search_with_invalid_date_or_time_is_400(server, params):
    rsp = requests.get(
        f"{server.http_url}/modality-scheduled-procedure-steps", params=params, timeout=TIMEOUT
    )
    assert rsp.status_code == 400, rsp.text


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"sps_start_date": "20260231"}, "sps_start_date"),
        ({"sps_start_time": "10.5"}, "sps_start_time"),
        ({"patient": {"patient_id": "BADDATE1", "birth_date": "19680231"}}, "patient.birth_date"),
    ],
)
def test_management_api_invalid_date_or_time_is_422(server, fields, name):
    body = {
        "accession_number": "BADDATE",
        "sps_id": "BADS",
        "modality": "CT",
        "patient": {"patient_id": "BADDATE1"},
        **fields,
    }
    rsp = requests.post(f"{server.http_url}/api/worklist-items", json=body, timeout=TIMEOUT)
    assert rsp.status_code == 422, rsp.text
    assert name in rsp.text


def test_items_validator_refuses_invalid_dates():
    with pytest.raises(ItemError, match="sps_start_date"):
        normalize_item({"sps_start_date": "20260230"})
    with pytest.raises(ItemError, match="birth_date"):
        normalize_patient({"birth_date": "19680431"})


def _create_ds(**overrides: str) -> Dataset:
    ds = n_create(
        [ScheduledStep(generate_uid())],
        modality="CT",
        station_ae_title="MOD1",
        patient_name="Date^Test",
        patient_id="DT0001",
    )
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


def _series_with_date(date: str) -> Dataset:
    ds = n_set_progress([Series(generate_uid(), protocol_name="P")])
    ds.PerformedSeriesSequence[0].SeriesDate = date
    return ds


@pytest.mark.parametrize(
    "ds, keyword",
    [
        (_create_ds(PerformedProcedureStepStartDate="20260231"), "PerformedProcedureStepStartDate"),
        (_create_ds(PatientBirthDate="19680231"), "PatientBirthDate"),
        (_create_ds(PerformedProcedureStepEndTime="2561"), "PerformedProcedureStepEndTime"),
        (_series_with_date("20260431"), "SeriesDate"),
    ],
)
def test_mpps_validator_names_the_attribute(ds, keyword):
    """dicom.check_dates_and_times: every DA/TM/DT of the request, in sequences too."""
    with pytest.raises(MPPSError) as info:
        dicom.check_dates_and_times(ds)
    assert info.value.status == INVALID_ATTRIBUTE_VALUE
    assert info.value.attributes == [int(pydicom.datadict.tag_for_keyword(keyword))]
    assert keyword in info.value.comment


def _mpps_assoc(server: LiveServer):
    ae = RequestorAE(ae_title="MOD1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(MPPS_CLASS, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WORKLISTS")
    assert assoc.is_established
    return assoc


@pytest.mark.parametrize(
    "overrides",
    [
        {"PerformedProcedureStepStartDate": "20260231"},
        {"PatientBirthDate": "19680231"},
        {"PerformedProcedureStepEndTime": "2561"},  # validated today only beside an end date
    ],
)
def test_dimse_n_create_with_invalid_date_or_time_is_0x0106(server, overrides):
    assoc = _mpps_assoc(server)
    try:
        status, _ = assoc.send_n_create(_create_ds(**overrides), MPPS_CLASS, generate_uid())
    finally:
        assoc.release()
    assert status.Status == 0x0106, status
    assert next(iter(overrides)) in status.ErrorComment


@pytest.mark.parametrize(
    "modification",
    [
        {"PerformedProcedureStepEndDate": "20261131"},
        {"PerformedProcedureStepEndTime": "2561"},
        {"series_date": "20260230"},
    ],
)
def test_dimse_n_set_with_invalid_date_or_time_is_0x0106(server, modification):
    uid = generate_uid()
    assoc = _mpps_assoc(server)
    try:
        status, _ = assoc.send_n_create(_create_ds(), MPPS_CLASS, uid)
        assert status.Status == 0x0000
        if "series_date" in modification:
            ds, keyword = _series_with_date(modification["series_date"]), "SeriesDate"
        else:
            ds = Dataset()
            keyword, value = next(iter(modification.items()))
            setattr(ds, keyword, value)
        status, _ = assoc.send_n_set(ds, MPPS_CLASS, uid)
    finally:
        assoc.release()
    assert status.Status == 0x0106, status
    assert keyword in status.ErrorComment
    listed = status.get("AttributeIdentifierList")  # one tag comes bare from pydicom
    listed = [listed] if isinstance(listed, int) else list(listed or [])
    assert pydicom.datadict.tag_for_keyword(keyword) in [int(t) for t in listed], status


def _post(server: LiveServer, uid: str, ds: Dataset, update: bool = False) -> requests.Response:
    doc = ds.to_json_dict()
    doc.pop("00080005", None)
    return requests.post(
        f"{server.http_url}/modality-performed-procedure-steps/{uid}",
        params={"update": ""} if update else None,
        data=json.dumps(doc),
        headers=JSON_HEADERS,
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"PerformedProcedureStepStartDate": "20260231"},
        {"PatientBirthDate": "19680231"},
    ],
)
def test_dicomweb_mpps_create_with_invalid_date_is_400(server, overrides):
    rsp = _post(server, generate_uid(), _create_ds(**overrides))
    assert rsp.status_code == 400, rsp.text
    assert next(iter(overrides)) in rsp.text


def test_dicomweb_mpps_update_with_invalid_date_is_400(server):
    uid = generate_uid()
    assert _post(server, uid, _create_ds()).status_code == 201
    change = Dataset()
    change.PerformedProcedureStepEndDate = "20260631"
    rsp = _post(server, uid, change, update=True)
    assert rsp.status_code == 400, rsp.text
    assert "PerformedProcedureStepEndDate" in rsp.text


# --- control characters in key values ---------------------------------------------------------


def test_check_characters_follows_the_vr_rules():
    matching.check_characters("AccessionNumber", "SH", "A1\x1b$B")  # ESC: ISO 2022
    matching.check_characters("StudyInstanceUID", "UI", "1.2.3\0")  # a UID's padding
    matching.check_characters("Comments", "LT", "line one\r\nline two\ttab")
    for vr, value in [
        ("SH", "A\x00B"),
        ("LO", "A\nB"),
        ("PN", "Doe\x07"),
        ("UI", "1.2\x003"),
        ("LT", "A\x00B"),
    ]:
        with pytest.raises(MatchError, match="control character"):
            matching.check_characters("Key", vr, value)


def test_c_find_key_with_a_control_character_is_0xA900(server):
    """A NUL inside a key is no DICOM value (PS3.5 6.1.2.3): 0xA900, not a quiet 'no match'
    (SQLite) or a database error (PostgreSQL refuses NUL in text)."""
    ae = RequestorAE(ae_title="I12CTRL")
    ae.add_requested_context(MWL_FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WORKLISTS")
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.PatientID = "PID\x0000014"
        identifier.PatientName = ""
        statuses = [status.Status for status, _ in assoc.send_c_find(identifier, MWL_FIND)]
    finally:
        assoc.release()
    assert statuses == [0xA900]


def test_dicomweb_search_with_a_control_character_is_400(live_server, shared_url):
    """On PostgreSQL too, where a NUL reaching the database was a 503."""
    live = live_server(shared_url)
    rsp = requests.get(
        f"{live.http_url}/modality-scheduled-procedure-steps",
        params={"PatientID": "PID\x0000014"},
        timeout=TIMEOUT,
    )
    assert rsp.status_code == 400, rsp.text
    assert "control character" in rsp.text
