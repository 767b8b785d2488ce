"""What an accepted ADT message does, inside the caller's transaction: A08/A31 update a
patient's demographics, A40 merges a prior patient into the surviving one (HL7 v2.5.1
3.3.8, 3.3.31, 3.3.40; IHE RAD TF-2 RAD-12 Patient Update), both found by PID-3 with its
assigning authority (Issuer of Patient ID). Worklist items join their patient row, so a
change shows in the next C-FIND at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worklist_mpps.config import Config
from worklist_mpps.db.models import MPPSTracking, Patient
from worklist_mpps.services import audit
from worklist_mpps.services import hl7_mapping as mapping
from worklist_mpps.services import schedule_values as values
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.dicom import charset_for_storage, decode_dataset, encode_dataset
from worklist_mpps.services.hl7_actions import Outcome, try_values
from worklist_mpps.services.hl7_parse import HL7Error, Inbound, Location, Segment


def handle_adt(session: Session, cfg: Config, msg: Inbound, actor: Actor, out: Outcome) -> None:
    pids = [s for s in msg.segments if s.name == "PID"]
    if not pids:
        raise HL7Error("AE", 100, f"{msg.message_type} without a PID segment", Location("PID"))
    event = msg.message_type.split("^")[1]
    for pid in pids:
        following = msg.segments[msg.segments.index(pid) + 1 :]
        scope = mapping.Scope(
            {"PID": pid}
            | {s.name: s for s in reversed(following) if s.name in ("PV1", "MRG", "PD1")}
        )
        vals, found = mapping.extract(msg, scope, cfg.hl7_field_map, {})
        pvals = mapping.patient_values(vals)
        out.patient_id = out.patient_id or pvals.get("patient_id")
        where = Location("PID", pid.sequence, 3)
        if not pvals.get("patient_id"):
            raise HL7Error("AE", 101, "PID-3 Patient Identifier List is required", where)
        fields = try_values(found, values.normalize_patient, pvals)
        if event == "A40":
            _merge(session, msg, scope.get("MRG"), fields, actor, out)
            continue
        patient = _find_patient(session, fields["patient_id"], fields.get("issuer_of_patient_id"))
        if patient is None:
            # nothing scheduled for this patient: the first order creates the patient
            out.note = f"patient {fields['patient_id']} unknown: nothing to update"
            continue
        values.apply_values(patient, fields)
        audit.record(
            session,
            actor,
            "patient.update",
            f"patient:{patient.id}",
            {"fields": sorted(fields), "event": event},
        )
        out.item_ids += [i.id for i in patient.items if i.id not in out.item_ids]


def _find_patient(session: Session, patient_id: str, issuer: str | None) -> Patient | None:
    return session.scalars(
        select(Patient).where(
            Patient.patient_id == patient_id,
            Patient.issuer_of_patient_id.is_(None)
            if issuer is None
            else Patient.issuer_of_patient_id == issuer,
        )
    ).first()


def _merge(
    session: Session,
    msg: Inbound,
    mrg: Segment | None,
    fields: Mapping[str, Any],
    actor: Actor,
    out: Outcome,
) -> None:
    """A40: the prior patient's (MRG-1) worklist items and their MPPS move to the surviving
    patient (PID-3), created if needed; the prior patient row is then deleted, so its
    identifier no longer answers a worklist query."""
    where = Location("MRG", mrg.sequence if mrg else 1, 1)
    prior_id = msg.value(mrg, 1) if mrg else ""
    if not prior_id:
        raise HL7Error("AE", 101, "MRG-1 Prior Patient Identifier List is required", where)
    prior_issuer = msg.value(mrg, 1, 4) or None
    prior = _find_patient(session, prior_id, prior_issuer)
    if prior is None:
        raise HL7Error("AE", 204, f"no patient {prior_id} to merge", where)
    surviving = values.get_or_create_patient(session, fields)
    session.flush()
    if surviving.id == prior.id:
        return
    moved_mpps: list[str] = []
    item_ids = []
    for item in list(prior.items):
        item.patient = surviving
        item_ids.append(item.id)
        out.touched(item)
        audit.record(
            session,
            actor,
            "item.update",
            f"item:{item.id}",
            {"fields": ["patient_pk"], "event": "A40", "from": prior_id},
        )
        for mpps in item.mpps:
            if mpps.sop_instance_uid in moved_mpps:
                continue
            _move_mpps(session, mpps, surviving, prior_id, actor)
            moved_mpps.append(mpps.sop_instance_uid)
    audit.record(
        session,
        actor,
        "patient.merge",
        f"patient:{surviving.id}",
        {
            "prior_patient_id": prior_id,
            "prior_issuer": prior_issuer,
            "items": item_ids,
            "mpps": moved_mpps,
        },
    )
    session.flush()
    session.delete(prior)


def _move_mpps(
    session: Session, mpps: MPPSTracking, surviving: Patient, prior_id: str, actor: Actor
) -> None:
    """The MPPS names the surviving patient: its Patient ID, Issuer and Name in the stored
    attributes (what N-GET and the forwarded copies say) and in the indexed columns."""
    stored = decode_dataset(mpps.dataset)
    stored.PatientID = surviving.patient_id
    if surviving.issuer_of_patient_id:
        stored.IssuerOfPatientID = surviving.issuer_of_patient_id
    elif "IssuerOfPatientID" in stored:
        stored.IssuerOfPatientID = ""
    if surviving.patient_name:
        stored.PatientName = surviving.patient_name
    charset_for_storage(stored)
    mpps.dataset = encode_dataset(stored)
    mpps.patient_id = surviving.patient_id
    mpps.patient_name = surviving.patient_name or mpps.patient_name
    audit.record(
        session,
        actor,
        "mpps.patient",
        f"mpps:{mpps.sop_instance_uid}"[:80],
        {"from": prior_id, "to": surviving.patient_id, "event": "A40"},
    )
