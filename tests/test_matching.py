"""Annex K matching rules at the function level, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from worklist_mpps.services import matching, worklist
from worklist_mpps.services.matching import MatchError
from worklist_mpps.services.schedule_values import create_item, get_or_create_patient

# accession, patient (id, name), modality, station, date, time, status, extra
ITEMS = [
    (
        "A001",
        ("P001", "Müller^Hans"),
        "CT",
        "CT01",
        "20260705",
        "083000",
        "SCHEDULED",
        {"scheduled_performing_physician_name": "Weber^Anna", "sps_description": "CT 100% dose"},
    ),
    (
        "A_02",
        ("P002", "MÜLLER^Greta"),
        "MR",
        "MR01",
        "20260705",
        "143000",
        "SCHEDULED",
        {"scheduled_performing_physician_name": "Klein^Paul"},
    ),
    (
        "A%03",
        ("P003", "Sánchez^María"),
        "CT",
        "CT02",
        "20260706",
        "100000",
        "SCHEDULED",
        {"scheduled_performing_physician_name": "Weber^Anna"},
    ),
    ("A004", ("P004", "山田^太郎"), "US", "US01", "20260707", "173000", "SCHEDULED", {}),
    ("A005", ("P005", "Smith^John"), "CR", "CR01", "20260704", "235959", "COMPLETED", {}),
    ("A006", ("P006", "Doe^Jane"), "DX", None, "20260705", None, "SCHEDULED", {}),
    (
        "A007",
        ("P007", "Smith^Johnny"),
        "CT",
        "CT01",
        "20260705",
        "120000",
        "IN PROGRESS",
        {"scheduled_performing_physician_name": "weber^anna"},
    ),
    (
        "A008",
        ("P008", "Mueller^Hans"),
        "CT",
        "CT01",
        "20260708",
        "090000",
        "SCHEDULED",
        {
            "scheduled_protocol_codes": [
                {"value": "P-THX", "scheme": "99LOCAL", "meaning": "Thorax"}
            ]
        },
    ),
]
DEFAULT = {"A001", "A_02", "A%03", "A004", "A006", "A007", "A008"}  # not COMPLETED


@pytest.fixture
def loaded(db):
    uids = {}
    with db.write() as session:
        for acc, (pid, name), modality, station, date, tm, status, extra in ITEMS:
            patient = get_or_create_patient(session, {"patient_id": pid, "patient_name": name})
            item = create_item(
                session,
                patient,
                {
                    "accession_number": acc,
                    "sps_id": "S" + acc,
                    "modality": modality,
                    "scheduled_station_ae_title": station,
                    "sps_start_date": date,
                    "sps_start_time": tm,
                    "sps_status": status,
                    **extra,
                },
            )
            session.flush()
            uids[acc] = item.study_instance_uid
    return db, uids


def identifier(top: dict | None = None, sps: dict | None = None) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = ""
    for key, value in (top or {}).items():
        setattr(ds, key, value)
    if sps is not None:
        item = Dataset()
        for key, value in sps.items():
            setattr(item, key, value)
        ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def accessions(db, ds: Dataset, **kwargs) -> set[str]:
    query = worklist.parse_identifier(ds)
    rows = worklist.search(
        db, query, kwargs.pop("statuses", ("SCHEDULED", "IN PROGRESS")), **kwargs
    )
    return {worklist.response(r, query).AccessionNumber for r in rows}


# --- single value, wildcard, universal ---------------------------------------------------


def test_universal_matching_returns_default_statuses(loaded):
    db, _ = loaded
    assert accessions(db, identifier()) == DEFAULT
    assert accessions(db, identifier({"PatientName": "*"})) == DEFAULT
    assert accessions(db, identifier({"PatientName": ""})) == DEFAULT


def test_single_value_is_case_sensitive(loaded):
    db, _ = loaded
    assert accessions(db, identifier(sps={"Modality": "CT"})) == {"A001", "A%03", "A007", "A008"}
    assert accessions(db, identifier(sps={"Modality": "ct"})) == set()
    assert accessions(db, identifier({"AccessionNumber": "a001"})) == set()
    assert accessions(db, identifier({"AccessionNumber": "A001"})) == {"A001"}


def test_person_name_is_case_and_accent_insensitive(loaded):
    db, _ = loaded
    assert accessions(db, identifier({"PatientName": "müller^hans"})) == {"A001"}
    assert accessions(db, identifier({"PatientName": "MULLER^HANS"})) == {"A001"}
    assert accessions(db, identifier({"PatientName": "müller*"})) == {"A001", "A_02"}
    assert accessions(db, identifier({"PatientName": "SANCHEZ*"})) == {"A%03"}
    assert accessions(db, identifier({"PatientName": "山田^太郎"})) == {"A004"}
    # trailing empty components do not change a name (PS3.5 6.2.1)
    assert accessions(db, identifier({"PatientName": "DOE^JANE^^^"})) == {"A006"}
    assert accessions(
        db, identifier({"PatientName": "smith^john^^^"}), statuses=("COMPLETED",)
    ) == {"A005"}


def test_wildcards_star_and_question_mark(loaded):
    db, _ = loaded
    assert accessions(db, identifier({"PatientName": "M?ller*"})) == {"A001", "A_02"}
    assert accessions(db, identifier({"PatientName": "*ller^*"})) == {"A001", "A_02", "A008"}
    assert accessions(db, identifier({"PatientName": "Smith^John?*"})) == {"A007"}
    assert accessions(db, identifier(sps={"ScheduledStationAETitle": "CT0?"})) == {
        "A001",
        "A%03",
        "A007",
        "A008",
    }


def test_sql_wildcard_characters_are_literal(loaded):
    db, _ = loaded
    assert accessions(db, identifier({"AccessionNumber": "A%03"})) == {"A%03"}
    assert accessions(db, identifier({"AccessionNumber": "A%*"})) == {"A%03"}
    assert accessions(db, identifier({"AccessionNumber": "A_*"})) == {"A_02"}
    assert accessions(db, identifier({"AccessionNumber": "A_02"})) == {"A_02"}
    assert accessions(db, identifier(sps={"ScheduledProcedureStepDescription": "*100%*"})) == {
        "A001"
    }


def test_like_pattern_escapes_backslash():
    assert matching._like_pattern("a\\b*") == "a\\\\b%"
    assert matching._like_pattern("50%_?") == "50\\%\\__"


def test_empty_stored_value_never_matches_a_non_empty_key(loaded):
    db, _ = loaded
    # A006 has no station and no performing physician
    assert "A006" in accessions(db, identifier(sps={"ScheduledStationAETitle": "*"}))
    assert "A006" not in accessions(db, identifier(sps={"ScheduledStationAETitle": "?*"}))
    assert "A006" not in accessions(db, identifier(sps={"ScheduledPerformingPhysicianName": "*a*"}))
    assert accessions(db, identifier(sps={"ScheduledPerformingPhysicianName": "WEBER^ANNA"})) == {
        "A001",
        "A%03",
        "A007",
    }


# --- dates and times ------------------------------------------------------------------


def test_date_single_and_ranges(loaded):
    db, _ = loaded
    sps = "ScheduledProcedureStepStartDate"
    assert accessions(db, identifier(sps={sps: "20260705"})) == {"A001", "A_02", "A006", "A007"}
    assert accessions(db, identifier(sps={sps: "20260705-20260706"})) == {
        "A001",
        "A_02",
        "A006",
        "A007",
        "A%03",
    }
    assert accessions(db, identifier(sps={sps: "-20260705"})) == {"A001", "A_02", "A006", "A007"}
    assert accessions(db, identifier(sps={sps: "20260707-"})) == {"A004", "A008"}
    assert accessions(db, identifier(sps={sps: "20260704"}), statuses=("COMPLETED",)) == {"A005"}


def test_time_range_alone(loaded):
    db, _ = loaded
    assert accessions(db, identifier(sps={"ScheduledProcedureStepStartTime": "0800-0900"})) == {
        "A001",
        "A008",
    }
    assert accessions(db, identifier(sps={"ScheduledProcedureStepStartTime": "1700-"})) == {"A004"}


def test_combined_date_time_range(loaded):
    """5 July 10:00 to 6 July 12:00 (C.2.2.2.5.1), not 'each day 10-12'."""
    db, _ = loaded
    keys = {
        "ScheduledProcedureStepStartDate": "20260705-20260706",
        "ScheduledProcedureStepStartTime": "1000-1200",
    }
    assert accessions(db, identifier(sps=keys)) == {"A_02", "A007", "A%03"}
    keys = {
        "ScheduledProcedureStepStartDate": "20260705-",
        "ScheduledProcedureStepStartTime": "1300-",
    }
    assert accessions(db, identifier(sps=keys)) == {"A_02", "A%03", "A004", "A008"}
    keys = {
        "ScheduledProcedureStepStartDate": "-20260705",
        "ScheduledProcedureStepStartTime": "-0900",
    }
    assert accessions(db, identifier(sps=keys)) == {"A001", "A006"}
    # a reversed time range is fine when combined with a date range
    keys = {
        "ScheduledProcedureStepStartDate": "20260705-20260706",
        "ScheduledProcedureStepStartTime": "1300-1100",
    }
    assert accessions(db, identifier(sps=keys)) == {"A_02", "A%03"}


# --- UID lists, sequences, statuses, calling AE -------------------------------------------


def test_list_of_uid_matching(loaded):
    db, uids = loaded
    ds = identifier({"StudyInstanceUID": [uids["A001"], uids["A004"]]})
    assert accessions(db, ds) == {"A001", "A004"}
    assert accessions(db, identifier({"StudyInstanceUID": uids["A008"]})) == {"A008"}


def test_sequence_matching_combines_item_keys(loaded):
    db, _ = loaded
    assert accessions(
        db, identifier(sps={"Modality": "CT", "ScheduledStationAETitle": "CT01"})
    ) == {"A001", "A007", "A008"}
    assert accessions(db, identifier({"PatientName": "smith*"}, sps={"Modality": "CT"})) == {"A007"}


def test_status_default_and_explicit(loaded):
    db, _ = loaded
    status = "ScheduledProcedureStepStatus"
    assert accessions(db, identifier(sps={status: "COMPLETED"})) == {"A005"}
    assert accessions(db, identifier(sps={status: "IN PROGRESS"})) == {"A007"}
    assert accessions(db, identifier(sps={status: ""})) == DEFAULT


def test_calling_ae_filter(loaded):
    db, _ = loaded
    assert accessions(db, identifier(), calling_ae="CT01") == {"A001", "A007", "A008"}


# --- responses --------------------------------------------------------------------------


def test_response_holds_exactly_the_requested_keys(loaded):
    db, _ = loaded
    ds = Dataset()
    ds.PatientName = ""
    ds.OtherPatientIDs = ""  # not in the model: returned empty, FF01
    item = Dataset()
    item.Modality = "CT"
    item.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledProcedureStepSequence = Sequence([item])
    query = worklist.parse_identifier(ds)
    assert query.optional_keys_unsupported
    rows = worklist.search(db, query, ("SCHEDULED",))
    responses = {str(r.PatientName): r for r in (worklist.response(row, query) for row in rows)}
    resp = responses["Mueller^Hans"]
    assert [e.keyword for e in resp] == [
        "PatientName",
        "OtherPatientIDs",
        "ScheduledProcedureStepSequence",
    ]
    assert resp.OtherPatientIDs in ("", None)
    sps = resp.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in sps] == ["Modality", "ScheduledProtocolCodeSequence"]
    code = sps.ScheduledProtocolCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "P-THX",
        "99LOCAL",
        "Thorax",
    )
    assert (
        len(
            responses["Müller^Hans"].ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence
        )
        == 0
    )


def test_empty_sps_sequence_returns_the_whole_item(loaded):
    db, _ = loaded
    ds = identifier({"AccessionNumber": "A001"})
    ds.ScheduledProcedureStepSequence = Sequence()
    query = worklist.parse_identifier(ds)
    (row,) = worklist.search(db, query, ("SCHEDULED",))
    sps = worklist.response(row, query).ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT" and sps.ScheduledStationAETitle == "CT01"
    assert sps.ScheduledProcedureStepStartDate == "20260705"
    assert sps.ScheduledProcedureStepStartTime == "083000"
    assert sps.ScheduledProcedureStepStatus == "SCHEDULED"


@pytest.mark.parametrize(
    "text,requested,expected",
    [
        ("Smith^John", [], None),
        ("Müller^Hans", [], "ISO_IR 100"),
        ("Dvořák^Antonín", [], "ISO_IR 192"),
        ("山田^太郎", ["ISO_IR 100"], "ISO_IR 192"),
        ("Smith^John", ["ISO_IR 192"], "ISO_IR 192"),
        ("Müller^Hans", ["ISO_IR 192"], "ISO_IR 192"),
        ("Müller^Hans", ["ISO_IR 6"], "ISO_IR 100"),
    ],
)
def test_response_character_set(text, requested, expected):
    assert worklist.choose_charset(text, requested) == expected


# --- identifiers that do not fit the model (0xA900) ----------------------------------------


def test_sps_sequence_with_two_items_is_refused():
    ds = Dataset()
    ds.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
    with pytest.raises(MatchError) as exc:
        worklist.parse_identifier(ds)
    assert exc.value.keyword == "ScheduledProcedureStepSequence"


@pytest.mark.parametrize(
    "sps",
    [
        {"ScheduledProcedureStepStartDate": "2026-07-05-2026"},
        {"ScheduledProcedureStepStartDate": "20261345"},
        {"ScheduledProcedureStepStartDate": "tomorrow"},
        {"ScheduledProcedureStepStartTime": "2500"},
        {"ScheduledProcedureStepStartTime": "1800-0800"},  # crosses midnight, no date
    ],
)
def test_invalid_dates_and_times_are_refused(sps):
    with pytest.raises(MatchError):
        worklist.parse_identifier(identifier(sps=sps))


def test_wrong_vr_is_refused():
    ds = Dataset()
    ds.add_new(0x00100010, "SQ", Sequence([Dataset()]))  # PatientName as a sequence
    with pytest.raises(MatchError) as exc:
        worklist.parse_identifier(ds)
    assert exc.value.keyword == "PatientName"
