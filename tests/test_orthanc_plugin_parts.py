"""The Orthanc plugin's pure parts, outside Orthanc (issue 17; the whole plugin inside a
real Orthanc: test_deploy_orthanc_plugin.py).

- settings.plugin_config: MPPSAet / DicomPortMPPS / WorklistMpps through the project's
  one loader, with the plugin's own rules;
- worklist.answer: the callback's answers are the project's port's (services/worklist_
  find.py), encoded as the DICOM buffers WorklistAddAnswer parses; refusals carry the
  status the project's port answers;
- client: Orthanc's error codes become the HTTP statuses its REST server answers.
"""

from __future__ import annotations

import io
import json
import types

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from conftest import ROOT
from worklist_mpps.config import ConfigError, Device, load_config
from worklist_mpps.orthanc_plugin import client, settings
from worklist_mpps.orthanc_plugin import worklist as plugin_worklist
from worklist_mpps.services import worklist, worklist_find
from worklist_mpps.services.loader import load_file

SECTION = {"database_url": "sqlite:////tmp/wm-plugin-unit.db"}


def test_sample_shape_maps_to_ae_title_and_port_and_orthanc_is_itself():
    cfg = settings.plugin_config(
        {"MPPSAet": "MPPS-AE", "DicomPortMPPS": "4243", "HttpPort": 8043, "WorklistMpps": SECTION},
        env={},
    )
    assert (cfg.ae_title, cfg.port) == ("MPPS-AE", 4243)
    assert cfg.orthanc_url == "http://127.0.0.1:8043"
    assert cfg.database_url == SECTION["database_url"]
    # inside Orthanc the HTTP side and the sample worklist are off unless asked for
    assert (cfg.http_enabled, cfg.load_sample_data) == (False, False)
    on = settings.plugin_config({"WorklistMpps": {**SECTION, "http_enabled": True}}, env={})
    assert on.http_enabled is True and on.port == load_config(None, env={}).port


def test_values_are_checked_by_the_projects_loader_and_say_where_they_are():
    with pytest.raises(ConfigError, match=r"orthanc\.json .*port: must be 0\.\.65535"):
        settings.plugin_config({"DicomPortMPPS": 70000, "WorklistMpps": SECTION}, env={})
    with pytest.raises(ConfigError, match=r"orthanc\.json .*unknown key 'databse_url'"):
        settings.plugin_config({"WorklistMpps": {**SECTION, "databse_url": "x"}}, env={})
    with pytest.raises(ConfigError, match=r"max_find_results .*not an integer|invalid literal"):
        settings.plugin_config({"WorklistMpps": {**SECTION, "max_find_results": "many"}}, env={})
    # a structured key, as JSON in orthanc.json
    cfg = settings.plugin_config(
        {"WorklistMpps": {**SECTION, "devices": [{"ae_title": "CT01", "hosts": ["10.0.0.0/8"]}]}},
        env={},
    )
    assert cfg.devices == [Device("CT01", ("10.0.0.0/8",))]


@pytest.mark.parametrize(
    ("orthanc", "message"),
    [
        ({"WorklistMpps": {}}, r"WorklistMpps\.database_url: required inside Orthanc"),
        ({}, r"WorklistMpps\.database_url: required"),
        ({"WorklistMpps": []}, r"WorklistMpps: must be an object"),
        (
            {"WorklistMpps": {**SECTION, "orthanc_url": "http://pacs:8042"}},
            r"WorklistMpps\.orthanc_url: not used inside Orthanc",
        ),
        (
            {"WorklistMpps": {**SECTION, "orthanc_password": "secret-secret-42"}},
            r"WorklistMpps\.orthanc_password: not used inside Orthanc",
        ),
        (
            {"MPPSAet": "A", "WorklistMpps": {**SECTION, "ae_title": "B"}},
            r"MPPSAet and WorklistMpps\.ae_title are both set",
        ),
    ],
)
def test_plugin_rules(orthanc, message):
    with pytest.raises(ConfigError, match=message):
        settings.plugin_config(orthanc, env={})


def test_environment_comes_first_and_orthanc_json_wins():
    env = {"WORKLIST_MPPS_MAX_FIND_RESULTS": "7", "WORKLIST_MPPS_LOG_LEVEL": "DEBUG"}
    cfg = settings.plugin_config({"WorklistMpps": {**SECTION, "max_find_results": 9}}, env=env)
    assert (cfg.max_find_results, cfg.log_level) == (9, "DEBUG")


# --- the worklist callback's answers ------------------------------------------------------


@pytest.fixture
def sample_db(db):
    load_file(db, ROOT / "sample_data" / "worklist.yaml", "")
    return db


def query_buffer(ds: Dataset) -> bytes:
    """A query as orthanc-python's WorklistGetDicomQuery gives it: a DICOM file buffer."""
    buffer = io.BytesIO()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    return buffer.getvalue()


def mwl_query(**top) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    item = Dataset()
    item.Modality = ""
    item.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = Sequence([item])
    for key, value in top.items():
        setattr(ds, key, value)
    return ds


def test_answers_are_the_project_ports_answers(sample_db):
    cfg = load_config(None, env={})
    buffers = plugin_worklist.answer(sample_db, cfg, query_buffer(mwl_query()), "CT01", "ORTHANC")
    found = worklist_find.find(sample_db, cfg, mwl_query(), "CT01")
    expected = [worklist.response(row, found.query) for row in found.rows]
    got = [pydicom.dcmread(io.BytesIO(b)) for b in buffers]
    assert len(got) == len(expected) > 20
    for ds in got:
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.31"
    assert [g.to_json_dict() for g in got] == [e.to_json_dict() for e in expected]
    names = {str(g.PatientName) for g in got}
    assert "山田^太郎" in names  # encoded in the Specific Character Set it asks for
    one = plugin_worklist.answer(
        sample_db, cfg, query_buffer(mwl_query(AccessionNumber="A10001")), "CT01", "ORTHANC"
    )
    assert [pydicom.dcmread(io.BytesIO(b)).AccessionNumber for b in one] == ["A10001"]


def test_refusals_carry_the_project_ports_status(sample_db):
    cfg = load_config(None, env={})
    bad = mwl_query()
    bad.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "20261399"
    with pytest.raises(plugin_worklist.Refused, match=r"0xA900 .*invalid date") as refused:
        plugin_worklist.answer(sample_db, cfg, query_buffer(bad), "CT01", "ORTHANC")
    assert refused.value.status == 0xA900
    with pytest.raises(plugin_worklist.Refused, match="0xA900 Identifier cannot be decoded"):
        # a Scheduled Procedure Step Sequence whose item ends inside its first element
        cut = b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00\x08\x00"
        plugin_worklist.answer(sample_db, cfg, cut, "CT01", "ORTHANC")
    capped = load_config(None, env={}, overrides={"max_find_results": 3})
    with pytest.raises(plugin_worklist.Refused, match="0xA700 More than 3 matches"):
        plugin_worklist.answer(sample_db, capped, query_buffer(mwl_query()), "CT01", "ORTHANC")


def test_device_list_applies_on_orthancs_port(sample_db):
    devices = json.dumps(
        [
            {"ae_title": "CT01"},
            {"ae_title": "MR01", "services": ["mpps"]},
            {"ae_title": "US01", "hosts": ["10.1.2.3"]},
        ]
    )
    cfg = load_config(None, env={}, overrides={"devices": devices})
    assert plugin_worklist.answer(sample_db, cfg, query_buffer(mwl_query()), "CT01", "ORTHANC")
    for calling, reason in (
        ("XX01", "unknown calling AE title"),
        ("MR01", "not authorized for worklist"),
        ("US01", "does not tell the address"),
    ):
        with pytest.raises(plugin_worklist.Refused, match=f"0x0124 .*{reason}"):
            plugin_worklist.answer(sample_db, cfg, query_buffer(mwl_query()), calling, "ORTHANC")


# --- the in-process client ----------------------------------------------------------------


class OrthancException(Exception):
    """orthanc-python 4.0 raises orthanc.OrthancException((code, description))."""


# orthanc.ErrorCode's names; the client reads their numbers from the real enumeration
# inside Orthanc. Two are the real ones, raised in a probe of Orthanc 1.10.1: GET
# /studies/nope -> (17, 'Unknown resource'), PUT /studies/nope/metadata/X -> (7, 'Accessing
# an inexistent item'); the others only need to be distinct here.
ERROR_CODES = types.SimpleNamespace(
    INEXISTENT_FILE=14,
    INEXISTENT_ITEM=7,
    INEXISTENT_TAG=21,
    UNKNOWN_RESOURCE=17,
    BAD_FILE_FORMAT=15,
    BAD_PARAMETER_TYPE=5,
    BAD_REQUEST=8,
    PARAMETER_OUT_OF_RANGE=3,
    URI_SYNTAX=18,
    BAD_JSON=28,
)


class RestApi:
    """orthanc-python's four REST functions over a dict of answers (path -> body or code)."""

    ErrorCode = ERROR_CODES
    OrthancException = OrthancException

    def __init__(self, answers: dict) -> None:
        self.answers, self.calls = answers, []

    def _answer(self, method: str, path: str, body: object = None) -> bytes:
        self.calls.append((method, path, body))
        answer = self.answers[(method, path)]
        if isinstance(answer, int):
            raise OrthancException(answer, "described")
        return answer

    def RestApiGet(self, path):
        return self._answer("GET", path)

    def RestApiPut(self, path, body):
        return self._answer("PUT", path, body)

    def RestApiPost(self, path, body):
        return self._answer("POST", path, body)

    def RestApiDelete(self, path):
        return self._answer("DELETE", path)


def test_error_codes_become_the_rest_servers_statuses():
    from worklist_mpps.delivery.worker import Failed, Retry

    api = RestApi(
        {
            ("POST", "/tools/lookup"): b'[{"ID": "s1", "Type": "Study"}]',
            ("GET", "/series/nope"): 17,
            ("PUT", "/studies/s1/metadata/MppsStatus"): b"",
            ("PUT", "/studies/s1/metadata/Undeclared"): 7,
            ("GET", "/system"): 31,  # an internal error: 500, retried
        }
    )
    orthanc = client.InProcessClient(api)
    orthanc.check_access()  # in-process: no credentials to check
    assert orthanc.lookup("1.2.3", "Study") == "s1"
    assert api.calls[0] == ("POST", "/tools/lookup", "1.2.3")
    assert orthanc.parent_study("nope") is None  # 404, as over HTTP
    orthanc.set_metadata("s1", "MppsStatus", "COMPLETED")
    assert api.calls[-1] == ("PUT", "/studies/s1/metadata/MppsStatus", b"COMPLETED")
    with pytest.raises(Failed, match="declare it in UserMetadata"):
        orthanc.set_metadata("s1", "Undeclared", "x")
    with pytest.raises(Retry, match="HTTP 500"):
        orthanc.system()


def test_response_reads_like_requests():
    body = client.Response(200, b'{"Last": 3}')
    assert body.ok and body.json() == {"Last": 3} and body.text == '{"Last": 3}'
    assert body.headers["content-type"] == "application/json"
    text = client.Response(404, b"Unknown resource")
    assert not text.ok and text.headers["content-type"] == "text/plain"
