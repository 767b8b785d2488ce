"""MPPS rules (PS3.4 Annex F) at the function level, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import select

from conftest import SAMPLE
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
from worklist_mpps.db.models import MPPSTracking, WorklistItem
from worklist_mpps.services import dicom, links, mpps
from worklist_mpps.services.loader import load_file
from worklist_mpps.services.status import MPPSError

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def db_loaded(db):
    load_file(db, SAMPLE)
    return db


def item(db, accession: str) -> WorklistItem:
    with db.read() as s:
        return s.scalars(
            select(WorklistItem).where(WorklistItem.accession_number == accession)
        ).one()


def step(db, accession: str) -> ScheduledStep:
    it = item(db, accession)
    return ScheduledStep(
        it.study_instance_uid, accession, it.requested_procedure_id or "", sps_id=it.sps_id or ""
    )


def create(db, *steps: ScheduledStep, uid: str | None = "1.2.826.0.1.3680043.10.1.1", **kw):
    kw.setdefault("modality", "CT")
    kw.setdefault("station_ae_title", "CT01")
    return mpps.create(db, n_create(list(steps), **kw), uid, "CT01")


def series(n_images: int = 2, uid: str = "1.2.3.100") -> Series:
    return Series(
        uid, [Instance(CT, f"{uid}.{i}") for i in range(1, n_images + 1)], protocol_name="Thorax"
    )


def error(fn, *args, **kw) -> MPPSError:
    with pytest.raises(MPPSError) as exc:
        fn(*args, **kw)
    return exc.value


# --- N-CREATE ---------------------------------------------------------------------------------


def test_create_links_the_scheduled_step_and_starts_it(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10001"), patient_name="Müller^Hans")
    assert out.linked == ["A10001/S10001"] and out.pps_status == "IN PROGRESS"
    assert item(db_loaded, "A10001").sps_status == "IN PROGRESS"
    assert item(db_loaded, "A10002").sps_status == "SCHEDULED"
    summary, ds = mpps.show_step(db_loaded, out.uid)
    assert summary["accession_number"] == "A10001" and summary["status"] == "IN PROGRESS"
    assert ds.PatientName == "Müller^Hans" and ds.SOPInstanceUID == out.uid


@pytest.mark.parametrize("how", ["accession+step", "study+step", "study only", "accession only"])
def test_create_links_by_the_most_specific_identification(db_loaded, how):
    full = step(db_loaded, "A10003")
    ref = ScheduledStep(
        full.study_instance_uid if "study" in how else "1.2.999.1",
        full.accession_number if "accession" in how else "",
        sps_id=full.sps_id if "step" in how else "",
    )
    assert create(db_loaded, ref).linked == ["A10003/S10003"]


def test_one_mpps_covers_several_scheduled_steps(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10001"), step(db_loaded, "A10002"))
    assert sorted(out.linked) == ["A10001/S10001", "A10002/S10002"]
    mpps.update(db_loaded, out.uid, n_set_completed([series()]))
    assert {item(db_loaded, a).sps_status for a in ("A10001", "A10002")} == {"COMPLETED"}


def test_unscheduled_mpps_is_accepted_without_links(db_loaded):
    out = create(db_loaded, ScheduledStep("1.2.999.77"))
    assert out.linked == []
    assert mpps.get(db_loaded, out.uid)[1].PerformedProcedureStepStatus == "IN PROGRESS"


def test_create_status_must_be_in_progress(db_loaded):
    exc = error(create, db_loaded, step(db_loaded, "A10001"), status="COMPLETED")
    assert exc.status == 0x0106 and "IN PROGRESS" in exc.comment
    assert item(db_loaded, "A10001").sps_status == "SCHEDULED"


def test_duplicate_uid(db_loaded):
    create(db_loaded, step(db_loaded, "A10001"))
    assert error(create, db_loaded, step(db_loaded, "A10002")).status == 0x0111
    assert item(db_loaded, "A10002").sps_status == "SCHEDULED"


def test_missing_uid_is_generated(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10001"), uid=None)
    assert out.generated_uid and out.uid.startswith("2.25.")
    assert mpps.get(db_loaded, out.uid)[1].SOPInstanceUID == out.uid


@pytest.mark.parametrize("keyword", mpps.CREATE_TYPE1)
def test_missing_type1_attribute_and_value(db, keyword):
    ds = n_create([ScheduledStep("1.2.3")], modality="CT", station_ae_title="CT01")
    delattr(ds, keyword)
    exc = error(mpps.create, db, ds, "1.2.3.4.1")
    assert exc.status == 0x0120 and keyword in exc.comment
    ds = n_create([ScheduledStep("1.2.3")], modality="CT", station_ae_title="CT01")
    ds[keyword].value = Sequence() if ds[keyword].VR == "SQ" else ""
    exc = error(mpps.create, db, ds, "1.2.3.4.2")
    assert exc.status == 0x0121 and keyword in exc.comment


def test_scheduled_step_item_needs_study_uid(db):
    ds = n_create([ScheduledStep("1.2.3")], modality="CT", station_ae_title="CT01")
    del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    exc = error(mpps.create, db, ds, "1.2.3.4.3")
    assert exc.status == 0x0120 and "StudyInstanceUID" in exc.comment


def test_invalid_start_date_is_an_invalid_value(db):
    ds = n_create([ScheduledStep("1.2.3")], modality="CT", station_ae_title="CT01")
    ds.PerformedProcedureStepStartDate = "20261399"
    assert error(mpps.create, db, ds, "1.2.3.4.4").status == 0x0106


# --- N-SET ------------------------------------------------------------------------------------


def test_set_unknown_instance(db):
    assert error(mpps.update, db, "1.2.404", n_set_progress([])).status == 0x0112


def test_set_after_final_state_is_refused_with_a710(db_loaded):
    for final in (n_set_completed([series()]), n_set_discontinued()):
        out = create(db_loaded, step(db_loaded, "A10001"), uid=None)
        mpps.update(db_loaded, out.uid, final)
        exc = error(mpps.update, db_loaded, out.uid, n_set_progress([]))
        assert (exc.status, exc.error_id) == (0x0110, 0xA710)
        assert exc.comment == "Performed Procedure Step Object may no longer be updated"


def test_create_only_change_is_not_applied_but_allowed_changes_are(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10001"), patient_name="Müller^Hans")
    mods = Dataset()
    mods.PatientName = "Someone^Else"
    mods.Modality = "CT"  # identical repeat: silent
    mods.PerformedProcedureStepDescription = "Thorax native"
    mods.StudyDescription = "not an MPPS attribute"
    result = mpps.update(db_loaded, out.uid, mods)
    assert result.status == 0x0107
    assert result.attributes == [0x00081030, 0x00100010]
    ds = mpps.get(db_loaded, out.uid)[1]
    assert ds.PatientName == "Müller^Hans"
    assert ds.PerformedProcedureStepDescription == "Thorax native"
    assert "StudyDescription" not in ds


def test_identical_repeat_of_create_attributes_is_silent(db_loaded):
    ds = n_create(
        [step(db_loaded, "A10001")],
        modality="CT",
        station_ae_title="CT01",
        patient_name="Müller^Hans",
    )
    out = mpps.create(db_loaded, ds, "1.2.5.5", "CT01")
    repeat = n_create(
        [step(db_loaded, "A10001")],
        modality="CT",
        station_ae_title="CT01",
        patient_name="Müller^Hans",
        pps_id=ds.PerformedProcedureStepID,
        start=None,
    )
    repeat.PerformedProcedureStepStartDate = ds.PerformedProcedureStepStartDate
    repeat.PerformedProcedureStepStartTime = ds.PerformedProcedureStepStartTime
    assert mpps.update(db_loaded, out.uid, repeat).status == 0x0000


def test_sequences_are_replaced_whole_and_in_progress_repeats(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10001"))
    mpps.update(db_loaded, out.uid, n_set_progress([series(2, "1.2.3.1"), series(1, "1.2.3.2")]))
    mpps.update(db_loaded, out.uid, n_set_progress([series(3, "1.2.3.3")]))
    ds = mpps.get(db_loaded, out.uid)[1]
    assert [s.SeriesInstanceUID for s in ds.PerformedSeriesSequence] == ["1.2.3.3"]
    assert mpps.show_step(db_loaded, out.uid)[0]["instances"] == 3


@pytest.mark.parametrize(
    "remove,code,name",
    [
        ("series", 0x0121, "PerformedSeriesSequence"),
        ("end_date_value", 0x0121, "PerformedProcedureStepEndDate"),
        ("series_uid", 0x0120, "SeriesInstanceUID"),
    ],
)
def test_completed_requires_end_and_series(db_loaded, remove, code, name):
    out = create(db_loaded, step(db_loaded, "A10001"))
    mods = n_set_completed([series()])
    if remove == "series":
        mods.PerformedSeriesSequence = Sequence()
    elif remove == "end_date_value":
        mods.PerformedProcedureStepEndDate = ""
    else:
        del mods.PerformedSeriesSequence[0].SeriesInstanceUID
    exc = error(mpps.update, db_loaded, out.uid, mods)
    assert exc.status == code and name in exc.comment
    assert mpps.get(db_loaded, out.uid)[1].PerformedProcedureStepStatus == "IN PROGRESS"
    assert item(db_loaded, "A10001").sps_status == "IN PROGRESS"
    assert mpps.update(db_loaded, out.uid, n_set_completed([series()])).status == 0


def test_invalid_status_value(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10001"))
    mods = Dataset()
    mods.PerformedProcedureStepStatus = "FINISHED"
    assert error(mpps.update, db_loaded, out.uid, mods).status == 0x0106


def test_discontinued_keeps_reason_and_moves_items(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10004"))
    mpps.update(db_loaded, out.uid, n_set_discontinued(reason=discontinuation_reason("110514")))
    ds = mpps.get(db_loaded, out.uid)[1]
    assert ds.PerformedProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110514"
    assert item(db_loaded, "A10004").sps_status == "DISCONTINUED"
    assert "110514" in mpps.show_step(db_loaded, out.uid)[0]["discontinuation_reason"]


def test_discontinued_without_end_time_gets_one(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10004"))
    mods = Dataset()
    mods.PerformedProcedureStepStatus = "DISCONTINUED"
    mpps.update(db_loaded, out.uid, mods)
    ds = mpps.get(db_loaded, out.uid)[1]
    assert len(ds.PerformedProcedureStepEndDate) == 8 and ds.PerformedProcedureStepEndTime


def test_item_status_follows_all_its_steps(db_loaded):
    first = create(db_loaded, step(db_loaded, "A10005"), uid="1.2.7.1")
    second = create(db_loaded, step(db_loaded, "A10005"), uid="1.2.7.2")
    mpps.update(db_loaded, first.uid, n_set_discontinued())
    assert item(db_loaded, "A10005").sps_status == "IN PROGRESS"
    mpps.update(db_loaded, second.uid, n_set_completed([series()]))
    assert item(db_loaded, "A10005").sps_status == "COMPLETED"
    assert links.derived_item_status(["DISCONTINUED"]) == "DISCONTINUED"


def test_character_sets_combine(db_loaded):
    """F.7.2.2.3: an N-SET in another character set does not replace the N-CREATE one."""
    ds = n_create(
        [step(db_loaded, "A10001")], modality="CT", station_ae_title="CT01", charset="ISO_IR 100"
    )
    ds.PatientName = "Müller^Hans"
    latin1 = dicom.decode_dataset(dicom.encode_dataset(ds))  # raw ISO_IR 100 bytes
    out = mpps.create(db_loaded, latin1, "1.2.8.1", "CT01")
    mods = Dataset()
    mods.SpecificCharacterSet = "ISO_IR 192"
    mods.CommentsOnThePerformedProcedureStep = "Пациент спокоен"
    mpps.update(db_loaded, out.uid, dicom.decode_dataset(dicom.encode_dataset(mods)))
    got = mpps.get(db_loaded, out.uid)[1]
    assert got.SpecificCharacterSet == "ISO_IR 192"
    assert got.PatientName == "Müller^Hans"
    assert got.CommentsOnThePerformedProcedureStep == "Пациент спокоен"


# --- N-GET ------------------------------------------------------------------------------------


def test_get_subset_all_and_unknown(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10001"), patient_name="Doe^Jane")
    status, ds = mpps.get(db_loaded, out.uid, [0x00100010, 0x00400252])
    assert status == 0 and [e.keyword for e in ds] == [
        "PatientName",
        "PerformedProcedureStepStatus",
    ]
    status, ds = mpps.get(db_loaded, out.uid, [0x00100010, 0x00091001])  # a private tag
    assert status == 0x0001 and "PatientName" in ds
    status, ds = mpps.get(db_loaded, out.uid)
    assert status == 0 and "ScheduledStepAttributesSequence" in ds and "Modality" in ds
    assert error(mpps.get, db_loaded, "1.2.404").status == 0x0112


# --- concurrency --------------------------------------------------------------------------------


def _race(fns) -> list:
    barrier = threading.Barrier(len(fns))
    results: list = [None] * len(fns)

    def run(i, fn):
        barrier.wait(timeout=10)
        try:
            results[i] = fn()
        except MPPSError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_racing_final_transitions_one_wins(db_loaded):
    for n in range(5):
        out = create(db_loaded, step(db_loaded, "A10006"), uid=f"1.2.9.{n}")
        results = _race(
            [
                lambda uid=out.uid: mpps.update(db_loaded, uid, n_set_completed([series()])),
                lambda uid=out.uid: mpps.update(db_loaded, uid, n_set_discontinued()),
            ]
        )
        winners = [r for r in results if isinstance(r, mpps.Outcome)]
        losers = [r for r in results if isinstance(r, MPPSError)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert (losers[0].status, losers[0].error_id) == (0x0110, 0xA710)
        stored = mpps.get(db_loaded, out.uid)[1].PerformedProcedureStepStatus
        assert stored == winners[0].pps_status


def test_concurrent_updates_lose_nothing(db_loaded):
    out = create(db_loaded, step(db_loaded, "A10007"))
    results = _race(
        [
            (lambda i=i: mpps.update(db_loaded, out.uid, n_set_progress([series(1, f"1.2.4.{i}")])))
            for i in range(6)
        ]
    )
    assert all(isinstance(r, mpps.Outcome) for r in results), results
    with db_loaded.read() as s:
        record = s.scalars(
            select(MPPSTracking).where(MPPSTracking.sop_instance_uid == out.uid)
        ).one()
        assert record.version == 7  # created + six serialized updates


# --- operators' commands ------------------------------------------------------------------------


def test_mpps_list_and_show_commands(tmp_path):
    import json
    import subprocess
    import sys

    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database

    url = f"sqlite:///{tmp_path / 'ops.db'}"
    db = Database(url)
    migrate.upgrade(db.engine)
    load_file(db, SAMPLE)
    done = create(db, step(db, "A10001"), patient_name="Müller^Hans", uid="1.2.10.1")
    mpps.update(db, done.uid, n_set_completed([series(3)]))
    create(db, step(db, "A10002"), uid="1.2.10.2")
    db.dispose()

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "worklist_mpps", "mpps", *args, "--database-url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    rows = json.loads(run("list", "--json"))
    assert [(r["sop_instance_uid"], r["status"]) for r in rows] == [
        ("1.2.10.2", "IN PROGRESS"),
        ("1.2.10.1", "COMPLETED"),
    ]
    assert rows[1]["series"] == 1 and rows[1]["instances"] == 3
    assert rows[1]["worklist_items"] == ["A10001/S10001"]
    assert (
        json.loads(run("list", "--json", "--status", "COMPLETED"))[0]["accession_number"]
        == "A10001"
    )
    table = run("list")
    assert table.splitlines()[0].startswith("STATUS") and "Müller^Hans" in table
    shown = json.loads(run("show", "1.2.10.1", "--json"))
    assert shown["status"] == "COMPLETED"
    assert shown["dataset"]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Hans"
    text = run("show", "1.2.10.1")
    assert "A10001/S10001" in text and "Performed Series Sequence" in text
    missing = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "mpps", "show", "9.9", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "No such SOP Instance" in missing.stderr
