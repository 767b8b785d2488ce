"""The scheduling operations (services/schedule.py) called directly, without HTTP: every
rule the management API, the HL7 feed and the operator page share, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from worklist_mpps.client.messages import ScheduledStep, n_create
from worklist_mpps.services import audit, mpps, schedule
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.schedule import Conflict, ItemError, NotFound

ACTOR = Actor("ris", "10.0.0.7", "HL7")


def new_item(db, accession="A1", sps_id="S1", patient_id="P1", **fields) -> dict:
    data = {
        "accession_number": accession,
        "sps_id": sps_id,
        "modality": "CT",
        "scheduled_station_ae_title": "CT01",
        "sps_start_date": "20300101",
        "sps_start_time": "0800",
        **fields,
    }
    return schedule.create_item(
        db, ACTOR, {"patient_id": patient_id, "patient_name": "Müller^Hans"}, data, "1.2.3"
    )


def events(db, action: str) -> list[dict]:
    return audit.query(db, action=action)


def test_create_refuses_a_duplicate_accession_and_step(db):
    item = new_item(db)
    assert item["sps_status"] == "SCHEDULED"
    assert item["study_instance_uid"].startswith("1.2.3.")
    assert item["patient"]["patient_id"] == "P1"
    with pytest.raises(Conflict) as refused:
        new_item(db, patient_id="P2")
    assert refused.value.field == "accession_number"
    assert f"worklist item {item['id']}" in refused.value.message
    assert schedule.search_items(db).total == 1
    assert schedule.search_patients(db, patient_id="P2").total == 0  # rolled back
    [event] = events(db, "item.create")
    assert (event["actor"], event["channel"], event["target"]) == (
        "ris",
        "HL7",
        f"item:{item['id']}",
    )


def test_create_names_the_invalid_field(db):
    with pytest.raises(ItemError) as bad:
        new_item(db, sps_start_date="20301332")
    assert bad.value.field == "sps_start_date"
    assert events(db, "item.create") == []


def test_update_keeps_the_study_uid_and_refuses_a_taken_key(db):
    a, b = new_item(db), new_item(db, accession="A2")
    changed = schedule.update_item(
        db, ACTOR, a["id"], {"modality": "MR", "study_instance_uid": "1.2.9"}
    )
    assert changed["modality"] == "MR"
    assert changed["study_instance_uid"] == a["study_instance_uid"]
    [event] = events(db, "item.update")
    assert event["detail"] == {"fields": ["modality", "study_instance_uid"]}
    with pytest.raises(Conflict):
        schedule.update_item(db, ACTOR, b["id"], {"accession_number": "A1"})
    assert schedule.get_item(db, b["id"])["accession_number"] == "A2"
    with pytest.raises(ItemError) as bad:
        schedule.update_item(db, ACTOR, b["id"], {}, patient_pk=999)
    assert (bad.value.field, str(bad.value)) == ("patient_pk", "no patient 999")
    with pytest.raises(NotFound):
        schedule.update_item(db, ACTOR, 999, {"modality": "MR"})


def test_cancel_discontinues_with_the_reason_audited(db):
    item = new_item(db)
    cancelled = schedule.cancel_item(db, ACTOR, item["id"], reason="CA: patient declined")
    assert cancelled["sps_status"] == "DISCONTINUED"
    assert schedule.get_item(db, item["id"])["sps_status"] == "DISCONTINUED"
    [event] = events(db, "item.cancel")
    assert event["detail"] == {
        "from": "SCHEDULED",
        "to": "DISCONTINUED",
        "reason": "CA: patient declined",
    }
    assert (event["actor"], event["address"]) == ("ris", "10.0.0.7")


def test_purge_is_refused_while_an_mpps_refers_to_the_item(db):
    item, other = new_item(db), new_item(db, accession="A2")
    ds = n_create(
        [
            ScheduledStep(
                study_instance_uid=item["study_instance_uid"], accession_number="A1", sps_id="S1"
            )
        ],
        modality="CT",
        station_ae_title="CT01",
        patient_id="P1",
    )
    mpps.create(db, ds, uid=generate_uid())
    with pytest.raises(Conflict) as refused:
        schedule.purge_item(db, ACTOR, item["id"])
    assert "cancelled, not deleted" in refused.value.message
    assert schedule.get_item(db, item["id"])["id"] == item["id"]
    assert events(db, "item.delete") == []
    schedule.purge_item(db, ACTOR, other["id"])
    with pytest.raises(NotFound):
        schedule.get_item(db, other["id"])
    [event] = events(db, "item.delete")
    assert event["detail"] == {"accession_number": "A2"}


def test_patient_create_update_and_delete(db):
    patient = schedule.create_patient(db, ACTOR, {"patient_id": "P7", "patient_name": "Doe^J"})
    with pytest.raises(Conflict):
        schedule.create_patient(db, ACTOR, {"patient_id": "P7"})
    changed = schedule.update_patient(
        db, ACTOR, patient["id"], {"birth_date": "19650314", "sex": "F"}
    )
    assert (changed["birth_date"], changed["sex"]) == ("19650314", "F")
    assert schedule.search_patients(db, patient_name="doe*").rows[0]["id"] == patient["id"]
    [event] = events(db, "patient.update")
    assert event["detail"] == {"fields": ["birth_date", "sex"]}
    with pytest.raises(ItemError) as bad:
        schedule.update_patient(db, ACTOR, patient["id"], {"birth_date": "19651399"})
    assert bad.value.field == "patient.birth_date"
    schedule.create_patient(db, ACTOR, {"patient_id": "P8", "issuer_of_patient_id": "X"})
    with pytest.raises(Conflict) as taken:  # the unique Patient ID + issuer
        schedule.update_patient(
            db, ACTOR, patient["id"], {"patient_id": "P8", "issuer_of_patient_id": "X"}
        )
    assert taken.value.field == "issuer_of_patient_id"
    assert schedule.get_patient(db, patient["id"])["patient_id"] == "P7"
    new_item(db, patient_id="P1")
    holder = schedule.search_patients(db, patient_id="P1").rows[0]
    with pytest.raises(Conflict):
        schedule.delete_patient(db, ACTOR, holder["id"])
    schedule.delete_patient(db, ACTOR, patient["id"])
    with pytest.raises(NotFound):
        schedule.get_patient(db, patient["id"])


def test_search_filters(db):
    new_item(db, "A1", modality="CT", sps_start_date="20300101")
    new_item(
        db,
        "A2",
        modality="MR",
        sps_start_date="20300102",
        patient_id="P2",
        scheduled_station_ae_title="MR01",
    )
    b = new_item(db, "B3", modality="MR", sps_start_date="20300105")
    schedule.cancel_item(db, ACTOR, b["id"])

    def accessions(**keys) -> list[str]:
        return [i["accession_number"] for i in schedule.search_items(db, **keys).rows]

    assert accessions() == ["A1", "A2", "B3"]
    assert accessions(modality="MR") == ["A2", "B3"]
    assert accessions(date="20300101-20300102") == ["A1", "A2"]
    assert accessions(station="MR*") == ["A2"]
    assert accessions(status="DISCONTINUED") == ["B3"]
    assert accessions(accession="A?") == ["A1", "A2"]
    assert accessions(patient_id="P2") == ["A2"]
    assert accessions(patient_name="MÜLLER*", modality="CT") == ["A1"]
    page = schedule.search_items(db, offset=1, limit=1)
    assert (page.total, [i["accession_number"] for i in page.rows]) == (3, ["A2"])
    with pytest.raises(ItemError) as bad:
        schedule.search_items(db, date="2030-13")
    assert bad.value.field == "date"
    with pytest.raises(ItemError):
        schedule.search_items(db, status="CANCELED")


def test_patient_search_with_a_universal_key_finds_every_patient(db):
    """'*' alone is universal matching (PS3.4 C.2.2.2.3): it was WHERE NULL, no patient."""
    new_item(db, "A1", patient_id="P1")
    new_item(db, "A2", patient_id="P2")
    assert schedule.search_patients(db, patient_id="*").total == 2
    assert schedule.search_patients(db, patient_id="P*").total == 2
    assert schedule.search_patients(db, patient_id="P2").total == 1
