"""Several MPPS on one study, against a real Orthanc: the study metadata shows their
aggregate, whatever order the notifications are delivered in (issue 16, deliverable 4)."""

from __future__ import annotations

import json

import pytest
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

import test_orthanc_hook
from conftest import wait_for
from dicom_clients import associate
from orthanc_server import new_uids
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    discontinuation_reason,
    n_create,
    n_set_completed,
    n_set_discontinued,
)

pytestmark = pytest.mark.dimse

# the real Orthanc and a server notifying it
orthanc, hooked = test_orthanc_hook.orthanc, test_orthanc_hook.hooked


def create(port: int, uid: str, study: str) -> None:
    assoc = associate(port, MPPS, ae_title="CT01")
    try:
        ds = n_create(
            [ScheduledStep(study, "ACC-S")], modality="CT", station_ae_title="CT01", patient_id="P"
        )
        assert assoc.send_n_create(ds, MPPS, uid)[0].Status == 0
    finally:
        assoc.release()


def finish(port: int, uid: str, final) -> None:
    assoc = associate(port, MPPS, ae_title="CT01")
    try:
        assert assoc.send_n_set(final, MPPS, uid)[0].Status == 0
    finally:
        assoc.release()


def listed(orthanc, study: str) -> dict[str, str]:
    """uid -> status of the study's MppsList metadata ({} while absent)."""
    raw = orthanc.metadata(study).get("MppsList")
    return {e["uid"]: e["status"] for e in json.loads(raw)} if raw else {}


def shape(meta: dict, names: dict[str, str]) -> dict:
    """The metadata with the MPPS UIDs replaced by their role, to compare two runs."""
    out = {k: v for k, v in meta.items() if k.startswith("Mpps")}
    out["MppsList"] = sorted(
        (names[e["uid"]], e["status"], e.get("reason")) for e in json.loads(out["MppsList"])
    )
    out["MppsInstanceUID"] = names[out["MppsInstanceUID"]]
    return out


def two_steps(hooked, orthanc, first_done: str) -> dict:
    """A study acquired in two steps (one series each); ``first_done`` completes first."""
    study, s1, s2 = new_uids(3)
    a, b = new_uids(2)
    orthanc.upload(study, s1, a)
    orthanc.upload(study, s2, b)
    one, two = generate_uid(), generate_uid()
    create(hooked.port, one, study)
    create(hooked.port, two, study)
    both = {one: "IN PROGRESS", two: "IN PROGRESS"}
    assert wait_for(lambda: listed(orthanc, study) == both)
    finals = {
        one: n_set_completed([Series(s1, [Instance(CTImageStorage, a)])]),
        two: n_set_completed([Series(s2, [Instance(CTImageStorage, b)])]),
    }
    order = [one, two] if first_done == "one" else [two, one]
    finish(hooked.port, order[0], finals[order[0]])
    assert wait_for(lambda: listed(orthanc, study).get(order[0]) == "COMPLETED")
    meta = orthanc.metadata(study)
    assert meta["MppsStatus"] == "IN PROGRESS", "one step is still in progress"
    assert "MppsCompleteness" not in meta
    finish(hooked.port, order[1], finals[order[1]])
    meta = wait_for(
        lambda: (m := orthanc.metadata(study)).get("MppsCompleteness") == "complete" and m
    )
    return shape(meta, {one: "one", two: "two"})


def test_two_mpps_give_the_same_aggregate_in_either_order(hooked, orthanc):
    forward = two_steps(hooked, orthanc, "one")
    backward = two_steps(hooked, orthanc, "two")
    assert forward == backward
    assert forward["MppsStatus"] == "COMPLETED"
    assert forward["MppsList"] == [("one", "COMPLETED", None), ("two", "COMPLETED", None)]
    # completeness counts the images of both steps
    assert (forward["MppsExpected"], forward["MppsReceived"], forward["MppsMissing"]) == (
        "2",
        "2",
        "[]",
    )
    assert "MppsDiscontinuationReason" not in forward


def mistake_and_real(hooked, orthanc, discontinue_last: bool) -> dict:
    """An MPPS sent by mistake (wrong worklist entry, discontinued) and the real one."""
    study, series_uid, image = new_uids(3)
    orthanc.upload(study, series_uid, image)
    wrong, right = generate_uid(), generate_uid()
    create(hooked.port, wrong, study)
    create(hooked.port, right, study)
    assert wait_for(lambda: len(listed(orthanc, study)) == 2)
    wrong_final = n_set_discontinued(reason=discontinuation_reason("110514"))
    right_final = n_set_completed([Series(series_uid, [Instance(CTImageStorage, image)])])
    steps = [(right, right_final), (wrong, wrong_final)]
    if not discontinue_last:
        steps.reverse()
    for uid, final in steps:
        finish(hooked.port, uid, final)
        assert wait_for(lambda u=uid: listed(orthanc, study).get(u) != "IN PROGRESS")
    meta = wait_for(
        lambda: (m := orthanc.metadata(study)).get("MppsCompleteness") == "complete" and m
    )
    return shape(meta, {wrong: "wrong", right: "right"})


def test_a_discontinued_mistake_and_a_completed_step_give_completed(hooked, orthanc):
    last = mistake_and_real(hooked, orthanc, discontinue_last=True)
    first = mistake_and_real(hooked, orthanc, discontinue_last=False)
    assert last == first
    assert last["MppsStatus"] == "COMPLETED"
    assert last["MppsList"] == [
        ("right", "COMPLETED", None),
        ("wrong", "DISCONTINUED", "110514 Incorrect worklist entry selected"),
    ]
    assert "MppsDiscontinuationReason" not in last
    assert (last["MppsExpected"], last["MppsReceived"]) == ("1", "1")


def test_all_discontinued_give_discontinued_with_the_reason(hooked, orthanc):
    study, _ = new_uids(2)
    orthanc.upload(study, *new_uids(2))
    one, two = generate_uid(), generate_uid()
    create(hooked.port, one, study)
    create(hooked.port, two, study)
    finish(hooked.port, one, n_set_discontinued(reason=discontinuation_reason("110501")))
    assert wait_for(lambda: listed(orthanc, study).get(one) == "DISCONTINUED")
    assert orthanc.metadata(study)["MppsStatus"] == "IN PROGRESS"
    finish(hooked.port, two, n_set_discontinued(reason=discontinuation_reason("110501")))
    meta = wait_for(
        lambda: (m := orthanc.metadata(study)).get("MppsStatus") == "DISCONTINUED" and m
    )
    assert meta["MppsDiscontinuationReason"] == "110501 Equipment failure"
    assert set(listed(orthanc, study).values()) == {"DISCONTINUED"}
