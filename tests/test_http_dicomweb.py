"""The live DICOMweb side over real HTTP: MPPS Create / Update / Retrieve (PS3.18 ch. 15)
and worklist search (ch. 14), checked against the DIMSE side of the same server.

One ``worklist-mpps serve`` per module (sample worklist loaded); the HTTP client is
``requests``, the DIMSE peers are pynetdicom and (where installed) DCMTK findscu.

Worklist items touched by MPPS here: A10003 (yesterday, MR) and A10005 (yesterday, DX).
The search tests only assert fixed sets of items scheduled today or later, so the order
in which the tests run does not matter.

Over 400 lines: the sections share one module server (Env) and the HTTP and DIMSE helpers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from conftest import SAMPLE, LiveServer, module_server, require_tool
from dicom_clients import find, findscu_files
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    n_create,
    n_set_completed,
    n_set_progress,
)
from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.web.dicomxml import from_xml, to_xml

TIMEOUT = 15
FINDSCU_TIMEOUT = 30
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
NO_LONGER_UPDATED = "Performed Procedure Step Object may no longer be updated"
WL_STATUSES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED")
SPS = "ScheduledProcedureStepSequence"
SPS_STATUS = f"{SPS}.ScheduledProcedureStepStatus"
SPS_DATE = f"{SPS}.ScheduledProcedureStepStartDate"

# Sample items (sample_data/worklist.yaml) scheduled today (day 0) and later.
TODAY = {
    "A10007",
    "A10008",
    "A10009",
    "A10010",
    "A10011",
    "A10012",
    "A10013",
    "A10014",
    "A10015",
    "A10016",
    "A10017",
    "A10018",
    "A10019",
    "A10020",
}
TOMORROW = {"A10021", "A10022", "A10023", "A10024", "A10025", "A10026"}
DAY_AFTER = {"A10027", "A10028", "A10029", "A10030"}
CT_FROM_TODAY = {"A10008", "A10011", "A10012", "A10019", "A10021", "A10026"}
CT_YESTERDAY = {"A10002"}  # never touched by these tests


@dataclass
class Env:
    server: LiveServer
    today: dt.date
    workdir: Path
    _calls: Iterator[int]

    @property
    def url(self) -> str:
        return self.server.http_url

    def date(self, offset: int) -> str:
        return (self.today + dt.timedelta(days=offset)).strftime("%Y%m%d")

    def mpps_url(self, uid: str) -> str:
        return f"{self.url}/modality-performed-procedure-steps/{uid}"

    def findscu(self, *keys: str) -> list[Dataset]:
        """DCMTK findscu -W -X: the response identifiers of a C-FIND ending in Success."""
        require_tool("findscu")
        return findscu_files(
            self.server.port,
            self.workdir / f"q{next(self._calls):03d}",
            *keys,
            timeout=FINDSCU_TIMEOUT,
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    today = dt.date.today()  # the day the YAML 'day' offsets are resolved against
    with module_server(tmp_path_factory, "dicomweb", "--sample-file", str(SAMPLE)) as server:
        yield Env(server, today, server.workdir, itertools.count(1))


# --- helpers: HTTP ----------------------------------------------------------------------


def as_json(ds: Dataset) -> dict:
    doc = ds.to_json_dict()
    doc.pop("00080005", None)  # the server reads DICOM JSON as UTF-8 whatever it says
    return doc


def post_create(env: Env, uid: str, body: Any, content_type: str = DICOM_JSON) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    if isinstance(data, str):
        data = data.encode()
    return requests.post(
        env.mpps_url(uid), data=data, headers={"Content-Type": content_type}, timeout=TIMEOUT
    )


def post_update(env: Env, uid: str, ds: Dataset) -> requests.Response:
    return requests.post(
        env.mpps_url(uid),
        params={"update": ""},
        data=json.dumps(as_json(ds)),
        headers={"Content-Type": DICOM_JSON},
        timeout=TIMEOUT,
    )


def retrieve(env: Env, uid: str, **params) -> Dataset:
    rsp = requests.get(env.mpps_url(uid), params=params, timeout=TIMEOUT)
    assert rsp.status_code == 200, rsp.text
    assert rsp.headers["content-type"].startswith(DICOM_JSON)
    return Dataset.from_json(rsp.json())


def detail(rsp: requests.Response) -> str:
    return rsp.json()["detail"]


def create_ds(patient_name: str = "Test^Patient", **overrides) -> Dataset:
    """An unscheduled N-CREATE attribute list (a new study, no accession)."""
    kwargs = {
        "modality": "CT",
        "station_ae_title": "MODALITY1",
        "patient_name": patient_name,
        "patient_id": "TP0001",
    }
    kwargs.update(overrides)
    steps = kwargs.pop("steps", None) or [ScheduledStep(generate_uid())]
    return n_create(steps, **kwargs)


def http_create(env: Env, ds: Dataset | None = None) -> str:
    uid = generate_uid()
    rsp = post_create(env, uid, as_json(ds if ds is not None else create_ds()))
    assert rsp.status_code == 201, rsp.text
    return uid


def series(n_instances: int = 2) -> Series:
    return Series(
        generate_uid(),
        [Instance(CT_IMAGE, generate_uid()) for _ in range(n_instances)],
        protocol_name="Routine",
        series_description="Axial",
        retrieve_ae_title="PACS",
    )


def search(env: Env, params: list[tuple[str, str]] | dict, **headers) -> requests.Response:
    return requests.get(
        f"{env.url}/modality-scheduled-procedure-steps",
        params=params,
        headers=headers,
        timeout=TIMEOUT,
    )


def search_results(env: Env, params: list[tuple[str, str]] | dict) -> list[Dataset]:
    """Matches of a search (204 is an empty list)."""
    rsp = search(env, params)
    if rsp.status_code == 204:
        assert rsp.content == b""
        return []
    assert rsp.status_code == 200, rsp.text
    assert rsp.headers["content-type"].startswith(DICOM_JSON)
    docs = rsp.json()
    assert isinstance(docs, list)
    return [Dataset.from_json(doc) for doc in docs]


def accessions(found: list[Dataset]) -> list[str]:
    return [d.AccessionNumber for d in found]


def sps_status(ds: Dataset) -> str:
    return ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus


def canonical(value: Any) -> Any:
    """A comparable form of a dataset or value: empty is None, numbers and names as text."""
    if isinstance(value, Dataset):
        return {
            f"{int(e.tag):08X}": (e.VR, canonical(e.value)) for e in value if e.tag.group != 0x0002
        }
    if isinstance(value, (list, tuple, MultiValue, Sequence)):
        items = [canonical(v) for v in value]
        return items or None
    if value is None or value == "" or value == b"":
        return None
    return str(value).rstrip()


def summary(ds: Dataset) -> tuple[str, str, str]:
    return ds.AccessionNumber, ds.StudyInstanceUID, str(ds.PatientName)


# --- helpers: DIMSE ---------------------------------------------------------------------


@contextlib.contextmanager
def mpps_association(port: int) -> Iterator:
    ae = RequestorAE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS")
    assert assoc.is_established, "MPPS association was not accepted"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def n_get(port: int, uid: str) -> Dataset:
    with mpps_association(port) as assoc:
        status, attrs = assoc.send_n_get([], ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000, status
    return attrs


def wl_query(**top) -> Dataset:
    """A C-FIND identifier as in test_dimse_worklist.query(), with the status and IDs."""
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    ds.RequestedProcedureID = ""
    item = Dataset()
    item.Modality = ""
    item.ScheduledProcedureStepID = ""
    item.ScheduledProcedureStepStatus = ""
    ds.ScheduledProcedureStepSequence = Sequence([item])
    for key, value in top.items():
        setattr(ds, key, value)
    return ds


def cfind_item(port: int, accession: str) -> Dataset:
    """The C-FIND identifier of one worklist item, whatever its status."""
    for status in WL_STATUSES:
        ds = wl_query(AccessionNumber=accession)
        ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = status
        statuses, found = find(port, ds)
        assert statuses[-1].Status == 0x0000
        if found:
            assert len(found) == 1
            return found[0]
    raise AssertionError(f"worklist item {accession} not found by C-FIND")


def scheduled_step(item: Dataset) -> ScheduledStep:
    return ScheduledStep(
        study_instance_uid=item.StudyInstanceUID,
        accession_number=item.AccessionNumber,
        requested_procedure_id=item.RequestedProcedureID,
        sps_id=item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID,
    )


# === 1. Create ==========================================================================


def test_create_with_dicom_json_is_201_with_location(env):
    uid = generate_uid()
    rsp = post_create(env, uid, as_json(create_ds("Json^Created")))
    assert rsp.status_code == 201, rsp.text
    assert rsp.headers["location"].endswith(f"/modality-performed-procedure-steps/{uid}")
    got = retrieve(env, uid)
    assert str(got.PatientName) == "Json^Created"
    assert got.PerformedProcedureStepStatus == "IN PROGRESS"
    assert got.SOPInstanceUID == uid and got.SOPClassUID == MPPS_CLASS


def test_create_with_dicom_xml_is_201(env):
    uid = generate_uid()
    ds = create_ds("Xml^Created", pps_id="PPSXML1")
    del ds.SpecificCharacterSet
    rsp = post_create(env, uid, to_xml(ds), DICOM_XML)
    assert rsp.status_code == 201, rsp.text
    assert rsp.headers["location"].endswith(f"/modality-performed-procedure-steps/{uid}")
    got = retrieve(env, uid)
    assert str(got.PatientName) == "Xml^Created"
    assert got.PerformedProcedureStepID == "PPSXML1"
    assert (
        got.ScheduledStepAttributesSequence[0].StudyInstanceUID
        == ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    )


def _completed_at_create() -> dict:
    return as_json(create_ds(status="COMPLETED"))


def _without_modality() -> dict:
    ds = create_ds()
    del ds.Modality
    return as_json(ds)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{this is not json", ["invalid DICOM JSON"]),
        (lambda: [as_json(create_ds()), as_json(create_ds())], ["one DICOM JSON object"]),
        (_completed_at_create, ["IN PROGRESS", "COMPLETED"]),
        (_without_modality, ["Modality"]),
    ],
    ids=["not-json", "array-of-2", "completed-at-create", "missing-modality"],
)
def test_create_with_invalid_body_is_400_and_creates_nothing(env, body, words):
    uid = generate_uid()
    rsp = post_create(env, uid, body() if callable(body) else body)
    assert rsp.status_code == 400, rsp.text
    message = detail(rsp)
    for word in words:
        assert word in message, message
    assert requests.get(env.mpps_url(uid), timeout=TIMEOUT).status_code == 404


def test_create_with_uid_in_use_is_409_and_keeps_the_first(env):
    uid = http_create(env, create_ds("First^Create"))
    rsp = post_create(env, uid, as_json(create_ds("Second^Create")))
    assert rsp.status_code == 409, rsp.text
    assert uid in detail(rsp)
    assert str(retrieve(env, uid).PatientName) == "First^Create"


def test_create_with_bad_uid_in_url_is_400(env):
    rsp = post_create(env, "1.02.3", as_json(create_ds()))
    assert rsp.status_code == 400, rsp.text
    assert "1.02.3" in detail(rsp)


def test_create_with_unsupported_content_type_is_415(env):
    uid = generate_uid()
    rsp = post_create(env, uid, json.dumps(as_json(create_ds())), "text/plain")
    assert rsp.status_code == 415, rsp.text
    assert "text/plain" in detail(rsp)
    assert requests.get(env.mpps_url(uid), timeout=TIMEOUT).status_code == 404


# === 2. Update ==========================================================================


def test_update_is_200_and_visible_in_retrieve(env):
    uid = http_create(env)
    done = series(3)
    mods = n_set_progress([done])
    mods.PerformedProcedureStepDescription = "Chest CT, first series"
    rsp = post_update(env, uid, mods)
    assert rsp.status_code == 200, rsp.text
    got = retrieve(env, uid)
    assert got.PerformedProcedureStepStatus == "IN PROGRESS"
    assert got.PerformedProcedureStepDescription == "Chest CT, first series"
    assert [s.SeriesInstanceUID for s in got.PerformedSeriesSequence] == [done.series_instance_uid]
    assert len(got.PerformedSeriesSequence[0].ReferencedImageSequence) == 3

    rsp = post_update(env, uid, n_set_completed([done, series(1)]))
    assert rsp.status_code == 200, rsp.text
    got = retrieve(env, uid)
    assert got.PerformedProcedureStepStatus == "COMPLETED"
    assert len(got.PerformedSeriesSequence) == 2
    assert got.PerformedProcedureStepEndDate


def test_update_of_unknown_instance_is_404(env):
    uid = generate_uid()
    rsp = post_update(env, uid, n_set_progress([series()]))
    assert rsp.status_code == 404, rsp.text
    assert uid in detail(rsp)


def test_update_after_completed_is_409_no_longer_updated(env):
    uid = http_create(env)
    assert post_update(env, uid, n_set_completed([series()])).status_code == 200
    mods = Dataset()
    mods.PerformedProcedureStepDescription = "too late"
    rsp = post_update(env, uid, mods)
    assert rsp.status_code == 409, rsp.text
    assert detail(rsp) == NO_LONGER_UPDATED
    assert rsp.json()["dimse_status"] == "0x0110"
    got = retrieve(env, uid)
    assert got.PerformedProcedureStepStatus == "COMPLETED"
    assert got.PerformedProcedureStepDescription != "too late"


def test_update_of_create_only_attribute_is_409_and_changes_nothing(env):
    uid = http_create(env, create_ds("Original^Name"))
    before = retrieve(env, uid)
    mods = Dataset()
    mods.PatientName = "Other^Name"
    mods.PerformedProcedureStepDescription = "must not be applied"  # allowed on its own
    mods.PerformedSeriesSequence = Sequence([series().item()])
    rsp = post_update(env, uid, mods)
    assert rsp.status_code == 409, rsp.text
    assert "PatientName" in detail(rsp)
    after = retrieve(env, uid)
    assert str(after.PatientName) == "Original^Name"
    assert canonical(after) == canonical(before)  # all or nothing


def test_update_completed_without_series_is_400_and_stays_in_progress(env):
    uid = http_create(env)
    rsp = post_update(env, uid, n_set_completed(None))  # the created sequence is empty
    assert rsp.status_code == 400, rsp.text
    assert "PerformedSeriesSequence" in detail(rsp)
    assert retrieve(env, uid).PerformedProcedureStepStatus == "IN PROGRESS"


# === 3. Retrieve ========================================================================


@pytest.fixture(scope="module")
def cyrillic(env) -> tuple[str, Dataset]:
    """An instance with a non-Latin patient name, a scheduled step and a series."""
    ds = create_ds(
        "Иванов^Иван",
        patient_id="RU0001",
        description="КТ грудной клетки",
        steps=[
            ScheduledStep(
                generate_uid(), accession_number="XRT1", sps_id="SXRT1", sps_description="Шаг"
            )
        ],
    )
    uid = http_create(env, ds)
    assert post_update(env, uid, n_set_progress([series(2)])).status_code == 200
    return uid, ds


def test_retrieve_default_is_dicom_json(env, cyrillic):
    uid, sent = cyrillic
    rsp = requests.get(env.mpps_url(uid), timeout=TIMEOUT)
    assert rsp.status_code == 200, rsp.text
    assert rsp.headers["content-type"].startswith(DICOM_JSON)
    doc = rsp.json()
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Иванов^Иван"}]}
    got = Dataset.from_json(doc)
    assert got.SOPInstanceUID == uid
    assert got.PatientID == "RU0001"
    assert got.SpecificCharacterSet == "ISO_IR 192"
    assert (
        got.ScheduledStepAttributesSequence[0].StudyInstanceUID
        == sent.ScheduledStepAttributesSequence[0].StudyInstanceUID
    )
    assert got.ScheduledStepAttributesSequence[0].ScheduledProcedureStepDescription == "Шаг"
    # */* and application/json are answered with the default as well
    for accept in ("*/*", "application/json"):
        rsp = requests.get(env.mpps_url(uid), headers={"Accept": accept}, timeout=TIMEOUT)
        assert rsp.status_code == 200 and rsp.headers["content-type"].startswith(DICOM_JSON)


def test_retrieve_xml_round_trips_to_the_json_attributes(env, cyrillic):
    uid, _ = cyrillic
    as_json_ds = retrieve(env, uid)
    rsp = requests.get(env.mpps_url(uid), headers={"Accept": DICOM_XML}, timeout=TIMEOUT)
    assert rsp.status_code == 200, rsp.text
    assert rsp.headers["content-type"].startswith(DICOM_XML)
    assert "<FamilyName>Иванов</FamilyName>".encode() in rsp.content
    as_xml_ds = from_xml(rsp.content)
    assert str(as_xml_ds.PatientName) == "Иванов^Иван"
    assert as_xml_ds.PerformedProcedureStepDescription == "КТ грудной клетки"
    assert len(as_xml_ds.PerformedSeriesSequence) == 1
    assert len(as_xml_ds.PerformedSeriesSequence[0].ReferencedImageSequence) == 2
    assert canonical(as_xml_ds) == canonical(as_json_ds)


def test_retrieve_includefield_returns_exactly_those(env, cyrillic):
    uid, _ = cyrillic
    for value in ("PatientName,00400252", "00100010,PerformedProcedureStepStatus"):
        rsp = requests.get(env.mpps_url(uid), params={"includefield": value}, timeout=TIMEOUT)
        assert rsp.status_code == 200, rsp.text
        doc = rsp.json()
        assert set(doc) - {"00080005"} == {"00100010", "00400252"}
        assert doc.get("00080005", {}).get("Value") in (None, ["ISO_IR 192"])
        got = Dataset.from_json(doc)
        assert str(got.PatientName) == "Иванов^Иван"
        assert got.PerformedProcedureStepStatus == "IN PROGRESS"
    # repeated parameters work as a list too
    rsp = requests.get(
        env.mpps_url(uid),
        params=[("includefield", "PatientName"), ("includefield", "00400252")],
        timeout=TIMEOUT,
    )
    assert set(rsp.json()) - {"00080005"} == {"00100010", "00400252"}


def test_retrieve_includefield_all_returns_everything(env, cyrillic):
    uid, _ = cyrillic
    everything = requests.get(env.mpps_url(uid), timeout=TIMEOUT).json()
    rsp = requests.get(env.mpps_url(uid), params={"includefield": "all"}, timeout=TIMEOUT)
    assert rsp.status_code == 200, rsp.text
    assert rsp.json() == everything
    assert len(everything) > 20


@pytest.mark.parametrize(
    "value, words",
    [
        ("all,PatientName", ["all"]),
        ("PatientName,NoSuchKeyword", ["NoSuchKeyword"]),
    ],
)
def test_retrieve_bad_includefield_is_400(env, cyrillic, value, words):
    uid, _ = cyrillic
    rsp = requests.get(env.mpps_url(uid), params={"includefield": value}, timeout=TIMEOUT)
    assert rsp.status_code == 400, rsp.text
    for word in words:
        assert word in detail(rsp)


def test_retrieve_unknown_instance_is_404(env):
    uid = generate_uid()
    rsp = requests.get(env.mpps_url(uid), timeout=TIMEOUT)
    assert rsp.status_code == 404, rsp.text
    assert uid in detail(rsp)


def test_retrieve_bad_uid_is_400(env):
    rsp = requests.get(env.mpps_url("1.02.3"), timeout=TIMEOUT)
    assert rsp.status_code == 400, rsp.text


def test_retrieve_unacceptable_media_type_is_406(env, cyrillic):
    uid, _ = cyrillic
    rsp = requests.get(env.mpps_url(uid), headers={"Accept": "image/png"}, timeout=TIMEOUT)
    assert rsp.status_code == 406, rsp.text
    assert "image/png" in detail(rsp)


# === 4. HTTP and DIMSE on the same instances ============================================


def test_http_create_then_dimse_n_set_and_n_get(env):
    sent = create_ds("Cross^Http", patient_id="XH0001", pps_id="PPSXH1", modality="MR")
    uid = http_create(env, sent)
    created = retrieve(env, uid)

    attrs = n_get(env.server.port, uid)  # N-GET sees what HTTP created
    assert len(canonical(created)) > 20
    assert canonical(attrs) == canonical(created)
    assert str(attrs.PatientName) == "Cross^Http"
    assert attrs.PerformedProcedureStepID == "PPSXH1" and attrs.Modality == "MR"
    assert attrs.PerformedProcedureStepStatus == "IN PROGRESS"

    done = series(2)
    with mpps_association(env.server.port) as assoc:
        status, _ = assoc.send_n_set(n_set_completed([done]), ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000, status

    attrs = n_get(env.server.port, uid)
    assert attrs.PerformedProcedureStepStatus == "COMPLETED"
    assert attrs.PerformedSeriesSequence[0].SeriesInstanceUID == done.series_instance_uid
    assert str(attrs.PatientName) == "Cross^Http"
    over_http = retrieve(env, uid)
    assert canonical(over_http) == canonical(attrs)
    # and HTTP sees the DIMSE-completed step as final
    rsp = post_update(env, uid, n_set_progress([series()]))
    assert rsp.status_code == 409 and detail(rsp) == NO_LONGER_UPDATED


def test_dimse_n_create_then_http_update_and_retrieve(env):
    uid = generate_uid()
    with mpps_association(env.server.port) as assoc:
        status, _ = assoc.send_n_create(
            create_ds("Cross^Dimse", patient_id="XD0001"), ModalityPerformedProcedureStep, uid
        )
    assert status.Status == 0x0000, status

    got = retrieve(env, uid)
    assert str(got.PatientName) == "Cross^Dimse"
    assert got.PerformedProcedureStepStatus == "IN PROGRESS"

    done = series(4)
    mods = n_set_progress([done])
    mods.CommentsOnThePerformedProcedureStep = "set over HTTP"
    rsp = post_update(env, uid, mods)
    assert rsp.status_code == 200, rsp.text

    got = retrieve(env, uid)
    assert got.CommentsOnThePerformedProcedureStep == "set over HTTP"
    assert got.PerformedSeriesSequence[0].SeriesInstanceUID == done.series_instance_uid
    assert len(got.PerformedSeriesSequence[0].ReferencedImageSequence) == 4
    attrs = n_get(env.server.port, uid)
    assert attrs.CommentsOnThePerformedProcedureStep == "set over HTTP"
    assert attrs.PerformedSeriesSequence[0].SeriesInstanceUID == done.series_instance_uid
    assert canonical(attrs) == canonical(got)


@pytest.mark.dimse
def test_http_mpps_drives_worklist_status_seen_by_c_find(env):
    port = env.server.port
    item = cfind_item(port, "A10003")
    assert sps_status(item) == "SCHEDULED"
    assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "S10003"
    ds = n_create(
        [scheduled_step(item)],
        modality="MR",
        station_ae_title="MR01",
        patient_name=str(item.PatientName),
        patient_id=item.PatientID,
    )
    uid = http_create(env, ds)

    assert sps_status(cfind_item(port, "A10003")) == "IN PROGRESS"
    found = search_results(env, {"AccessionNumber": "A10003"})  # default statuses
    assert [sps_status(d) for d in found] == ["IN PROGRESS"]
    assert found[0].StudyInstanceUID == item.StudyInstanceUID

    assert post_update(env, uid, n_set_completed([series()])).status_code == 200
    assert sps_status(cfind_item(port, "A10003")) == "COMPLETED"
    # no longer in the default worklist, over either front end
    assert search(env, {"AccessionNumber": "A10003"}).status_code == 204
    statuses, found = find(port, wl_query(AccessionNumber="A10003"))
    assert statuses[-1].Status == 0x0000 and found == []


# === 5. Worklist search =================================================================


def test_search_by_accession_number(env):
    found = search_results(env, {"AccessionNumber": "A10019"})
    assert accessions(found) == ["A10019"]
    ds = found[0]
    assert str(ds.PatientName) == "Иванов^Иван"
    step = ds.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT"
    assert step.ScheduledProcedureStepStartDate == env.date(0)
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"


@pytest.mark.parametrize(
    "name", [f"{SPS}.Modality", "00400100.00080060", f"{SPS}.00080060", "00400100.Modality"]
)
def test_search_by_modality_in_the_sequence(env, name):
    found = search_results(env, {name: "CT", "limit": "1000"})
    got = set(accessions(found))
    assert {d.ScheduledProcedureStepSequence[0].Modality for d in found} == {"CT"}
    assert got == CT_FROM_TODAY | CT_YESTERDAY  # A10002 and later CT items only


def test_search_by_date_range_today_tomorrow(env):
    found = search_results(env, {SPS_DATE: f"{env.date(0)}-{env.date(1)}", "limit": "1000"})
    assert set(accessions(found)) == TODAY | TOMORROW
    assert len(found) == len(TODAY | TOMORROW)
    assert {d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate for d in found} == {
        env.date(0),
        env.date(1),
    }
    dates = [d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate for d in found]
    assert dates == sorted(dates)  # ordered by start


def test_search_patient_name_wildcard_case_insensitive(env):
    found = search_results(env, {"PatientName": "müller*"})
    assert sorted(accessions(found)) == ["A10008", "A10030"]
    assert {str(d.PatientName) for d in found} == {"Müller^Hans"}
    upper = search_results(env, {"PatientName": "MÜLLER*"})
    assert sorted(accessions(upper)) == ["A10008", "A10030"]
    smith = search_results(env, {"PatientName": "sM?th*"})
    assert sorted(accessions(smith)) == ["A10014", "A10021"]


def test_search_offset_and_limit_page_stably(env):
    everything = accessions(search_results(env, {"limit": "1000"}))
    assert len(everything) >= len(TODAY | TOMORROW | DAY_AFTER)
    assert len(set(everything)) == len(everything)
    assert accessions(search_results(env, {"limit": "1000"})) == everything  # stable order
    pages = []
    for offset in range(0, len(everything), 7):
        page = accessions(search_results(env, {"offset": str(offset), "limit": "7"}))
        assert 0 < len(page) <= 7
        pages.append(page)
    flat = [a for page in pages for a in page]
    assert flat == everything  # disjoint pages that cover the whole list in order
    assert len(set(flat)) == len(flat)
    rsp = search(env, {"offset": str(len(everything)), "limit": "7"})
    assert rsp.status_code == 204


def test_search_nothing_matches_is_204(env):
    rsp = search(env, {"AccessionNumber": "NOSUCH"})
    assert rsp.status_code == 204
    assert rsp.content == b""


@pytest.mark.parametrize(
    "params, words",
    [
        ({SPS_DATE: "20261399"}, ["date"]),
        ({SPS_DATE: "20261125-20261123"}, []),
        ({"NoSuchAttribute": "x"}, ["NoSuchAttribute"]),
        ({"PatientName.Modality": "CT"}, ["Scheduled Procedure Step Sequence"]),
        ({"includefield": "NoSuchAttribute"}, ["NoSuchAttribute"]),
    ],
    ids=[
        "invalid-date",
        "reversed-range",
        "unknown-attribute",
        "not-a-sequence",
        "unknown-includefield",
    ],
)
def test_search_bad_query_is_400(env, params, words):
    rsp = search(env, params)
    assert rsp.status_code == 400, rsp.text
    for word in words:
        assert word in detail(rsp), detail(rsp)


def test_search_includefield_adds_an_attribute(env):
    plain = search(env, {"AccessionNumber": "A10019"})
    assert plain.status_code == 200
    assert "00104000" not in plain.json()[0]  # Patient Comments: not a default key
    for value in ("PatientComments", "00104000"):
        rsp = search(env, {"AccessionNumber": "A10019", "includefield": value})
        assert rsp.status_code == 200, rsp.text
        doc = rsp.json()[0]
        assert "00104000" in doc and doc["00104000"]["vr"] == "LT"
        assert set(doc) - {"00104000"} == set(plain.json()[0])


def test_search_unacceptable_media_type_is_406(env):
    rsp = search(env, {"AccessionNumber": "A10019"}, Accept="image/png")
    assert rsp.status_code == 406, rsp.text


# --- the same queries over DCMTK findscu ------------------------------------------------

FINDSCU_SPS = "(0040,0100)[0]."


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "http_params, findscu_keys",
    [
        ({"AccessionNumber": "A10019"}, ["AccessionNumber=A10019"]),
        ({f"{SPS}.Modality": "CT"}, [FINDSCU_SPS + "Modality=CT"]),
        ({"00400100.00080060": "MR"}, [FINDSCU_SPS + "Modality=MR"]),
        (
            {SPS_DATE: "{today}-{tomorrow}"},
            [FINDSCU_SPS + "ScheduledProcedureStepStartDate={today}-{tomorrow}"],
        ),
        ({"PatientName": "müller*"}, ["(0008,0005)=ISO_IR 192", "PatientName=müller*"]),
        ({"PatientName": "*"}, []),
        ({}, []),
    ],
    ids=[
        "accession",
        "modality-keyword",
        "modality-tags",
        "date-range",
        "name-wildcard",
        "name-star",
        "universal",
    ],
)
@pytest.mark.dimse
def test_search_matches_findscu(env, http_params, findscu_keys):
    fmt = {"today": env.date(0), "tomorrow": env.date(1)}
    params = {k: v.format(**fmt) for k, v in http_params.items()}
    params["limit"] = "1000"
    over_http = search_results(env, params)
    keys = [k.format(**fmt) for k in findscu_keys]
    names = {k.split("=")[0] for k in keys}
    for key in ("AccessionNumber", "StudyInstanceUID", "PatientName"):
        if key not in names:
            keys.append(f"{key}=")
    over_dimse = env.findscu(*keys)
    assert len(over_http) == len(over_dimse)
    assert over_http, "the query should match something"
    assert sorted(map(summary, over_http)) == sorted(map(summary, over_dimse))


# === 6. Status as a query parameter =====================================================


@pytest.mark.dimse
def test_search_by_status_completed_finds_completed_items_only(env):
    port = env.server.port
    item = cfind_item(port, "A10005")
    ds = n_create(
        [scheduled_step(item)],
        modality="DX",
        station_ae_title="DX01",
        patient_name=str(item.PatientName),
        patient_id=item.PatientID,
    )
    uid = http_create(env, ds)
    assert post_update(env, uid, n_set_completed([series()])).status_code == 200

    found = search_results(env, {SPS_STATUS: "COMPLETED", "limit": "1000"})
    assert "A10005" in accessions(found)
    assert {sps_status(d) for d in found} == {"COMPLETED"}
    assert not set(accessions(found)) & (TODAY | TOMORROW | DAY_AFTER)
    # the default search (SCHEDULED, IN PROGRESS) leaves it out
    assert "A10005" not in accessions(search_results(env, {"limit": "1000"}))
    assert search(env, {"AccessionNumber": "A10005"}).status_code == 204
    scheduled = search_results(env, {SPS_STATUS: "SCHEDULED", "limit": "1000"})
    assert "A10005" not in accessions(scheduled)
    assert {sps_status(d) for d in scheduled} == {"SCHEDULED"}
    # the same over DIMSE
    query = wl_query()
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = "COMPLETED"
    statuses, by_cfind = find(port, query)
    assert statuses[-1].Status == 0x0000
    assert sorted(accessions(by_cfind)) == sorted(accessions(found))
    if shutil.which("findscu"):
        by_findscu = env.findscu(
            FINDSCU_SPS + "ScheduledProcedureStepStatus=COMPLETED",
            "AccessionNumber=",
            "StudyInstanceUID=",
            "PatientName=",
        )
        assert sorted(map(summary, by_findscu)) == sorted(map(summary, found))


# --- PS3.18 details (regressions of findings) ----------------------------------------------------


def test_search_takes_a_comma_separated_uid_list(env):
    found = search_results(env, {"AccessionNumber": "A10019"})
    found += search_results(env, {"AccessionNumber": "A10020"})
    uids = [str(d.StudyInstanceUID) for d in found]
    assert len(uids) == 2
    both = search_results(env, {"StudyInstanceUID": ",".join(uids)})
    assert sorted(str(d.StudyInstanceUID) for d in both) == sorted(uids)


def test_a_repeated_matching_parameter_is_refused(env):
    rsp = search(env, [("AccessionNumber", "A10019"), ("AccessionNumber", "A10020")])
    assert rsp.status_code == 400 and "given twice" in detail(rsp)


@pytest.mark.parametrize("params", [{"limit": "0"}, {"offset": "-1"}, {"limit": "abc"}])
def test_bad_paging_parameters_are_400(env, params):
    rsp = search(env, params)
    assert rsp.status_code == 400 and detail(rsp)


def test_accept_quality_values_choose_the_media_type(env):
    uid = http_create(env)
    rsp = requests.get(
        env.mpps_url(uid),
        timeout=TIMEOUT,
        headers={"Accept": "application/dicom+xml;q=0.1, application/dicom+json"},
    )
    assert rsp.status_code == 200 and rsp.headers["content-type"].startswith(DICOM_JSON)
    rsp = requests.get(
        env.mpps_url(uid),
        timeout=TIMEOUT,
        headers={"Accept": "application/dicom+json;q=0.2, application/dicom+xml;q=0.9"},
    )
    assert rsp.headers["content-type"].startswith("application/dicom+xml")
