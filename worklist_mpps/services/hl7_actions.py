"""What an accepted HL7 order does to the worklist, inside the caller's transaction.

Orders (ORM^O01, OMI^O23; IHE RAD TF-2 RAD-2/RAD-3/RAD-4/RAD-13): ORC-1 Order Control
(HL7 v2.5.1 4.5.1.1, Table 0119) decides, and for ``SC`` the Order Status ORC-5 (Table
0038) when it is given. Patient messages (ADT) are in hl7_adt.py. Every change gets an
audit record (channel HL7); a broken rule raises :class:`HL7Error` (AE) and the caller
rolls everything back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from worklist_mpps.config import Config
from worklist_mpps.db.models import Patient, WorklistItem
from worklist_mpps.services import audit, schedule
from worklist_mpps.services import hl7_mapping as mapping
from worklist_mpps.services import schedule_values as values
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.hl7_parse import HL7Error, Inbound, Location, Segment
from worklist_mpps.services.schedule_values import ItemError

NEW = ("NW",)
CHANGE = ("XO", "SC")
CANCEL = ("CA", "OC")
DISCONTINUE = ("DC", "OD")
ORDER_CONTROLS = NEW + CHANGE + CANCEL + DISCONTINUE
# ORC-5 Order Status (Table 0038) of an SC message -> Scheduled Procedure Step Status
ORDER_STATUS = {
    "SC": "SCHEDULED",
    "IP": "IN PROGRESS",
    "CM": "COMPLETED",
    "CA": "DISCONTINUED",
    "DC": "DISCONTINUED",
}
_HEADER_END = ("ORC",)


@dataclass
class Outcome:
    """What a message did, for its hl7_messages row and log line."""

    order_control: list[str] = field(default_factory=list)
    placer: str | None = None
    filler: str | None = None
    patient_id: str | None = None
    item_ids: list[int] = field(default_factory=list)
    note: str | None = None

    def touched(self, item: WorklistItem) -> None:
        if item.id not in self.item_ids:
            self.item_ids.append(item.id)


@dataclass
class Group:
    """One ORC with its order detail: the segments of the order and its steps (one per
    IPC in OMI^O23, one per OBR in ORM^O01; the ORC alone when it has neither)."""

    orc: Segment
    segments: dict[str, Segment]
    units: list[Segment | None]


def _groups(msg: Inbound) -> tuple[dict[str, Segment], list[Group]]:
    header: dict[str, Segment] = {}
    groups: list[Group] = []
    unit_name = "IPC" if msg.message_type == "OMI^O23" else "OBR"
    for seg in msg.segments:
        if seg.name == "ORC":
            groups.append(Group(seg, {"ORC": seg}, []))
        elif not groups:
            header.setdefault(seg.name, seg)
        else:
            group = groups[-1]
            if seg.name == unit_name:
                group.units.append(seg)
            group.segments.setdefault(seg.name, seg)
    for group in groups:
        if not group.units:
            group.units.append(None)
    return header, groups


def _scope(header: Mapping[str, Segment], group: Group, unit: Segment | None) -> mapping.Scope:
    segments = dict(header)
    segments.update(group.segments)
    if unit is not None:
        segments[unit.name] = unit
    return mapping.Scope(segments)


def _default_location(scope: mapping.Scope, name: str, overrides: Mapping[str, str]) -> Location:
    """Where a missing field was looked for: its first location present in the message."""
    locs = mapping.locations(name, overrides)
    for loc in locs:
        seg_name, rest = loc.split("-", 1)
        seg = scope.get(seg_name)
        if seg is not None:
            return Location(seg_name, seg.sequence, int(rest.split(".")[0]))
    seg_name, rest = locs[0].split("-", 1)
    return Location(seg_name, 1, int(rest.split(".")[0]))


def _item_error(exc: ItemError, found: Mapping[str, Location]) -> HL7Error:
    name = exc.field.removeprefix("patient.")
    name = {"sps_start_date": "sps_start", "sps_start_time": "sps_start"}.get(name, name)
    name = "requested_procedure_code" if name == "requested_procedure_codes" else name
    return HL7Error("AE", 102, str(exc), found.get(name))


# built once (a statement per message costs more than its execution on SQLite)
_BY_NUMBER = (
    select(WorklistItem)
    .where(
        or_(
            WorklistItem.filler_order_number == bindparam("filler"),
            WorklistItem.placer_order_number == bindparam("placer"),
        )
    )
    .order_by(WorklistItem.id)
    .with_for_update()
)


def _order_items(session: Session, placer: str | None, filler: str | None) -> list[WorklistItem]:
    """An order's steps: by ORC-3 Filler Order Number, else by ORC-2 Placer Order Number.
    One query for both numbers (the rows of either are locked on PostgreSQL)."""
    keys = [(key, number) for key, number in (("filler", filler), ("placer", placer)) if number]
    if not keys:
        return []
    params = {"filler": filler or None, "placer": placer or None}  # = NULL matches nothing
    found = session.scalars(_BY_NUMBER, params).all()
    for key, number in keys:
        items = [i for i in found if getattr(i, f"{key}_order_number") == number]
        if items:
            return items
    return []


def _patient(
    session: Session, pvals: Mapping[str, Any], where: Location, found: Mapping[str, Location]
) -> Patient:
    """The order's patient by PID-3 and its assigning authority, created or updated."""
    if not pvals.get("patient_id"):
        raise HL7Error("AE", 101, "PID-3 Patient Identifier List is required", where)
    patient: Patient = try_values(found, values.get_or_create_patient, session, pvals)
    return patient


def handle_order(session: Session, cfg: Config, msg: Inbound, actor: Actor, out: Outcome) -> None:
    header, groups = _groups(msg)
    if not groups:
        raise HL7Error("AE", 100, f"{msg.message_type} without an ORC segment", Location("ORC"))
    for group in groups:
        control = msg.value(group.orc, 1).upper()
        out.order_control.append(control or "?")
        if control not in ORDER_CONTROLS:
            raise HL7Error(
                "AE",
                103,
                f"ORC-1 order control {control!r} is not supported "
                f"(one of {', '.join(ORDER_CONTROLS)})",
                Location("ORC", group.orc.sequence, 1, 1),
            )
        _handle_group(session, cfg, msg, header, group, control, actor, out)


def _handle_group(
    session: Session,
    cfg: Config,
    msg: Inbound,
    header: Mapping[str, Segment],
    group: Group,
    control: str,
    actor: Actor,
    out: Outcome,
) -> None:
    units = []
    for unit in group.units:
        scope = _scope(header, group, unit)
        vals, found = mapping.extract(msg, scope, cfg.hl7_field_map, cfg.hl7_procedure_modalities)
        units.append((scope, vals, found))
    scope, first, found0 = units[0]
    placer, filler = first.get("placer_order_number"), first.get("filler_order_number")
    out.placer, out.filler = out.placer or placer, out.filler or filler
    pvals = mapping.patient_values(first)
    out.patient_id = out.patient_id or pvals.get("patient_id")
    number_at = found0.get("filler_order_number") or found0.get("placer_order_number")
    number_at = number_at or Location("ORC", group.orc.sequence, 2)
    items = _order_items(session, placer, filler)
    if control in NEW:
        if items:
            raise HL7Error(
                "AE",
                205,
                f"order {filler or placer} exists (worklist items "
                f"{', '.join(str(i.id) for i in items)}): a new order needs a new number",
                number_at,
            )
        patient = _patient(session, pvals, _default_location(scope, "patient_id", {}), found0)
        for scope, vals, found in units:
            _create(session, cfg, patient, scope, vals, found, actor, out)
        return
    if not items:
        raise HL7Error(
            "AE",
            204,
            f"no order {filler or placer or '(no ORC-2/ORC-3)'} to {control}",
            number_at,
        )
    if control in CHANGE:
        _change(session, cfg, msg, group, control, units, items, pvals, actor, out)
    else:
        verb = "canceled" if control in CANCEL else "discontinued"
        reason = _reason(msg, group) or f"{verb} by order placer (ORC-1 {control})"
        for item in items:
            if item.sps_status != "COMPLETED":
                _set_status(session, item, "DISCONTINUED", reason, control, actor)
            out.touched(item)


def try_values(found: Mapping[str, Location], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), its ItemError answered AE 102 at the value's location."""
    try:
        return fn(*args, **kwargs)
    except ItemError as exc:
        raise _item_error(exc, found) from None


def _reason(msg: Inbound, group: Group) -> str | None:
    """ORC-16 Order Control Code Reason (CE): its text, else its code."""
    parts = msg.components(group.orc, 16)
    return next((p for p in (parts[1:2] + parts[:1]) if p), None)


def _create(
    session: Session,
    cfg: Config,
    patient: Patient,
    scope: mapping.Scope,
    vals: Mapping[str, Any],
    found: Mapping[str, Location],
    actor: Actor,
    out: Outcome,
) -> WorklistItem:
    data = mapping.item_values(vals)
    missing = []
    if not (
        data.get("accession_number")
        or data.get("requested_procedure_id")
        or data.get("placer_order_number")
    ):
        missing += ["accession_number", "requested_procedure_id", "placer_order_number"]
    if not data.get("modality"):
        missing.append("modality")
    if missing:
        where = _default_location(scope, missing[0], cfg.hl7_field_map)
        named = ", ".join(
            f"{m} ({'/'.join(mapping.locations(m, cfg.hl7_field_map))})" for m in missing
        )
        raise HL7Error(
            "AE", 101, f"the order does not identify a procedure step: no {named}", where
        )
    accession, sps_id = data.get("accession_number"), data.get("sps_id")
    if any(isinstance(obj, WorklistItem) for obj in session.dirty):
        session.flush()  # steps changed before this one: the key check must see them
    with session.no_autoflush:  # a pending patient is inserted with the item, one flush
        other = values.duplicate_of(session, accession, sps_id) if accession else None
    if other:
        raise HL7Error(
            "AE",
            205,
            f"worklist item {other} has accession number {accession} and step ID {sps_id}",
            found.get("accession_number"),
        )
    item: WorklistItem = try_values(
        found,
        schedule.add_item,
        session,
        actor,
        patient,
        data,
        cfg.uid_prefix,
        require_accession=False,
    )
    out.touched(item)
    return item


def _change(
    session: Session,
    cfg: Config,
    msg: Inbound,
    group: Group,
    control: str,
    units: list[tuple[mapping.Scope, dict[str, Any], dict[str, Location]]],
    items: list[WorklistItem],
    pvals: Mapping[str, Any],
    actor: Actor,
    out: Outcome,
) -> None:
    """XO / SC: the values the message carries replace the stored ones (an empty HL7 field
    leaves a value as it is, 2.5.3); a step is matched by its SPS ID when the message has
    one, and an OMI^O23 IPC naming a new step ID adds that step."""
    status_code = msg.value(group.orc, 5).upper() if control == "SC" else ""
    status = None
    if status_code:
        if status_code not in ORDER_STATUS:
            raise HL7Error(
                "AE",
                103,
                f"ORC-5 order status {status_code!r} is not supported "
                f"(one of {', '.join(ORDER_STATUS)})",
                Location("ORC", group.orc.sequence, 5, 1),
            )
        status = ORDER_STATUS[status_code]
    patient = None
    if pvals.get("patient_id"):
        patient = _patient(session, pvals, Location("PID", 1, 3), units[0][2])
    for scope, vals, found in units:
        data = mapping.item_values(vals)
        data.pop("study_instance_uid", None)  # named once, at creation (PS3.4 K.6.1.2.2)
        sps_id = data.get("sps_id")
        targets = [i for i in items if i.sps_id == sps_id] if sps_id else list(items)
        if not targets:
            if msg.message_type == "OMI^O23" and patient is not None:
                new = _create(session, cfg, patient, scope, vals, found, actor, out)
                items.append(new)
                continue
            targets = list(items) if scope.get("IPC") is None else []
            if not targets:
                raise HL7Error(
                    "AE",
                    204,
                    f"order {out.filler or out.placer} has no step {sps_id}",
                    found.get("sps_id"),
                )
        for item in targets:
            # the key the item will have, checked before the change reaches the database
            accession = data.get("accession_number") or item.accession_number
            step = data.get("sps_id") or item.sps_id
            if accession and (other := values.duplicate_of(session, accession, step, item.id)):
                raise HL7Error(
                    "AE",
                    205,
                    f"worklist item {other} has accession number {accession} and step ID {step}",
                    found.get("accession_number") or found.get("sps_id"),
                )
            if patient is not None and item.patient_pk != patient.id:
                item.patient = patient
            try_values(found, values.update_item, item, data)
            audit.record(
                session,
                actor,
                "item.update",
                f"item:{item.id}",
                {"fields": sorted(data), "order_control": control},
            )
            out.touched(item)
    if status is not None:
        reason = _reason(msg, group) or f"ORC-5 {status_code} from the order placer"
        for item in items:
            _set_status(session, item, status, reason, f"SC/{status_code}", actor)
            out.touched(item)


def _set_status(
    session: Session, item: WorklistItem, status: str, reason: str, control: str, actor: Actor
) -> None:
    detail: dict[str, Any] = {"from": item.sps_status, "to": status, "order_control": control}
    if status == "DISCONTINUED":
        detail["reason"] = reason
    action = "item.cancel" if status == "DISCONTINUED" else "item.status"
    audit.record(session, actor, action, f"item:{item.id}", detail)
    values.update_item(item, {"sps_status": status})
    item.status_reason = reason[:250] if status == "DISCONTINUED" else None
