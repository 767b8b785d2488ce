"""N-CREATE with a SOP Instance UID in use (PS3.4 F.7.2.1, PS3.18 15.4): 0x0111 Duplicate
SOP Instance whatever else the request holds, on SQLite and PostgreSQL; the UID is looked
up by a statement of its own only when the request fails otherwise (issue 18)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, func, select

from worklist_mpps.client.messages import ScheduledStep, n_create
from worklist_mpps.db.models import AuditEvent, MPPSTracking
from worklist_mpps.services import mpps
from worklist_mpps.services.status import MPPSError

UID = "1.2.826.0.1.3680043.10.1.77"


def create(db, uid: str | None = UID, **kw):
    kw.setdefault("modality", "CT")
    kw.setdefault("station_ae_title", "CT01")
    return mpps.create(db, n_create([ScheduledStep("1.2.999.77")], **kw), uid, "CT01")


def status_of(db, **kw) -> int:
    with pytest.raises(MPPSError) as exc:
        create(db, **kw)
    return exc.value.status


def counts(db) -> tuple[int, int]:
    with db.read() as s:
        return (
            s.scalar(select(func.count()).select_from(MPPSTracking)),
            s.scalar(select(func.count()).select_from(AuditEvent)),
        )


INVALID = [
    {"status": "COMPLETED"},  # must be IN PROGRESS at N-CREATE
    {"modality": ""},  # Type 1 without a value
    {"station_ae_title": ""},
]


@pytest.mark.parametrize("kw", INVALID)
def test_duplicate_and_invalid_is_duplicate(db, kw):
    create(db)
    assert status_of(db, **kw) == 0x0111


@pytest.mark.parametrize("kw", INVALID)
def test_invalid_without_duplicate_is_invalid(db, kw):
    assert status_of(db, **kw) in (0x0106, 0x0120, 0x0121)


def test_duplicate_and_valid_is_duplicate(db):
    create(db)
    before = counts(db)
    assert status_of(db) == 0x0111
    assert counts(db) == before  # nothing written: no second row, no audit row


def test_success_path_looks_up_no_uid(db):
    """A valid N-CREATE sends no SELECT of its own for the UID: the unique constraint
    answers a duplicate in the transaction."""
    sent: list[str] = []

    def seen(conn, cursor, statement, *args):
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        create(db)
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert not [s for s in sent if s.lstrip().upper().startswith("SELECT") and "mpps" in s]


def test_n_set_of_unscheduled_step_reads_no_links(db):
    """An N-SET of a step linked to no worklist item reads the link table only inside
    the row's SELECT (issue 18)."""
    create(db)
    sent: list[str] = []

    def seen(conn, cursor, statement, *args):
        sent.append(statement)

    mods = n_create([ScheduledStep("1.2.999.77")], modality="CT", station_ae_title="CT01")
    changes = type(mods)()
    changes.PerformedProcedureStepDescription = "x"
    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        out = mpps.update(db, UID, changes, "CT01")
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert out.status == 0 and out.linked == []
    assert [s for s in sent if "mpps_worklist_links" in s] == [sent[0]]  # the row's SELECT
