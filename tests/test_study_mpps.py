"""Which MPPS belong to a study, and their aggregate state (services/study_mpps.py)."""

from __future__ import annotations

from sqlalchemy import select

from worklist_mpps.db.models import MPPSTracking, WorklistItem
from worklist_mpps.services import schedule, study_mpps


def test_aggregate_status():
    agg = study_mpps.aggregate_status
    assert agg(["IN PROGRESS"]) == "IN PROGRESS"
    assert agg(["COMPLETED", "IN PROGRESS"]) == "IN PROGRESS"
    assert agg(["DISCONTINUED", "COMPLETED"]) == "COMPLETED"
    assert agg(["DISCONTINUED", "DISCONTINUED"]) == "DISCONTINUED"
    assert agg(["COMPLETED"]) == "COMPLETED"


def test_the_mpps_of_a_study(db):
    study = schedule.create_item(db, None, {"patient_id": "P"}, {"accession_number": "A"})[
        "study_instance_uid"
    ]
    with db.write() as session:
        item = session.scalars(select(WorklistItem)).one()
        for uid, status, own_study, linked in (
            ("1.1", "COMPLETED", study, False),  # by its own Study Instance UID
            ("1.2", "IN PROGRESS", None, True),  # no study UID: by its item
            ("1.3", "COMPLETED", "9.9.9", True),  # its own other study: not this one
            ("1.4", "COMPLETED", "9.9.8", False),  # another study altogether
        ):
            record = MPPSTracking(
                sop_instance_uid=uid,
                status=status,
                study_instance_uid=own_study,
                start_datetime="20260101090000",
                dataset=b"",
            )
            session.add(record)
            if linked:
                item.mpps.append(record)
    with db.read() as session:
        steps = study_mpps.study_steps(session, [study], "1.1")
        assert [(s.uid, s.status) for s in steps] == [("1.1", "COMPLETED"), ("1.2", "IN PROGRESS")]
        assert [s.uid for s in study_mpps.study_steps(session, ["9.9.8"], "1.4")] == ["1.4"]
