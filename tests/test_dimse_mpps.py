"""The live DIMSE MPPS service (PS3.4 Annex F): N-CREATE, N-SET, N-GET against a server.

Every test starts its own ``worklist-mpps serve`` (sample worklist loaded) and talks
to it as a modality would, with pynetdicom; the worklist side is checked with C-FIND
(and once with DCMTK findscu).

Over 400 lines: all sections drive one Modality client (160 lines); a split would only move it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepRetrieve,
)

from conftest import SAMPLE, require_tool, wait_for
from dicom_clients import echo, find, worklist_query
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    discontinuation_reason,
    n_create,
    n_set_completed,
    n_set_discontinued,
    n_set_progress,
)
from worklist_mpps.client.pynetdicom_race import RequestorAE

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

MPPS = ModalityPerformedProcedureStep
MPPS_RETRIEVE = ModalityPerformedProcedureStepRetrieve
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
N_CREATE_RSP = 0x8140
NO_LONGER_UPDATED = "Performed Procedure Step Object may no longer be updated"
WL_STATUSES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED")
TIMEOUT = 15
THREAD_TIMEOUT = 60


query = worklist_query


def identifiers(status: Dataset) -> list[int]:
    """The Attribute Identifier List of a status, as ints."""
    ids = status.get("AttributeIdentifierList")
    if ids is None:
        return []
    return [int(t) for t in ids] if isinstance(ids, (list, MultiValue)) else [int(ids)]


# --- clients ------------------------------------------------------------------------------


class Modality:
    """One MPPS association; remembers the DIMSE messages it received."""

    def __init__(self, port: int, ae_title: str = "MODALITY1") -> None:
        self.received: list = []
        ae = RequestorAE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        ae.add_requested_context(MPPS)
        ae.add_requested_context(MPPS_RETRIEVE)
        self.assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="WORKLISTS",
            evt_handlers=[(evt.EVT_DIMSE_RECV, self._on_recv)],
        )
        assert self.assoc.is_established, "MPPS association was not accepted"

    def _on_recv(self, event) -> None:
        self.received.append(event.message)

    def create(self, ds: Dataset, uid: str | None = None) -> tuple[Dataset, str | None]:
        """N-CREATE: (status dataset, the SOP Instance UID: ours or the one assigned)."""
        self.received.clear()
        status, _ = self.assoc.send_n_create(ds, MPPS, uid)
        assert "Status" in status, "no N-CREATE response (association aborted or timed out)"
        responses = [m for m in self.received if m.command_set.get("CommandField") == N_CREATE_RSP]
        assigned = responses[-1].command_set.get("AffectedSOPInstanceUID") if responses else None
        return status, (uid or (str(assigned) if assigned else None))

    def set(self, uid: str, ds: Dataset) -> Dataset:
        status, _ = self.assoc.send_n_set(ds, MPPS, uid)
        assert "Status" in status, "no N-SET response (association aborted or timed out)"
        return status

    def get(self, uid: str, tags: list | None = None, sop_class=MPPS) -> tuple[Dataset, Dataset]:
        status, attrs = self.assoc.send_n_get(list(tags or []), sop_class, uid)
        assert "Status" in status, "no N-GET response (association aborted or timed out)"
        return status, attrs

    def fetch(self, uid: str) -> Dataset:
        """All attributes of an instance (N-GET with an empty list), which must succeed."""
        status, attrs = self.get(uid)
        assert status.Status == 0x0000, status
        return attrs

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


@contextlib.contextmanager
def modality(port: int, ae_title: str = "MODALITY1") -> Iterator[Modality]:
    client = Modality(port, ae_title)
    try:
        yield client
    finally:
        client.release()


def sample_item(port: int, accession: str) -> Dataset:
    """The C-FIND identifier of one worklist item (any status)."""
    for wl_status in WL_STATUSES:
        ds = query(AccessionNumber=accession, PatientID="")
        sps = ds.ScheduledProcedureStepSequence[0]
        sps.ScheduledProcedureStepID = ""
        sps.ScheduledProcedureStepStatus = wl_status
        ds.RequestedProcedureID = ""
        statuses, found = find(port, ds)
        assert statuses[-1].Status == 0x0000
        if found:
            assert len(found) == 1
            return found[0]
    raise AssertionError(f"worklist item {accession} not found")


def default_statuses(port: int, accession: str | None = None) -> dict[str, str]:
    """{accession: SPS status} of a C-FIND without a status filter (the default set)."""
    ds = query() if accession is None else query(AccessionNumber=accession)
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = ""
    statuses, found = find(port, ds)
    assert statuses[-1].Status == 0x0000
    return {
        d.AccessionNumber: d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus
        for d in found
    }


def worklist_status(port: int, accession: str) -> str:
    return (
        sample_item(port, accession).ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus
    )


def step_of(item: Dataset) -> ScheduledStep:
    sps = item.ScheduledProcedureStepSequence[0]
    return ScheduledStep(
        study_instance_uid=item.StudyInstanceUID,
        accession_number=item.AccessionNumber,
        requested_procedure_id=item.get("RequestedProcedureID", ""),
        sps_id=sps.ScheduledProcedureStepID,
    )


def create_for(item: Dataset, **overrides) -> Dataset:
    kwargs = {
        "modality": item.ScheduledProcedureStepSequence[0].Modality,
        "station_ae_title": "MODALITY1",
        "patient_name": str(item.PatientName),
        "patient_id": item.PatientID,
    }
    kwargs.update(overrides)
    return n_create([step_of(item)], **kwargs)


def plain_create(**overrides) -> Dataset:
    """An unscheduled N-CREATE (new study, no accession)."""
    kwargs = {
        "modality": "CT",
        "station_ae_title": "MODALITY1",
        "patient_name": "Test^Patient",
        "patient_id": "TP0001",
    }
    kwargs.update(overrides)
    return n_create([ScheduledStep(generate_uid())], **kwargs)


def series(n_instances: int) -> Series:
    return Series(
        generate_uid(),
        [Instance(CT_IMAGE, generate_uid()) for _ in range(n_instances)],
        protocol_name="Routine",
        series_description="Axial",
        retrieve_ae_title="PACS",
    )


def tag(keyword: str) -> int:
    return int(tag_for_keyword(keyword))


def value(elem_value) -> object:
    return "" if elem_value is None else str(elem_value).rstrip()


def assert_contains(expected: Dataset, actual: Dataset, path: str = "") -> None:
    """Every element of ``expected`` is in ``actual`` with the same value (recursively)."""
    for elem in expected:
        if elem.keyword == "SpecificCharacterSet":
            continue
        name = f"{path}{elem.keyword or elem.tag}"
        assert elem.tag in actual, f"{name} missing"
        got = actual[elem.tag]
        if elem.VR == "SQ":
            assert len(got.value) == len(elem.value), f"{name}: item count"
            for n, (want_item, got_item) in enumerate(zip(elem.value, got.value, strict=False)):
                assert_contains(want_item, got_item, f"{name}[{n}].")
        else:
            assert value(got.value) == value(elem.value), f"{name}: {got.value!r}"


@pytest.fixture
def server(live_server):
    return live_server(None, "--sample-file", str(SAMPLE))


# --- N-CREATE statuses ------------------------------------------------------------------------


@pytest.mark.parametrize("initial", ["COMPLETED", "DISCONTINUED", "SCHEDULED"])
def test_n_create_must_start_in_progress(server, initial):
    with modality(server.port) as m:
        status, uid = m.create(plain_create(status=initial), generate_uid())
        assert status.Status == 0x0106
        assert "IN PROGRESS" in status.ErrorComment
        status, _ = m.get(uid)
        assert status.Status == 0x0112  # nothing was stored
    assert echo(server.port) == 0x0000


def test_n_create_duplicate_uid_gets_0111(server):
    uid = generate_uid()
    with modality(server.port) as m:
        assert m.create(plain_create(patient_id="FIRST"), uid)[0].Status == 0x0000
        status, _ = m.create(plain_create(patient_id="SECOND"), uid)
        assert status.Status == 0x0111
        got = m.fetch(uid)
        assert got.PatientID == "FIRST"  # the first one is untouched
    assert echo(server.port) == 0x0000


def test_n_create_missing_type1_attribute_or_value(server):
    with modality(server.port) as m:
        ds = plain_create()
        del ds.Modality
        status, _ = m.create(ds, generate_uid())
        assert status.Status == 0x0120
        assert "Missing attribute Modality" in status.ErrorComment

        ds = plain_create()
        ds.Modality = ""
        status, _ = m.create(ds, generate_uid())
        assert status.Status == 0x0121
        assert "Missing value of Modality" in status.ErrorComment

        ds = plain_create()
        del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
        status, uid = m.create(ds, generate_uid())
        assert status.Status == 0x0120
        # The comment (LO, at most 64 characters) names the attribute by sequence tag,
        # item and keyword (the Attribute Identifier List its tag: test_i12_dimse.py).
        assert status.ErrorComment == "Missing attribute (0040,0270)[1] > StudyInstanceUID"
        assert m.get(uid)[0].Status == 0x0112

        # an empty status is a missing value, not a wrong one
        status, _ = m.create(plain_create(status=""), generate_uid())
        assert status.Status == 0x0121
        assert "PerformedProcedureStepStatus" in status.ErrorComment
    assert echo(server.port) == 0x0000


def test_n_create_without_uid_gets_one_assigned(server):
    with modality(server.port) as m:
        status, uid = m.create(plain_create(patient_id="NOUID"))
        assert status.Status == 0x0000
        assert uid, "no Affected SOP Instance UID in the N-CREATE-RSP"
        assert all(p.isdigit() for p in uid.split(".")) and len(uid) <= 64
        status, got = m.get(uid, [tag("PatientID"), tag("SOPInstanceUID")])
        assert status.Status == 0x0000
        assert got.PatientID == "NOUID" and got.SOPInstanceUID == uid
        assert m.set(uid, n_set_completed([series(1)])).Status == 0x0000
        # a second one gets a different UID
        status, other = m.create(plain_create())
        assert status.Status == 0x0000 and other and other != uid
    assert "(UID assigned)" in server.log()


# --- N-SET / N-GET statuses ----------------------------------------------------------------------


def test_unknown_instance_gets_0112(server):
    with modality(server.port) as m:
        unknown = generate_uid()
        assert m.set(unknown, n_set_progress([series(1)])).Status == 0x0112
        assert m.get(unknown)[0].Status == 0x0112
        assert m.get(unknown, [tag("PatientName")])[0].Status == 0x0112
        assert m.get(unknown, sop_class=MPPS_RETRIEVE)[0].Status == 0x0112
    assert echo(server.port) == 0x0000


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
def test_n_set_on_a_final_instance_gets_0110_a710(server, final):
    with modality(server.port) as m:
        uid = generate_uid()
        assert m.create(plain_create(), uid)[0].Status == 0x0000
        done = (
            n_set_completed([series(2)])
            if final == "COMPLETED"
            else n_set_discontinued(reason=discontinuation_reason("110501"))
        )
        assert m.set(uid, done).Status == 0x0000
        for attempt in (
            n_set_progress([series(1)]),
            n_set_completed([series(1)]),
            n_set_discontinued(),
        ):
            status = m.set(uid, attempt)
            assert status.Status == 0x0110
            assert status.ErrorComment == NO_LONGER_UPDATED
            assert status.ErrorID == 0xA710
        got = m.fetch(uid)
        assert got.PerformedProcedureStepStatus == final
    assert echo(server.port) == 0x0000


@pytest.mark.parametrize("keyword,new_value", [("PatientName", "Other^Name"), ("Modality", "MR")])
def test_n_set_of_a_create_only_attribute_is_a_0107_warning(server, keyword, new_value):
    with modality(server.port) as m:
        uid = generate_uid()
        assert (
            m.create(plain_create(patient_name="Test^Patient", modality="CT"), uid)[0].Status
            == 0x0000
        )
        mods = Dataset()
        setattr(mods, keyword, new_value)
        mods.PerformedProcedureStepDescription = "changed description"
        status = m.set(uid, mods)
        assert status.Status == 0x0107
        assert tag(keyword) in identifiers(status)
        assert tag("PerformedProcedureStepDescription") not in identifiers(status)
        status, got = m.get(uid, [tag(keyword), tag("PerformedProcedureStepDescription")])
        assert status.Status == 0x0000
        assert got.PerformedProcedureStepDescription == "changed description"
        assert str(got[keyword].value) == {"PatientName": "Test^Patient", "Modality": "CT"}[keyword]
    assert echo(server.port) == 0x0000


def test_n_set_repeating_a_create_only_value_is_silent(server):
    with modality(server.port) as m:
        uid = generate_uid()
        assert m.create(plain_create(patient_name="Test^Patient"), uid)[0].Status == 0x0000
        mods = Dataset()
        mods.PatientName = "Test^Patient"
        mods.PerformedProcedureStepDescription = "same name"
        status = m.set(uid, mods)
        assert status.Status == 0x0000
        assert "AttributeIdentifierList" not in status
        got = m.fetch(uid)
        assert got.PerformedProcedureStepDescription == "same name"


def test_n_set_of_an_attribute_outside_the_iod_is_a_0107_warning(server):
    with modality(server.port) as m:
        uid = generate_uid()
        assert m.create(plain_create(), uid)[0].Status == 0x0000
        mods = Dataset()
        mods.StudyDescription = "not an MPPS attribute"
        mods.PerformedProcedureStepDescription = "applied"
        status = m.set(uid, mods)
        assert status.Status == 0x0107
        assert identifiers(status) == [tag("StudyDescription")]
        got = m.fetch(uid)
        assert "StudyDescription" not in got
        assert got.PerformedProcedureStepDescription == "applied"
    assert echo(server.port) == 0x0000


def test_completed_without_performed_series_gets_0121_and_stays_in_progress(server):
    with modality(server.port) as m:
        uid = generate_uid()
        assert m.create(plain_create(), uid)[0].Status == 0x0000
        status = m.set(uid, n_set_completed([]))
        assert status.Status == 0x0121
        assert "PerformedSeriesSequence" in status.ErrorComment
        got = m.fetch(uid)
        assert got.PerformedProcedureStepStatus == "IN PROGRESS"
        # the same status again is fine, and so is a correct completion afterwards
        assert m.set(uid, n_set_progress([series(1)])).Status == 0x0000
        assert m.set(uid, n_set_progress([series(1)])).Status == 0x0000
        assert m.set(uid, n_set_completed([series(1)])).Status == 0x0000
        got = m.fetch(uid)
        assert got.PerformedProcedureStepStatus == "COMPLETED"
    assert echo(server.port) == 0x0000


def test_n_set_of_an_unknown_status_gets_0106(server):
    with modality(server.port) as m:
        uid = generate_uid()
        assert m.create(plain_create(), uid)[0].Status == 0x0000
        mods = n_set_completed([series(1)])
        mods.PerformedProcedureStepStatus = "FINISHED"
        assert m.set(uid, mods).Status == 0x0106
        got = m.fetch(uid)
        assert got.PerformedProcedureStepStatus == "IN PROGRESS"
        assert len(got.PerformedSeriesSequence) == 0  # nothing of the refused N-SET stuck
    assert echo(server.port) == 0x0000


def test_n_get_with_and_without_a_tag_list_and_on_the_retrieve_class(server):
    create = plain_create(patient_name="Get^Me", patient_id="GET01", pps_id="PPSGET")
    uid = generate_uid()
    with modality(server.port) as m:
        assert m.create(create, uid)[0].Status == 0x0000
        status, got = m.get(uid, [tag("PatientName"), tag("PerformedProcedureStepID")])
        assert status.Status == 0x0000
        assert str(got.PatientName) == "Get^Me" and got.PerformedProcedureStepID == "PPSGET"
        assert "PatientID" not in got and "Modality" not in got

        status, everything = m.get(uid)
        assert status.Status == 0x0000
        assert everything.SOPInstanceUID == uid
        assert everything.SOPClassUID == MPPS
        assert_contains(create, everything)

        status, retrieved = m.get(uid, sop_class=MPPS_RETRIEVE)
        assert status.Status == 0x0000
        assert_contains(create, retrieved)
        status, some = m.get(uid, [tag("PatientID"), tag("Modality")], sop_class=MPPS_RETRIEVE)
        assert status.Status == 0x0000
        assert some.PatientID == "GET01" and some.Modality == "CT"


@pytest.mark.parametrize("sop_class", [MPPS, MPPS_RETRIEVE], ids=["mpps", "retrieve"])
def test_n_get_of_a_single_attribute(server, sop_class):
    """An Attribute Identifier List with one tag (VM 1) is a list too."""
    with modality(server.port) as m:
        uid = generate_uid()
        assert m.create(plain_create(patient_id="ONE01"), uid)[0].Status == 0x0000
        status, got = m.get(uid, [tag("PatientID")], sop_class=sop_class)
        assert status.Status == 0x0000, status
        assert got.PatientID == "ONE01"
    assert echo(server.port) == 0x0000


def test_discontinued_with_a_reason_discontinues_the_worklist_item(server):
    item = sample_item(server.port, "A10002")
    assert worklist_status(server.port, "A10002") == "SCHEDULED"
    with modality(server.port) as m:
        uid = generate_uid()
        assert m.create(create_for(item), uid)[0].Status == 0x0000
        assert worklist_status(server.port, "A10002") == "IN PROGRESS"
        status = m.set(uid, n_set_discontinued(reason=discontinuation_reason("110514")))
        assert status.Status == 0x0000
        got = m.fetch(uid)
        assert got.PerformedProcedureStepStatus == "DISCONTINUED"
        reason = got.PerformedProcedureStepDiscontinuationReasonCodeSequence[0]
        assert reason.CodeValue == "110514" and reason.CodingSchemeDesignator == "DCM"
        assert got.PerformedProcedureStepEndDate  # set by the SCP when absent, here given
    assert worklist_status(server.port, "A10002") == "DISCONTINUED"
    assert "A10002" not in default_statuses(server.port)


# --- workflows ----------------------------------------------------------------------------


def test_ihe_cycle_scheduled_in_progress_completed(server):
    port = server.port
    item = sample_item(port, "A10001")
    sps = item.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepID == "S10001"
    assert default_statuses(port, "A10001") == {"A10001": "SCHEDULED"}

    uid = generate_uid()
    with modality(port, "US01") as m:
        create = n_create(
            [
                ScheduledStep(
                    item.StudyInstanceUID,
                    "A10001",
                    sps_id="S10001",
                    requested_procedure_id="RP10001",
                )
            ],
            modality="US",
            station_ae_title="US01",
            patient_name=str(item.PatientName),
            patient_id=item.PatientID,
        )
        assert m.create(create, uid)[0].Status == 0x0000
        assert default_statuses(port, "A10001") == {"A10001": "IN PROGRESS"}

        findscu = require_tool("findscu")
        done = subprocess.run(
            [
                findscu,
                "-W",
                "-v",
                "-aec",
                "WORKLISTS",
                "127.0.0.1",
                str(port),
                "-k",
                "AccessionNumber=A10001",
                "-k",
                "(0040,0100)[0].ScheduledProcedureStepStatus",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert "IN PROGRESS" in out, out

        first = series(1)
        assert m.set(uid, n_set_progress([first])).Status == 0x0000
        assert default_statuses(port, "A10001") == {"A10001": "IN PROGRESS"}

        both = [first, series(2)]
        assert m.set(uid, n_set_completed(both)).Status == 0x0000
        got = m.fetch(uid)
        assert got.PerformedProcedureStepStatus == "COMPLETED"
        assert len(got.PerformedSeriesSequence) == 2
        assert sum(len(s.ReferencedImageSequence) for s in got.PerformedSeriesSequence) == 3
        assert got.ScheduledStepAttributesSequence[0].AccessionNumber == "A10001"

    assert default_statuses(port, "A10001") == {}
    done = query(AccessionNumber="A10001")
    done.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = "COMPLETED"
    statuses, found = find(port, done)
    assert statuses[-1].Status == 0x0000
    assert [d.AccessionNumber for d in found] == ["A10001"]
    assert found[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "COMPLETED"


def test_one_mpps_for_two_scheduled_steps(server):
    port = server.port
    first, second = sample_item(port, "A10004"), sample_item(port, "A10012")
    assert first.PatientID == second.PatientID  # the same patient, two orders
    uid = generate_uid()
    with modality(port, "CR01") as m:
        create = n_create(
            [step_of(first), step_of(second)],
            modality="CR",
            station_ae_title="CR01",
            patient_name=str(first.PatientName),
            patient_id=first.PatientID,
        )
        assert m.create(create, uid)[0].Status == 0x0000
        assert default_statuses(port, "A10004") == {"A10004": "IN PROGRESS"}
        assert default_statuses(port, "A10012") == {"A10012": "IN PROGRESS"}
        assert m.set(uid, n_set_completed([series(1), series(1)])).Status == 0x0000
        got = m.fetch(uid)
        assert [s.AccessionNumber for s in got.ScheduledStepAttributesSequence] == [
            "A10004",
            "A10012",
        ]
    assert worklist_status(port, "A10004") == "COMPLETED"
    assert worklist_status(port, "A10012") == "COMPLETED"
    assert "A10004" not in default_statuses(port) and "A10012" not in default_statuses(port)


def test_unscheduled_mpps_changes_no_worklist_item(server):
    port = server.port
    before = default_statuses(port)
    assert len(before) >= 20 and set(before.values()) == {"SCHEDULED"}
    study = generate_uid()
    uid = generate_uid()
    with modality(port) as m:
        create = n_create(
            [ScheduledStep(study)],
            modality="CT",
            station_ae_title="CT01",
            patient_name="Walk^In",
            patient_id="WALKIN1",
        )
        assert create.ScheduledStepAttributesSequence[0].AccessionNumber == ""
        assert m.create(create, uid)[0].Status == 0x0000
        assert default_statuses(port) == before
        status, got = m.get(uid)
        assert status.Status == 0x0000
        assert got.ScheduledStepAttributesSequence[0].StudyInstanceUID == study
        assert str(got.PatientName) == "Walk^In"
        assert m.set(uid, n_set_completed([series(2)])).Status == 0x0000
    assert default_statuses(port) == before
    assert "linked nothing (unscheduled)" in server.log()


def test_mpps_survives_sigkill_of_the_server(live_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    server = live_server(url, "--sample-file", str(SAMPLE))
    item = sample_item(server.port, "A10008")
    start = dt.datetime(2024, 3, 5, 9, 30, 15)
    create = n_create(
        [step_of(item)],
        modality="CT",
        station_ae_title="CT01",
        patient_name="Müller^Hans",
        patient_id=item.PatientID,
        pps_id="PPS-DUR-1",
        start=start,
        description="CT Thorax",
    )
    uid = generate_uid()
    with modality(server.port, "CT01") as m:
        assert m.create(create, uid)[0].Status == 0x0000
    server.kill()

    server = live_server(url, "--sample-file", str(SAMPLE))
    assert worklist_status(server.port, "A10008") == "IN PROGRESS"
    completed = n_set_completed([series(2), series(1)], end=start + dt.timedelta(minutes=20))
    with modality(server.port, "CT01") as m:
        assert m.set(uid, completed).Status == 0x0000
        status, got = m.get(uid, [])
    assert status.Status == 0x0000
    assert str(got.PatientName) == "Müller^Hans"
    assert got.PatientID == item.PatientID == "PID00001"
    assert got.ScheduledStepAttributesSequence[0].AccessionNumber == "A10008"
    assert got.PerformedProcedureStepID == "PPS-DUR-1"
    assert got.Modality == "CT"
    assert got.PerformedProcedureStepStartDate == "20240305"
    assert got.PerformedProcedureStepStartTime == "093015"
    assert got.PerformedProcedureStepEndTime == "095015"
    assert got.PerformedProcedureStepStatus == "COMPLETED"
    expected = Dataset()
    for elem in create:
        expected[elem.tag] = elem
    for elem in completed:
        expected[elem.tag] = elem
    assert_contains(expected, got)
    assert worklist_status(server.port, "A10008") == "COMPLETED"


# --- concurrency --------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def race_server(request, live_server, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        done = subprocess.run(
            [sys.executable, "-m", "worklist_mpps", "db", "upgrade", "--database-url", url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    return live_server(url, "--sample-file", str(SAMPLE))


def run_at_once(port: int, uid: str, requests: list[Dataset]) -> list:
    """Send each N-SET from its own association, all released by one barrier."""
    barrier = threading.Barrier(len(requests), timeout=THREAD_TIMEOUT)
    results: list = [None] * len(requests)

    def worker(n: int) -> None:
        try:
            with modality(port, f"MOD{n}") as m:
                barrier.wait()
                results[n] = m.set(uid, requests[n])
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[n] = exc
            barrier.abort()

    threads = [
        threading.Thread(target=worker, args=(n,), daemon=True) for n in range(len(requests))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(THREAD_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "an N-SET thread hung"
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_completed_and_discontinued_race_has_exactly_one_winner(race_server):
    port = race_server.port
    for accession in ("A10021", "A10022", "A10023", "A10024", "A10025"):
        item = sample_item(port, accession)
        uid = generate_uid()
        with modality(port) as m:
            assert m.create(create_for(item), uid)[0].Status == 0x0000
        outcomes = run_at_once(
            port,
            uid,
            [
                n_set_completed([series(1)]),
                n_set_discontinued(reason=discontinuation_reason("110501")),
            ],
        )
        codes = [s.Status for s in outcomes]
        assert sorted(codes) == [0x0000, 0x0110], (accession, codes)
        loser = outcomes[codes.index(0x0110)]
        assert loser.ErrorID == 0xA710 and loser.ErrorComment == NO_LONGER_UPDATED
        winner = ("COMPLETED", "DISCONTINUED")[codes.index(0x0000)]
        with modality(port) as m:
            got = m.fetch(uid)
        assert got.PerformedProcedureStepStatus == winner, accession
        if winner == "COMPLETED":
            assert len(got.PerformedSeriesSequence) == 1
            assert not got.PerformedProcedureStepDiscontinuationReasonCodeSequence
        else:
            assert (
                got.PerformedProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110501"
            )
        assert worklist_status(port, accession) == winner
    assert echo(port) == 0x0000


def test_concurrent_progress_updates_all_succeed(race_server):
    port = race_server.port
    item = sample_item(port, "A10026")
    uid = generate_uid()
    with modality(port) as m:
        assert m.create(create_for(item), uid)[0].Status == 0x0000
    descriptions = [f"step {n}" for n in range(6)]
    requests = []
    for text in descriptions:
        mods = n_set_progress([series(1)])
        mods.PerformedProcedureStepDescription = text
        requests.append(mods)
    outcomes = run_at_once(port, uid, requests)
    assert [s.Status for s in outcomes] == [0x0000] * 6

    def n_set_lines() -> int:
        return sum(
            1
            for line in race_server.log().splitlines()
            if "N-SET from" in line and f": {uid} IN PROGRESS" in line
        )

    assert wait_for(lambda: n_set_lines() == 6), race_server.log()[-3000:]
    with modality(port) as m:
        got = m.fetch(uid)
    assert got.PerformedProcedureStepStatus == "IN PROGRESS"
    assert got.PerformedProcedureStepDescription in descriptions
    assert len(got.PerformedSeriesSequence) == 1
    assert worklist_status(port, "A10026") == "IN PROGRESS"
