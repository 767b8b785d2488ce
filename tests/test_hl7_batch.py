"""Group commit of the HL7 order feed (services/orders.receive_many): several messages in
one write transaction, each in its own SAVEPOINT, on SQLite and PostgreSQL. A refused
message applies nothing and gets its AE row while the others keep theirs; a repeat of a
message earlier in the same batch gets that message's ACK (HL7 v2.5.1 2.10.2); when the
batch transaction fails, the messages are processed one by one."""

from __future__ import annotations

from sqlalchemy import select

from test_hl7_orders import ack_of, ctx_for, items, log_rows, order
from worklist_mpps.db.models import HL7Message, Patient
from worklist_mpps.services import orders


def _patients(db) -> set[str]:
    with db.read() as session:
        return set(session.scalars(select(Patient.patient_id)))


def test_good_bad_and_repeat_in_one_batch(db):
    ctx = ctx_for(db)
    good = order("G1", pid="PATG1^^^HOSPITAL", number="PLCG1", acc="ACCG1").encode()
    # a new patient, then the step's key is the good order's (in the same batch): AE 205
    # after the patient was added, so its savepoint must take the patient back too
    bad = order("B1", pid="PATB1^^^HOSPITAL", number="PLCB1", acc="ACCG1").encode()
    other = order("G2", pid="PATG2^^^HOSPITAL", number="PLCG2", acc="ACCG2").encode()
    got = orders.receive_many(ctx, [(good, "h"), (bad, "h"), (good, "h"), (other, "h")])
    assert [r.code for r in got] == ["AA", "AE", "AA", "AA"], [r.error for r in got]
    assert [r.duplicate for r in got] == [False, False, True, False]
    # the repeat: the same ACK bytes and row as the first copy, nothing applied again
    assert got[2].ack == got[0].ack and got[2].message_id == got[0].message_id
    assert str(ack_of(got[1]).segment("ERR")(3)(1)(1)) == "205"
    rows = {r["control_id"]: r for r in log_rows(db)}
    assert sorted(rows) == ["B1", "G1", "G2"]
    assert sorted(i["accession_number"] for i in items(db)) == ["ACCG1", "ACCG2"]
    assert _patients(db) == {"PATG1", "PATG2"}
    with db.read() as session:
        bad_row = session.get(HL7Message, got[1].message_id)
        assert bad_row is not None and bad_row.ack_code == "AE" and bad_row.item_ids is None
        assert bad_row.ack == got[1].ack
    # the batch's rows are each message's own ACK, the good ones with their items
    assert rows["G1"]["ack_code"] == rows["G2"]["ack_code"] == "AA"
    # resent later, alone: the stored answers again
    assert orders.receive(ctx, good, "h").ack == got[0].ack
    assert orders.receive(ctx, bad, "h").ack == got[1].ack
    assert len(items(db)) == 2 and len(log_rows(db)) == 3


def test_a_batch_that_fails_is_processed_one_by_one(db, caplog):
    """A message the database itself rejects fails the batch transaction: a cancel whose
    ORC-16 reason holds a NUL byte (stored as the item's status reason; PostgreSQL text
    cannot hold it). Each message is then processed alone: that one AR 207 with nothing
    applied, the others AA (the new order before it in the batch included)."""
    ctx = ctx_for(db)
    first = order("F1", pid="PATF1^^^HOSPITAL", number="PLCF1", acc="ACCF1").encode()
    cancel = order(
        "F2", orc1="CA", pid="PATF1^^^HOSPITAL", number="PLCF1", acc="ACCF1", orc16="^NUL\x00REASON"
    ).encode()
    last = order("F3", pid="PATF3^^^HOSPITAL", number="PLCF3", acc="ACCF3").encode()
    got = orders.receive_many(ctx, [(first, "h"), (cancel, "h"), (last, "h")])
    codes = [r.code for r in got]
    status = {i["accession_number"]: i["sps_status"] for i in items(db)}
    if ctx.db.is_sqlite:  # SQLite stores the NUL: no failure to provoke there
        assert codes == ["AA", "AA", "AA"], [r.error for r in got]
        assert status == {"ACCF1": "DISCONTINUED", "ACCF3": "SCHEDULED"}
        return
    assert codes == ["AA", "AR", "AA"], [r.error for r in got]
    assert str(ack_of(got[1]).segment("ERR")(3)(1)(1)) == "207"
    assert status == {"ACCF1": "SCHEDULED", "ACCF3": "SCHEDULED"}
    assert "processed one by one" in caplog.text
    rows = log_rows(db)
    assert sorted(r["ack_code"] for r in rows) == ["AA", "AA", "AR"]
