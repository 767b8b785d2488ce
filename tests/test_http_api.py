"""Live HTTP tests of the worklist management API (/api/...), /healthz and /openapi.json.

One ``worklist-mpps serve`` per module (sample worklist loaded) takes the bulk; the
authentication cases start their own servers. Every call goes over real HTTP with
``requests``; what the API writes is checked where modalities see it: worklist C-FIND
(pynetdicom, and DCMTK ``findscu -W``) and DICOMweb worklist search.

Tests share the module server, so each one works on its own accession numbers,
patient IDs, stations and (far-future) dates. A schemathesis pass over the served
OpenAPI runs last, against a server of its own.

Over 400 lines: the sections share one module server and the Api helper; a split only moves them.
"""

from __future__ import annotations

import base64
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from conftest import SAMPLE, LiveServer, free_port, module_server, port_open, require_tool
from dicom_clients import find, findscu_files
from worklist_mpps.client.messages import ScheduledStep, n_create
from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.services.matching import fold_pn

TIMEOUT = 15
FINDSCU_TIMEOUT = 30
SPS = "(0040,0100)[0]."
TOKEN = "secret-token-of-24-chars"

_counter = itertools.count(1)


def uniq(prefix: str) -> str:
    """A value no other test of this module uses (accession numbers stay <= 16 chars)."""
    return f"{prefix}{next(_counter):05d}"


class Api:
    """requests against one live server, always with a timeout."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    # --- shortcuts -------------------------------------------------------------------

    def create_item(self, **fields: Any) -> dict:
        response = self.post("/api/worklist-items", json=item_body(**fields))
        assert response.status_code == 201, response.text
        return response.json()

    def items(self, **params: Any) -> dict:
        response = self.get("/api/worklist-items", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def accessions(self, **params: Any) -> list[str]:
        params.setdefault("limit", 500)
        return [i["accession_number"] for i in self.items(**params)["items"]]


def item_body(**fields: Any) -> dict:
    """A valid POST /api/worklist-items body; ``fields`` override (None removes a key)."""
    body: dict[str, Any] = {
        "accession_number": uniq("HA"),
        "sps_id": uniq("S"),
        "requested_procedure_id": uniq("RP"),
        "requested_procedure_description": "CT head without contrast",
        "requested_procedure_priority": "ROUTINE",
        "modality": "CT",
        "scheduled_station_ae_title": "HTTPCT01",
        "sps_start_date": "20300115",
        "sps_start_time": "0900",
        "requested_procedure_codes": [{"value": "24725-4", "scheme": "LN", "meaning": "CT Head"}],
        "patient": {
            "patient_id": uniq("HP"),
            "patient_name": "Test^Patient",
            "birth_date": "19800101",
            "sex": "O",
        },
    }
    for key, value in fields.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def assert_problem(response: requests.Response, status: int, field: str | None) -> dict:
    """An error answer: this status, JSON {"detail": str, "field": field}."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


TIMESTAMPS = ("created_at", "updated_at")


def content(resource: dict) -> dict:
    """A resource without its timestamps (compared separately: see the timestamp bug test)."""
    out = {k: v for k, v in resource.items() if k not in TIMESTAMPS}
    if isinstance(out.get("patient"), dict):
        out["patient"] = content(out["patient"])
    return out


# --- servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    with module_server(tmp_path_factory, "api", "--sample-file", str(SAMPLE)) as live:
        yield live


@pytest.fixture(scope="module")
def api(server) -> Api:
    return Api(server.http_url)


# --- DICOM views of the worklist -----------------------------------------------------------


def cfind(port: int, statuses: str | None = None, **top: str) -> list[Dataset]:
    """Worklist C-FIND (pynetdicom): the response identifiers, the final status Success."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureDescription",
    ):
        setattr(ds, keyword, "")
    item = Dataset()
    for keyword in (
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
    ):
        setattr(item, keyword, "")
    if statuses is not None:
        item.ScheduledProcedureStepStatus = statuses
    ds.ScheduledProcedureStepSequence = Sequence([item])
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    status_list, identifiers = find(port, ds)
    assert status_list and status_list[-1].Status == 0x0000, status_list
    return identifiers


def findscu(server: LiveServer, outdir: Path, *keys: str) -> list[Dataset]:
    """DCMTK findscu -W with these keys: the response identifiers read back with pydicom."""
    return findscu_files(server.port, outdir, *keys, timeout=FINDSCU_TIMEOUT)


def mpps_create(port: int, item: dict) -> str:
    """An MPPS N-CREATE (IN PROGRESS) over DIMSE referencing this item: its SOP Instance UID."""
    step = ScheduledStep(
        study_instance_uid=item["study_instance_uid"],
        accession_number=item["accession_number"],
        requested_procedure_id=item["requested_procedure_id"] or "",
        sps_id=item["sps_id"] or "",
    )
    ds = n_create(
        [step],
        modality=item["modality"],
        station_ae_title=item["scheduled_station_ae_title"],
        patient_name=item["patient"]["patient_name"] or "",
        patient_id=item["patient"]["patient_id"],
    )
    uid = generate_uid()
    ae = RequestorAE(ae_title="HTTPTEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    finally:
        assoc.release()
    assert status.Status == 0x0000, status
    return uid


# --- 1. worklist items: lifecycle ------------------------------------------------------------


def test_create_item_generates_study_uid_and_location(api):
    body = item_body(
        patient={
            "patient_id": uniq("HP"),
            "patient_name": "Nested^Patient",
            "birth_date": "19750203",
            "sex": "F",
        }
    )
    response = api.post("/api/worklist-items", json=body)
    assert response.status_code == 201, response.text
    item = response.json()
    assert response.headers["Location"] == f"/api/worklist-items/{item['id']}"
    uid = item["study_instance_uid"]
    assert uid.startswith("2.25.") and uid[5:].isdigit() and len(uid) <= 64
    assert item["accession_number"] == body["accession_number"]
    assert item["sps_status"] == "SCHEDULED"
    assert item["sps_start_date"] == "20300115"
    assert item["sps_start_time"] == "090000"  # stored in DICOM form
    assert item["requested_procedure_codes"] == [
        {"value": "24725-4", "scheme": "LN", "meaning": "CT Head", "version": None}
    ]
    patient = item["patient"]
    assert patient["patient_id"] == body["patient"]["patient_id"]
    assert patient["patient_name"] == "Nested^Patient"
    assert patient["birth_date"] == "19750203" and patient["sex"] == "F"
    # the Location answers with the same item
    again = api.get(response.headers["Location"])
    assert again.status_code == 200
    assert content(again.json()) == content(item)
    for key in TIMESTAMPS:  # same instant (the suffix differs: see the timestamp bug test)
        assert again.json()[key].rstrip("Z") == item[key].rstrip("Z")
    # the patient was created with it
    assert api.get(f"/api/patients/{patient['id']}").json()["patient_id"] == patient["patient_id"]


def test_two_items_get_different_study_uids(api):
    a, b = api.create_item(), api.create_item()
    assert a["study_instance_uid"] != b["study_instance_uid"]


@pytest.mark.dimse
def test_study_uid_cannot_be_given_or_changed(api, server):
    item = api.create_item()
    uid = item["study_instance_uid"]
    # not an input field: neither on create nor on update
    refused = api.post("/api/worklist-items", json=item_body(study_instance_uid="1.2.3.4"))
    assert_problem(refused, 422, "study_instance_uid")
    refused = api.patch(f"/api/worklist-items/{item['id']}", json={"study_instance_uid": "1.2.3.4"})
    assert_problem(refused, 422, "study_instance_uid")
    # a PATCH of other fields keeps it
    changed = api.patch(
        f"/api/worklist-items/{item['id']}", json={"sps_description": "changed", "modality": "MR"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["study_instance_uid"] == uid
    assert changed.json()["modality"] == "MR"
    assert api.get(f"/api/worklist-items/{item['id']}").json()["study_instance_uid"] == uid
    [ds] = cfind(server.port, AccessionNumber=item["accession_number"])
    assert ds.StudyInstanceUID == uid


def test_get_item_and_404(api):
    item = api.create_item()
    response = api.get(f"/api/worklist-items/{item['id']}")
    assert response.status_code == 200
    assert content(response.json()) == content(item)
    assert_problem(api.get("/api/worklist-items/987654321"), 404, None)
    assert_problem(api.patch("/api/worklist-items/987654321", json={"modality": "CT"}), 404, None)
    assert_problem(api.delete("/api/worklist-items/987654321"), 404, None)


@pytest.mark.dimse
def test_patch_moves_time_and_station_visible_in_cfind(api, server):
    item = api.create_item(
        sps_start_date="20300220", sps_start_time="0800", scheduled_station_ae_title="HTTPCT01"
    )
    acc = item["accession_number"]
    [before] = cfind(server.port, AccessionNumber=acc)
    assert before.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "HTTPCT01"
    assert before.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "080000"

    response = api.patch(
        f"/api/worklist-items/{item['id']}",
        json={
            "sps_start_date": "20300221",
            "sps_start_time": "1415",
            "scheduled_station_ae_title": "HTTPCT02",
        },
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["sps_start_date"] == "20300221"
    assert patched["sps_start_time"] == "141500"
    assert patched["scheduled_station_ae_title"] == "HTTPCT02"
    assert patched["study_instance_uid"] == item["study_instance_uid"]
    assert patched["requested_procedure_description"] == item["requested_procedure_description"]

    [after] = cfind(server.port, AccessionNumber=acc)
    sps = after.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledStationAETitle == "HTTPCT02"
    assert sps.ScheduledProcedureStepStartDate == "20300221"
    assert sps.ScheduledProcedureStepStartTime == "141500"
    assert after.StudyInstanceUID == item["study_instance_uid"]
    # the matching (combined start column) follows the move too
    moved = cfind(
        server.port,
        AccessionNumber=acc,
        ScheduledProcedureStepSequence=Sequence(
            [
                _sps_key(
                    ScheduledProcedureStepStartDate="20300221",
                    ScheduledProcedureStepStartTime="1400-1500",
                )
            ]
        ),
    )
    assert [ds.AccessionNumber for ds in moved] == [acc]
    old = cfind(
        server.port,
        AccessionNumber=acc,
        ScheduledProcedureStepSequence=Sequence(
            [_sps_key(ScheduledProcedureStepStartDate="20300220")]
        ),
    )
    assert old == []


def _sps_key(**values: str) -> Dataset:
    item = Dataset()
    item.Modality = ""
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


@pytest.mark.dimse
def test_delete_discontinues_and_leaves_default_worklist(api, server):
    item = api.create_item()
    acc = item["accession_number"]
    assert [ds.AccessionNumber for ds in cfind(server.port, AccessionNumber=acc)] == [acc]

    response = api.delete(f"/api/worklist-items/{item['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["sps_status"] == "DISCONTINUED"
    assert response.json()["study_instance_uid"] == item["study_instance_uid"]
    assert api.get(f"/api/worklist-items/{item['id']}").json()["sps_status"] == "DISCONTINUED"

    assert cfind(server.port, AccessionNumber=acc) == []  # default: SCHEDULED, IN PROGRESS
    asked = cfind(server.port, statuses="DISCONTINUED", AccessionNumber=acc)
    assert [ds.AccessionNumber for ds in asked] == [acc]
    assert api.accessions(accession=acc, status="DISCONTINUED") == [acc]


@pytest.mark.dimse
def test_delete_purge_removes_item(api, server):
    item = api.create_item()
    response = api.delete(f"/api/worklist-items/{item['id']}", params={"purge": "true"})
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(api.get(f"/api/worklist-items/{item['id']}"), 404, None)
    assert_problem(
        api.delete(f"/api/worklist-items/{item['id']}", params={"purge": "true"}), 404, None
    )
    assert api.items(accession=item["accession_number"])["total"] == 0
    assert (
        cfind(server.port, statuses="DISCONTINUED", AccessionNumber=item["accession_number"]) == []
    )


@pytest.mark.dimse
def test_purge_of_item_with_mpps_is_refused(api, server):
    item = api.create_item(modality="MR", scheduled_station_ae_title="HTTPMR01")
    mpps_uid = mpps_create(server.port, item)
    linked = api.get(f"/api/worklist-items/{item['id']}").json()
    assert linked["sps_status"] == "IN PROGRESS"  # the MPPS is linked to this item
    assert api.get(f"/modality-performed-procedure-steps/{mpps_uid}").status_code == 200

    response = api.delete(f"/api/worklist-items/{item['id']}", params={"purge": "true"})
    body = assert_problem(response, 409, None)
    assert "performed procedure step" in body["detail"]
    still = api.get(f"/api/worklist-items/{item['id']}")
    assert still.status_code == 200
    assert still.json()["sps_status"] == "IN PROGRESS"


def test_duplicate_accession_and_step_id_is_409(api):
    item = api.create_item()
    again = item_body(accession_number=item["accession_number"], sps_id=item["sps_id"])
    assert_problem(api.post("/api/worklist-items", json=again), 409, "accession_number")
    # another step of the same accession is fine
    other = item_body(accession_number=item["accession_number"], sps_id=uniq("S"))
    assert api.post("/api/worklist-items", json=other).status_code == 201
    # without a step ID the accession alone is the key
    acc = uniq("HA")
    api.create_item(accession_number=acc, sps_id=None)
    assert_problem(
        api.post("/api/worklist-items", json=item_body(accession_number=acc, sps_id=None)),
        409,
        "accession_number",
    )
    assert api.items(accession=item["accession_number"])["total"] == 2
    assert api.items(accession=acc)["total"] == 1


def test_patch_onto_existing_accession_and_step_id_is_409(api):
    a, b = api.create_item(), api.create_item()
    response = api.patch(
        f"/api/worklist-items/{b['id']}",
        json={"accession_number": a["accession_number"], "sps_id": a["sps_id"]},
    )
    assert_problem(response, 409, "accession_number")
    assert (
        api.get(f"/api/worklist-items/{b['id']}").json()["accession_number"]
        == b["accession_number"]
    )


@pytest.mark.dimse
def test_patch_moves_item_to_another_patient(api, server):
    item = api.create_item()
    other = api.post(
        "/api/patients", json={"patient_id": uniq("HP"), "patient_name": "Other^Owner"}
    ).json()
    response = api.patch(f"/api/worklist-items/{item['id']}", json={"patient_pk": other["id"]})
    assert response.status_code == 200, response.text
    assert response.json()["patient"]["patient_id"] == other["patient_id"]
    [ds] = cfind(server.port, AccessionNumber=item["accession_number"])
    assert ds.PatientID == other["patient_id"]
    assert str(ds.PatientName) == "Other^Owner"
    assert_problem(
        api.patch(f"/api/worklist-items/{item['id']}", json={"patient_pk": 987654321}),
        422,
        "patient_pk",
    )


# --- 2. validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"sps_start_date": "2026-13-45"}, "sps_start_date"),
        ({"sps_start_date": "20261345"}, "sps_start_date"),
        ({"sps_start_time": "2561"}, "sps_start_time"),
        ({"sps_start_time": "25:00"}, "sps_start_time"),
        ({"sps_status": "DONE"}, "sps_status"),
        ({"requested_procedure_priority": "URGENT"}, "requested_procedure_priority"),
        ({"accession_number": "A" * 17}, "accession_number"),
        ({"accession_number": ""}, "accession_number"),
        ({"sps_id": "S" * 17}, "sps_id"),
        ({"scheduled_station_ae_title": "X" * 17}, "scheduled_station_ae_title"),
        ({"colour": "blue"}, "colour"),
        ({"patient": {"patient_id": "HPX", "colour": "blue"}}, "patient.colour"),
        ({"patient": {"patient_id": "HPX", "sex": "X"}}, "patient.sex"),
        ({"patient": {"patient_id": "HPX", "birth_date": "19801301"}}, "patient.birth_date"),
        ({"patient": {"patient_name": "No^Id"}}, "patient.patient_id"),
        (
            {"requested_procedure_codes": [{"value": "24725-4"}]},
            "requested_procedure_codes.0.scheme",
        ),
        (
            {"scheduled_protocol_codes": [{"value": "P1", "meaning": "no scheme"}]},
            "scheduled_protocol_codes.0.scheme",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_create_validation_names_the_field(api, change, field):
    body = item_body(**change)
    response = api.post("/api/worklist-items", json=body)
    problem = assert_problem(response, 422, field)
    assert field.split(".")[0] in problem["detail"]
    if body["accession_number"]:
        assert api.items(accession=body["accession_number"])["total"] == 0  # nothing stored


def test_create_without_patient_is_422(api):
    body = item_body()
    del body["patient"]
    assert_problem(api.post("/api/worklist-items", json=body), 422, "patient")
    assert api.items(accession=body["accession_number"])["total"] == 0


def test_create_without_accession_is_422(api):
    body = item_body()
    del body["accession_number"]
    assert_problem(api.post("/api/worklist-items", json=body), 422, "accession_number")


def test_create_with_non_json_body_is_422(api):
    response = api.post(
        "/api/worklist-items", data=b"not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "change, field",
    [
        ({"sps_start_date": "2026-13-45"}, "sps_start_date"),
        ({"sps_start_time": "2561"}, "sps_start_time"),
        ({"sps_status": "DONE"}, "sps_status"),
        ({"requested_procedure_priority": "URGENT"}, "requested_procedure_priority"),
        ({"accession_number": "A" * 17}, "accession_number"),
        ({"patient": {"patient_id": "X"}}, "patient"),  # PATCH moves with patient_pk only
        ({"requested_procedure_codes": [{"scheme": "LN"}]}, "requested_procedure_codes.0.value"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_patch_validation_names_the_field_and_changes_nothing(api, change, field):
    item = api.create_item()
    response = api.patch(f"/api/worklist-items/{item['id']}", json=change)
    assert_problem(response, 422, field)
    assert content(api.get(f"/api/worklist-items/{item['id']}").json()) == content(item)


def test_valid_dicom_forms_are_normalized(api):
    item = api.create_item(sps_start_time="07", sps_start_date="20300301")
    assert item["sps_start_time"] == "070000"
    response = api.patch(
        f"/api/worklist-items/{item['id']}",
        json={
            "sps_start_time": "163005",
            "sps_status": "IN PROGRESS",
            "requested_procedure_priority": "STAT",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["sps_start_time"], body["sps_status"], body["requested_procedure_priority"]) == (
        "163005",
        "IN PROGRESS",
        "STAT",
    )


# --- 3. listing ------------------------------------------------------------------------------


LIST_ITEMS = [
    # key, date, time, modality, station, patient key, name
    ("L1", "20360301", "0800", "NM", "HLST01", "p1", "Grünwald^Anna"),
    ("L2", "20360301", "1000", "NM", "HLST02", "p2", "GRÜNWALD^Bernd"),
    ("L3", "20360302", "0900", "XA", "HLST01", "p3", "Gruenwald^Carl"),
    ("L4", "20360303", "1100", "XA", "HLST02", "p1", "Grünwald^Anna"),
    ("L5", "20360305", "0730", "NM", "HLST01", "p4", "山田^花子"),
    ("L6", "20360305", "1200", "XA", "HLST01", "p2", "GRÜNWALD^Bernd"),
    ("L7", "20360310", "1300", "NM", "HLST02", "p4", "山田^花子"),
]


@pytest.fixture(scope="module")
def listing(api) -> dict:
    """Items on dates of 2036, modalities NM/XA and stations HLST01/HLST02 used nowhere else."""
    patients = {key: uniq("HLP") for key in ("p1", "p2", "p3", "p4")}
    acc = {}
    items = {}
    for key, date, time_, modality, station, pkey, name in LIST_ITEMS:
        item = api.create_item(
            accession_number=uniq("HL"),
            sps_start_date=date,
            sps_start_time=time_,
            modality=modality,
            scheduled_station_ae_title=station,
            patient={"patient_id": patients[pkey], "patient_name": name},
        )
        acc[key] = item["accession_number"]
        items[key] = item
    # L6 is finished, L7 cancelled
    assert (
        api.patch(
            f"/api/worklist-items/{items['L6']['id']}", json={"sps_status": "COMPLETED"}
        ).status_code
        == 200
    )
    assert api.delete(f"/api/worklist-items/{items['L7']['id']}").status_code == 200
    return {"acc": acc, "patients": patients, "items": items}


def _keys(listing: dict, accessions: list[str]) -> list[str]:
    by_acc = {v: k for k, v in listing["acc"].items()}
    return [by_acc.get(a, a) for a in accessions]


YEAR_2036 = "20360101-20361231"


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"date": "20360301"}, ["L1", "L2"]),
        ({"date": "20360302"}, ["L3"]),
        ({"date": "20360301-20360303"}, ["L1", "L2", "L3", "L4"]),
        ({"date": "20360303-20360305"}, ["L4", "L5", "L6"]),
        ({"date": "-20360302", "modality": "XA"}, ["L3"]),
        ({"date": "20360305-", "station": "HLST02"}, ["L7"]),
        ({"date": YEAR_2036}, ["L1", "L2", "L3", "L4", "L5", "L6", "L7"]),
        ({"modality": "NM"}, ["L1", "L2", "L5", "L7"]),
        ({"modality": "XA"}, ["L3", "L4", "L6"]),
        ({"station": "HLST02"}, ["L2", "L4", "L7"]),
        ({"station": "HLST0*", "modality": "XA"}, ["L3", "L4", "L6"]),
        ({"date": YEAR_2036, "status": "SCHEDULED"}, ["L1", "L2", "L3", "L4", "L5"]),
        ({"date": YEAR_2036, "status": "COMPLETED"}, ["L6"]),
        ({"date": YEAR_2036, "status": "DISCONTINUED"}, ["L7"]),
        ({"date": YEAR_2036, "status": "IN PROGRESS"}, []),
        ({"date": YEAR_2036, "patient_name": "grünwald*"}, ["L1", "L2", "L4", "L6"]),
        ({"date": YEAR_2036, "patient_name": "GRUNWALD^B*"}, ["L2", "L6"]),
        ({"date": YEAR_2036, "patient_name": "gruenwald*"}, ["L3"]),
        ({"date": YEAR_2036, "patient_name": "山田^花子"}, ["L5", "L7"]),
        ({"date": YEAR_2036, "patient_name": "gr?nwald^anna"}, ["L1", "L4"]),
    ],
    ids=lambda v: "&".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None,
)
def test_list_filters(api, listing, params, expected):
    body = api.items(limit=500, **params)
    assert _keys(listing, [i["accession_number"] for i in body["items"]]) == expected
    assert body["total"] == len(expected)


def test_list_by_accession_and_patient_id(api, listing):
    acc, patients = listing["acc"], listing["patients"]
    assert _keys(listing, api.accessions(accession=acc["L3"])) == ["L3"]
    assert _keys(listing, api.accessions(accession=acc["L7"])) == ["L7"]  # every status
    assert _keys(listing, api.accessions(patient_id=patients["p1"])) == ["L1", "L4"]
    assert _keys(listing, api.accessions(patient_id=patients["p4"])) == ["L5", "L7"]
    assert api.items(accession="HL-NO-SUCH")["total"] == 0
    # wildcards on string keys
    prefix = acc["L1"][:-1] + "?"
    found = api.accessions(accession=prefix)
    assert acc["L1"] in found and all(len(a) == len(acc["L1"]) for a in found)


def test_list_patient_name_is_case_and_accent_insensitive(api, listing):
    """müller* finds the sample's Müller^Hans (A10008, A10030): case- and accent-folded."""
    for query in ("müller*", "MÜLLER*", "muller*"):
        body = api.items(patient_name=query, limit=500)
        accessions = {i["accession_number"] for i in body["items"]}
        assert {"A10008", "A10030"} <= accessions, query
        for i in body["items"]:
            assert fold_pn(i["patient"]["patient_name"]).startswith("muller"), i["patient"]
        assert body["total"] == len(body["items"])
    # Mueller is not Müller
    assert "A10008" not in api.accessions(patient_name="mueller*")


def test_list_default_covers_every_status(api, listing):
    keys = _keys(listing, api.accessions(date=YEAR_2036))
    assert "L6" in keys and "L7" in keys


def test_list_paging(api, listing):
    everything = api.items(date=YEAR_2036, limit=500)
    assert everything["total"] == 7
    pages, seen_ids = [], []
    for offset in range(0, 9, 3):
        page = api.items(date=YEAR_2036, offset=offset, limit=3)
        assert page["total"] == 7
        assert (page["offset"], page["limit"]) == (offset, 3)
        pages.append([i["id"] for i in page["items"]])
        seen_ids += pages[-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert len(set(seen_ids)) == 7  # disjoint
    assert seen_ids == [i["id"] for i in everything["items"]]  # same order as one page
    # past the end: empty page, same total
    beyond = api.items(date=YEAR_2036, offset=50, limit=3)
    assert beyond["items"] == [] and beyond["total"] == 7
    # ordered by start
    starts = [(i["sps_start_date"], i["sps_start_time"]) for i in everything["items"]]
    assert starts == sorted(starts)


def test_list_whole_sample(api):
    sample = api.items(accession="A100*", limit=500)
    assert sample["total"] >= 30
    assert api.items(limit=1)["total"] >= 30


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"limit": "many"}, "limit"),
        ({"status": "DONE"}, "status"),
        ({"date": "2026-13-45"}, "date"),
        ({"date": "20360310-20360301"}, "date"),
    ],
    ids=lambda v: "&".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None,
)
def test_list_invalid_query_is_422(api, params, field):
    assert_problem(api.get("/api/worklist-items", params=params), 422, field)


def test_list_limit_500_is_allowed(api):
    body = api.items(limit=500)
    assert body["limit"] == 500
    assert len(body["items"]) == min(500, body["total"])


# --- 4. patients -----------------------------------------------------------------------------


def test_patient_create_read_duplicate(api):
    pid = uniq("HPP")
    body = {
        "patient_id": pid,
        "patient_name": "Łukasiewicz^Jan",
        "birth_date": "19600101",
        "sex": "M",
        "weight": "80",
        "allergies": "LATEX",
        "pregnancy_status": 4,
    }
    response = api.post("/api/patients", json=body)
    assert response.status_code == 201, response.text
    patient = response.json()
    assert response.headers["Location"] == f"/api/patients/{patient['id']}"
    for key, value in body.items():
        assert patient[key] == value, key
    read = api.get(response.headers["Location"])
    assert read.status_code == 200
    assert content(read.json()) == content(patient)
    assert_problem(api.post("/api/patients", json={"patient_id": pid}), 409, "patient_id")
    # another issuer makes another patient
    other = api.post("/api/patients", json={"patient_id": pid, "issuer_of_patient_id": "HOSP2"})
    assert other.status_code == 201, other.text
    assert other.json()["id"] != patient["id"]
    assert_problem(
        api.post("/api/patients", json={"patient_id": pid, "issuer_of_patient_id": "HOSP2"}),
        409,
        "patient_id",
    )
    assert_problem(api.get("/api/patients/987654321"), 404, None)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"patient_name": "No^Id"}, "patient_id"),
        ({"patient_id": ""}, "patient_id"),
        ({"patient_id": "X", "sex": "X"}, "sex"),
        ({"patient_id": "X", "pregnancy_status": 7}, "pregnancy_status"),
        ({"patient_id": "X", "colour": "blue"}, "colour"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_patient_validation(api, body, field):
    assert_problem(api.post("/api/patients", json=body), 422, field)


@pytest.mark.dimse
def test_patient_patch_name_visible_in_cfind(api, server):
    pid = uniq("HPP")
    patient = api.post("/api/patients", json={"patient_id": pid, "patient_name": "Alt^Name"}).json()
    a = api.create_item(patient={"patient_id": pid})
    b = api.create_item(patient={"patient_id": pid}, modality="MR")
    assert a["patient"]["id"] == b["patient"]["id"] == patient["id"]
    assert {str(ds.PatientName) for ds in cfind(server.port, PatientID=pid)} == {"Alt^Name"}

    response = api.patch(
        f"/api/patients/{patient['id']}", json={"patient_name": "Neumann-Şahin^Zoë", "sex": "F"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["patient_name"] == "Neumann-Şahin^Zoë"
    assert response.json()["patient_id"] == pid

    found = cfind(server.port, PatientID=pid)
    assert sorted(ds.AccessionNumber for ds in found) == sorted(
        [a["accession_number"], b["accession_number"]]
    )
    assert {str(ds.PatientName) for ds in found} == {"Neumann-Şahin^Zoë"}
    # the folded name column follows: C-FIND and the API match the new name
    by_name = cfind(server.port, PatientName="neumann-sahin*")
    assert {ds.PatientID for ds in by_name} == {pid}
    assert sorted(api.accessions(patient_name="NEUMANN-SAHIN^zoe")) == sorted(
        [a["accession_number"], b["accession_number"]]
    )
    assert (
        api.get(f"/api/worklist-items/{a['id']}").json()["patient"]["patient_name"]
        == "Neumann-Şahin^Zoë"
    )


def test_patient_patch_validation(api):
    patient = api.post("/api/patients", json={"patient_id": uniq("HPP")}).json()
    path = f"/api/patients/{patient['id']}"
    assert_problem(api.patch(path, json={"sex": "X"}), 422, "sex")
    assert_problem(api.patch(path, json={"patient_id": "NEW"}), 422, "patient_id")
    assert_problem(api.patch("/api/patients/987654321", json={"sex": "M"}), 404, None)
    assert content(api.get(path).json()) == content(patient)


def test_patient_patch_onto_existing_identity_is_409(api):
    pid = uniq("HPP")
    api.post("/api/patients", json={"patient_id": pid, "issuer_of_patient_id": "HOSP1"})
    second = api.post("/api/patients", json={"patient_id": pid}).json()
    response = api.patch(f"/api/patients/{second['id']}", json={"issuer_of_patient_id": "HOSP1"})
    assert_problem(response, 409, "issuer_of_patient_id")


def test_patient_list_filters(api):
    stem = uniq("HPL")
    made = [
        api.post("/api/patients", json={"patient_id": f"{stem}{n}", "patient_name": name}).json()
        for n, name in enumerate(["Çelik^Ayşe", "CELIK^Mehmet", "Kaya^Emre"])
    ]
    listed = api.get("/api/patients", params={"patient_id": f"{stem}*"}, timeout=TIMEOUT).json()
    assert listed["total"] == 3
    assert [p["id"] for p in listed["patients"]] == [p["id"] for p in made]
    exact = api.get("/api/patients", params={"patient_id": f"{stem}2"}).json()
    assert [p["patient_name"] for p in exact["patients"]] == ["Kaya^Emre"]
    by_name = api.get(
        "/api/patients", params={"patient_id": f"{stem}*", "patient_name": "çelik*"}
    ).json()
    assert sorted(p["patient_name"] for p in by_name["patients"]) == ["CELIK^Mehmet", "Çelik^Ayşe"]
    page = api.get(
        "/api/patients", params={"patient_id": f"{stem}*", "offset": 1, "limit": 1}
    ).json()
    assert page["total"] == 3 and [p["id"] for p in page["patients"]] == [made[1]["id"]]
    assert_problem(api.get("/api/patients", params={"limit": 501}), 422, "limit")


def test_patient_delete(api):
    with_items = api.create_item()["patient"]
    body = assert_problem(api.delete(f"/api/patients/{with_items['id']}"), 409, None)
    assert "worklist items" in body["detail"]
    assert api.get(f"/api/patients/{with_items['id']}").status_code == 200

    lone = api.post("/api/patients", json={"patient_id": uniq("HPP")}).json()
    response = api.delete(f"/api/patients/{lone['id']}")
    assert response.status_code == 204 and response.content == b""
    assert_problem(api.get(f"/api/patients/{lone['id']}"), 404, None)
    assert_problem(api.delete(f"/api/patients/{lone['id']}"), 404, None)

    # once its only item is purged, the patient can go
    item = api.create_item()
    assert (
        api.delete(f"/api/worklist-items/{item['id']}", params={"purge": "true"}).status_code == 204
    )
    assert api.delete(f"/api/patients/{item['patient']['id']}").status_code == 204


# --- 5. consistency: API, DIMSE C-FIND (findscu), DICOMweb search -----------------------------


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "name, charset",
    [
        ("山田^花子", "ISO_IR 192"),
        ("Lefèvre-Müller^Zoé Ångström", "ISO_IR 100"),
    ],
    ids=["japanese", "accented"],
)
@pytest.mark.dimse
def test_item_identical_in_api_findscu_and_dicomweb(api, server, tmp_path, name, charset):
    require_tool("findscu")
    item = api.create_item(
        sps_start_date="20310412",
        sps_start_time="1345",
        modality="MR",
        scheduled_station_ae_title="HTTPMR07",
        requested_procedure_description="MRT Knie rechts, nativ",
        patient={"patient_id": uniq("HPC"), "patient_name": name, "sex": "F"},
    )
    acc = item["accession_number"]
    expected = {
        "PatientName": name,
        "PatientID": item["patient"]["patient_id"],
        "AccessionNumber": acc,
        "StudyInstanceUID": item["study_instance_uid"],
        "RequestedProcedureDescription": "MRT Knie rechts, nativ",
        "Modality": "MR",
        "ScheduledStationAETitle": "HTTPMR07",
        "ScheduledProcedureStepStartDate": "20310412",
        "ScheduledProcedureStepStartTime": "134500",
    }
    from_api = api.get(f"/api/worklist-items/{item['id']}").json()
    assert {
        "PatientName": from_api["patient"]["patient_name"],
        "PatientID": from_api["patient"]["patient_id"],
        "AccessionNumber": from_api["accession_number"],
        "StudyInstanceUID": from_api["study_instance_uid"],
        "RequestedProcedureDescription": from_api["requested_procedure_description"],
        "Modality": from_api["modality"],
        "ScheduledStationAETitle": from_api["scheduled_station_ae_title"],
        "ScheduledProcedureStepStartDate": from_api["sps_start_date"],
        "ScheduledProcedureStepStartTime": from_api["sps_start_time"],
    } == expected

    [dimse] = findscu(
        server,
        tmp_path / "findscu",
        f"AccessionNumber={acc}",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "RequestedProcedureDescription",
        SPS + "Modality",
        SPS + "ScheduledStationAETitle",
        SPS + "ScheduledProcedureStepStartDate",
        SPS + "ScheduledProcedureStepStartTime",
    )
    assert dimse.SpecificCharacterSet == charset
    assert _values(dimse) == expected

    response = api.get(
        "/modality-scheduled-procedure-steps",
        params={"AccessionNumber": acc},
        headers={"Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    docs = response.json()
    assert len(docs) == 1
    assert _values(Dataset.from_json(docs[0])) == expected

    # the name finds it on both DICOM sides (folded, wildcard)
    family = fold_pn(name).split("^")[0]
    assert acc in [ds.AccessionNumber for ds in cfind(server.port, PatientName=family + "*")]


def _values(ds: Dataset) -> dict[str, str]:
    sps = ds.ScheduledProcedureStepSequence[0]
    return {
        "PatientName": str(ds.PatientName),
        "PatientID": ds.PatientID,
        "AccessionNumber": ds.AccessionNumber,
        "StudyInstanceUID": ds.StudyInstanceUID,
        "RequestedProcedureDescription": ds.RequestedProcedureDescription,
        "Modality": sps.Modality,
        "ScheduledStationAETitle": sps.ScheduledStationAETitle,
        "ScheduledProcedureStepStartDate": sps.ScheduledProcedureStepStartDate,
        "ScheduledProcedureStepStartTime": sps.ScheduledProcedureStepStartTime,
    }


def test_dicomweb_search_follows_patch_and_cancel(api):
    item = api.create_item()
    acc = item["accession_number"]
    api.patch(f"/api/worklist-items/{item['id']}", json={"scheduled_station_ae_title": "HTTPX9"})
    response = api.get("/modality-scheduled-procedure-steps", params={"AccessionNumber": acc})
    [doc] = response.json()
    assert (
        Dataset.from_json(doc).ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "HTTPX9"
    )
    api.delete(f"/api/worklist-items/{item['id']}", params={"purge": "true"})
    response = api.get("/modality-scheduled-procedure-steps", params={"AccessionNumber": acc})
    assert response.status_code == 204


# --- 6. authentication ---------------------------------------------------------------------


def test_bearer_token(live_server):
    server = live_server(None, "--http-token", TOKEN, "--load-sample-data", "false")
    url = server.http_url + "/api/worklist-items"
    anonymous = requests.get(url, timeout=TIMEOUT)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.json() == {"detail": "authentication required"}
    wrong = requests.get(url, headers={"Authorization": "Bearer wrong-token"}, timeout=TIMEOUT)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    basic = requests.get(url, auth=("u", TOKEN), timeout=TIMEOUT)
    assert basic.status_code == 401
    ok = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
    assert ok.status_code == 200, ok.text
    assert ok.json()["total"] == 0
    # writes need it too, and work with it
    body = item_body()
    assert requests.post(url, json=body, timeout=TIMEOUT).status_code == 401
    created = requests.post(
        url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT
    )
    assert created.status_code == 201, created.text
    # OpenAPI and DICOMweb are behind it as well; /healthz is open
    assert requests.get(server.http_url + "/openapi.json", timeout=TIMEOUT).status_code == 401
    assert (
        requests.get(
            server.http_url + "/modality-scheduled-procedure-steps", timeout=TIMEOUT
        ).status_code
        == 401
    )
    health = requests.get(server.http_url + "/healthz", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert TOKEN not in server.log()


def test_basic_auth(live_server):
    server = live_server(
        None, "--http-username", "u", "--http-password", "p", "--load-sample-data", "false"
    )
    url = server.http_url + "/api/patients"
    anonymous = requests.get(url, timeout=TIMEOUT)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(url, auth=("u", "p"), timeout=TIMEOUT).status_code == 200
    assert requests.get(url, auth=("u", "wrong"), timeout=TIMEOUT).status_code == 401
    assert requests.get(url, auth=("someone", "p"), timeout=TIMEOUT).status_code == 401
    garbage = requests.get(url, headers={"Authorization": "Basic !!!not-base64"}, timeout=TIMEOUT)
    assert garbage.status_code == 401
    no_colon = base64.b64encode(b"u").decode()
    assert (
        requests.get(
            url, headers={"Authorization": f"Basic {no_colon}"}, timeout=TIMEOUT
        ).status_code
        == 401
    )
    assert (
        requests.get(url, headers={"Authorization": "Bearer p"}, timeout=TIMEOUT).status_code == 401
    )
    created = requests.post(url, json={"patient_id": "AUTH1"}, auth=("u", "p"), timeout=TIMEOUT)
    assert created.status_code == 201, created.text
    assert requests.get(server.http_url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_non_loopback_http_bind_without_auth_refuses_to_start(tmp_path):
    dicom_port, http_port = free_port(), free_port()
    db_file = tmp_path / "never.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKLIST_MPPS_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            str(dicom_port),
            "--http-bind",
            "0.0.0.0",
            "--http-port",
            str(http_port),
            "--database-url",
            f"sqlite:///{db_file}",
            "--load-sample-data",
            "false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "http_bind" in output, output
    assert "0.0.0.0" in output and "loopback" in output, output
    assert "listening" not in output.lower(), output
    # refused before anything was opened: no database file, nothing on either port
    assert not db_file.exists()
    assert not port_open("127.0.0.1", dicom_port) and not port_open("127.0.0.1", http_port)


def test_non_loopback_http_bind_with_token_is_accepted_by_config():
    """The same bind is fine once authentication is set (checked without serving)."""
    from worklist_mpps.config import load_config

    cfg = load_config(None, env={}, overrides={"http_bind": "0.0.0.0", "http_token": TOKEN})
    assert cfg.http_bind == "0.0.0.0" and cfg.http_auth_configured


# --- 7. /healthz and OpenAPI -------------------------------------------------------------------


def test_healthz(api):
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "dicom": "listening"}


def test_openapi_lists_the_api(api):
    response = api.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, methods in {
        "/api/worklist-items": {"get", "post"},
        "/api/worklist-items/{item_id}": {"get", "patch", "delete"},
        "/api/patients": {"get", "post"},
        "/api/patients/{patient_pk}": {"get", "patch", "delete"},
        "/modality-performed-procedure-steps/{mpps_uid}": {"get", "post"},
        "/modality-scheduled-procedure-steps": {"get"},
        "/healthz": {"get"},
    }.items():
        assert path in paths, sorted(paths)
        assert methods <= set(paths[path]), (path, sorted(paths[path]))
    assert "ItemIn" in doc["components"]["schemas"]


# --- regressions: bugs these tests found, fixed -------------------------------------------


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        ("GET", "/api/worklist-items/99999999999999999999", {}),
        ("GET", "/api/worklist-items/-99999999999999999999", {}),
        ("PATCH", "/api/worklist-items/99999999999999999999", {"json": {"modality": "CT"}}),
        ("DELETE", "/api/worklist-items/99999999999999999999", {}),
        ("GET", "/api/patients/99999999999999999999", {}),
        ("DELETE", "/api/patients/99999999999999999999", {}),
        ("GET", "/api/worklist-items?offset=99999999999999999999", {}),
        ("GET", "/api/patients?offset=99999999999999999999", {}),
    ],
    ids=[
        "get-item",
        "get-item-negative",
        "patch-item",
        "delete-item",
        "get-patient",
        "delete-patient",
        "list-items-offset",
        "list-patients-offset",
    ],
)
def test_regression_integer_beyond_int64_is_500(api, method, path, kwargs):
    response = api.request(method, path, **kwargs)
    assert response.status_code in (404, 422), (response.status_code, response.text)


def test_regression_patient_pk_beyond_int64_is_500(api):
    item = api.create_item()
    response = api.patch(
        f"/api/worklist-items/{item['id']}", json={"patient_pk": 99999999999999999999}
    )
    assert_problem(response, 422, "patient_pk")


def test_regression_patch_status_null_is_reported_as_duplicate(api):
    item = api.create_item()
    response = api.patch(f"/api/worklist-items/{item['id']}", json={"sps_status": None})
    assert_problem(response, 422, "sps_status")


def test_regression_blank_accession_is_stored_as_null(api):
    response = api.post("/api/worklist-items", json=item_body(accession_number="   "))
    assert_problem(response, 422, "accession_number")


def test_regression_patch_makes_duplicate_accession_without_step_id(api):
    a = api.create_item(sps_id=None)
    b = api.create_item(sps_id=None)
    response = api.patch(
        f"/api/worklist-items/{b['id']}", json={"accession_number": a["accession_number"]}
    )
    assert_problem(response, 409, "accession_number")


def test_regression_patient_duplicate_with_blanks_is_201(api):
    pid = uniq("HPB")
    first = api.post("/api/patients", json={"patient_id": pid, "patient_name": "First^One"})
    assert first.status_code == 201
    response = api.post(
        "/api/patients", json={"patient_id": f" {pid} ", "patient_name": "Second^Two"}
    )
    assert_problem(response, 409, "patient_id")


def test_regression_patient_patch_field_name(api):
    patient = api.post("/api/patients", json={"patient_id": uniq("HPP")}).json()
    response = api.patch(f"/api/patients/{patient['id']}", json={"birth_date": "19901301"})
    assert_problem(response, 422, "birth_date")


def test_regression_timestamps_lose_their_timezone_when_read(api):
    item = api.create_item()
    read = api.get(f"/api/worklist-items/{item['id']}").json()
    assert (read["created_at"], read["updated_at"]) == (item["created_at"], item["updated_at"])


# --- 8. schema-based pass (schemathesis) against the served OpenAPI ----------------------------


try:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    _SCHEMATHESIS_4 = int(schemathesis.__version__.split(".")[0]) >= 4
except ImportError:  # pragma: no cover - schemathesis is a test dependency
    _SCHEMATHESIS_4 = False

FUZZ_EXAMPLES = 25
# The /api/ operations of the served OpenAPI (test_fuzz_covers_every_api_operation keeps
# this list complete).
API_OPERATIONS = [
    ("GET", "/api/worklist-items"),
    ("POST", "/api/worklist-items"),
    ("GET", "/api/worklist-items/{item_id}"),
    ("PATCH", "/api/worklist-items/{item_id}"),
    ("DELETE", "/api/worklist-items/{item_id}"),
    ("GET", "/api/patients"),
    ("POST", "/api/patients"),
    ("GET", "/api/patients/{patient_pk}"),
    ("PATCH", "/api/patients/{patient_pk}"),
    ("DELETE", "/api/patients/{patient_pk}"),
    ("GET", "/api/studies/unmatched"),
    ("POST", "/api/studies/{orthanc_id}/link"),
    ("POST", "/api/mpps/{uid}/link"),
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[LiveServer]:
    """Its own server: the fuzzer's PATCH / DELETE must not disturb the tests above."""
    with module_server(tmp_path_factory, "fuzz", "--sample-file", str(SAMPLE)) as live:
        yield live


@pytest.fixture(scope="module")
def hypothesis_home(tmp_path_factory) -> Iterator[None]:
    """Hypothesis' cache goes to a temporary directory, not ./.hypothesis of the checkout."""
    from hypothesis.configuration import set_hypothesis_home_dir, storage_directory

    previous = storage_directory(intent_to_write=False).home_directory
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(previous)


@pytest.fixture(scope="module")
def api_schema(fuzz_server, hypothesis_home):
    if not _SCHEMATHESIS_4:
        pytest.skip("schemathesis >= 4 is not installed")
    return schemathesis.openapi.from_url(fuzz_server.http_url + "/openapi.json", timeout=TIMEOUT)


def test_fuzz_covers_every_api_operation(api_schema):
    served = sorted(
        (op.method.upper(), op.path)
        for op in (r.ok() for r in api_schema.include(path_regex=r"^/api/").get_all_operations())
    )
    assert served == sorted(API_OPERATIONS)


# schemathesis' own pytest integration (schemathesis.pytest.from_fixture) fails on
# pytest 9 ('Function' object has no attribute '_nodeid'), so each operation's
# schemathesis strategy is driven by hypothesis here, and checked with schemathesis'
# not_a_server_error.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize(
    "method, path", API_OPERATIONS, ids=[f"{m} {p}" for m, p in API_OPERATIONS]
)
def test_schemathesis_no_server_error(api_schema, fuzz_server, method, path, mode):
    """Generated valid (positive) and invalid (negative) requests: never a 5xx."""
    operation = api_schema[path][method]
    strategy = operation.as_strategy(GenerationMode(mode))
    session = requests.Session()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case) -> None:
        case.call_and_validate(
            base_url=fuzz_server.http_url,
            session=session,
            checks=[not_a_server_error],
            timeout=TIMEOUT,
        )

    run()
