"""Orthanc as witness (issue 16): stable studies recorded, matched to worklist items, and
the items of a modality that sends no MPPS completed from their study.

No HTTP here: the change-feed follower (delivery/orthanc_witness.py) reads Orthanc and
hands over a :class:`StudyContent`; these functions decide and write, each in its own
transaction, audited (actor ``orthanc``, or the user who links).

- The feed's cursor (the last ``/changes`` Seq processed) lives in ``app_state`` and moves
  in the transaction of what was done with the change, compare-and-set: a restart neither
  misses nor repeats a study, and an instance that lost the lease cannot move it.
- A study matches the SCHEDULED or IN PROGRESS items with its Study Instance UID (or
  Accession Number: ``orthanc_match_by``).
- Emulation goes through the MPPS path itself (services/mpps.py): N-CREATE IN PROGRESS,
  then N-SET COMPLETED (PS3.4 F.7.2.1, F.7.2.2), so the worklist status, the Orthanc study
  metadata, forwarding and the order placer's status follow as for a real MPPS. An item
  with a real MPPS is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import (
    AppState,
    MPPSTracking,
    OrthancStudy,
    WorklistItem,
    as_utc,
    mpps_worklist_links,
    utcnow,
)
from worklist_mpps.services import audit
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.links import LinkError, candidate_items
from worklist_mpps.services.witness_mpps import StudyContent, complete_item

log = logging.getLogger(__name__)

CURSOR_KEY = "orthanc_changes_seq"
# an Orthanc resource ID: the SHA-1 of its identifiers, as 5 groups of 8 hex digits
ORTHANC_ID_PATTERN = r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$"
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"  # PS3.5 9.1
ACTIVE = ("SCHEDULED", "IN PROGRESS")
MATCH_BY = ("study_instance_uid", "accession_number")
LIMIT = 200  # rows a listing shows
DUE_BATCH = 20  # studies completed per pass

__all__ = ["LinkError", "StudyContent"]


class CursorMoved(Exception):
    """The stored cursor is not the one this instance read: another instance follows the
    feed now (it took the lease); this one stops without doing anything."""


# --- the cursor ---------------------------------------------------------------------------


def cursor(db: Database) -> int | None:
    """The last ``/changes`` Seq processed; None before the first start."""
    with db.read() as session:
        row = session.get(AppState, CURSOR_KEY)
        return int(row.value) if row is not None and row.value is not None else None


def init_cursor(db: Database, last: int, actor: Actor | None = None) -> int:
    """First start: follow from Orthanc's current ``Last`` (a new installation does not
    emulate years of old studies). The stored cursor when one exists already."""
    with db.write() as session:
        row = session.get(AppState, CURSOR_KEY, with_for_update=True)
        if row is None:
            session.add(AppState(key=CURSOR_KEY, value=str(last)))
            audit.record(session, actor, "witness.start", CURSOR_KEY, {"from_seq": last})
            return last
        return int(row.value or 0)


def _move(session: Session, expected: int, new: int) -> None:
    row = session.get(AppState, CURSOR_KEY, with_for_update=True)
    if row is None or int(row.value or 0) != expected:
        raise CursorMoved(f"cursor is {row.value if row else None}, expected {expected}")
    row.value = str(new)


def advance_cursor(
    db: Database, expected: int, new: int, reason: str | None = None, actor: Actor | None = None
) -> None:
    """Move the cursor over changes that needed nothing (not StableStudy)."""
    with db.write() as session:
        _move(session, expected, new)
        if reason:  # Orthanc's change log restarted: worth an audit line
            audit.record(session, actor, "witness.restart", CURSOR_KEY, {"reason": reason})


# --- matching and recording -----------------------------------------------------------------


def _matching_items(
    session: Session, study_uid: str | None, accession: str | None, match_by: str
) -> list[WorklistItem]:
    """SCHEDULED or IN PROGRESS items the study is of, by ``match_by``, in id order."""
    W = WorklistItem
    if match_by == "accession_number":
        if not accession:
            return []
        where = W.accession_number == accession
    else:
        if not study_uid:
            return []
        where = W.study_instance_uid == study_uid
    return list(session.scalars(select(W).where(where, W.sps_status.in_(ACTIVE)).order_by(W.id)))


def record_stable_study(
    db: Database,
    actor: Actor,
    content: StudyContent | None,
    seq: int,
    expected_seq: int,
    match_by: str = "study_instance_uid",
    now: datetime | None = None,
) -> str | None:
    """A ``StableStudy`` change (Seq ``seq``): the study stored or refreshed, matched to
    an item (``matched``) or not (``unmatched``), the cursor moved to ``seq``, audited
    ``study.stable``, in one transaction. ``content`` None: the study was deleted from
    Orthanc before it was read (only the cursor moves). A study that was ``emulated`` or
    ``linked`` keeps its state. Its new state."""
    now = now or utcnow()
    with db.write() as session:
        _move(session, expected_seq, seq)
        if content is None:
            return None
        study = session.get(OrthancStudy, content.orthanc_id, with_for_update=True)
        if study is None:
            study = OrthancStudy(
                orthanc_id=content.orthanc_id, state="unmatched", stable_at=now, change_seq=seq
            )
            session.add(study)
        study.study_instance_uid = content.study_instance_uid[:64]
        study.accession_number = (content.accession_number or None) and content.accession_number[
            :16
        ]
        study.patient_id = content.patient_id
        study.patient_name = content.patient_name
        study.study_date, study.study_time = content.study_date, content.study_time
        study.study_description = (content.description or None) and content.description[:64]
        study.modalities = "\\".join(content.modalities)[:64] or None
        study.series_count = len(content.series)
        study.instance_count = sum(len(s.instances) for s in content.series)
        study.change_seq = seq
        if study.state in ("unmatched", "matched"):
            items = _matching_items(
                session, content.study_instance_uid, content.accession_number, match_by
            )
            study.state = "matched" if items else "unmatched"
            study.item_pk = items[0].id if items else None
            study.stable_at = now  # a study that grew is waited for from its last stability
        audit.record(
            session,
            actor,
            "study.stable",
            f"study:{content.orthanc_id}",
            {
                "seq": seq,
                "state": study.state,
                "item_id": study.item_pk,
                "study_instance_uid": content.study_instance_uid,
                "accession_number": content.accession_number,
                "series": study.series_count,
                "instances": study.instance_count,
            },
        )
        return study.state


# --- completing an item from its study ----------------------------------------------------


def _blocking_mpps(item_pk: Any) -> Any:
    """SQL: the item has an MPPS that is not an emulated one still IN PROGRESS (that one is
    resumed: a crash between the N-CREATE and the N-SET of an emulation)."""
    link = mpps_worklist_links.c
    return exists(
        select(link.mpps_pk)
        .join(MPPSTracking, MPPSTracking.id == link.mpps_pk)
        .where(
            link.item_pk == item_pk,
            or_(MPPSTracking.emulated.is_(False), MPPSTracking.status != "IN PROGRESS"),
        )
    )


def due_studies(
    db: Database, emulate: bool, delay: float, now: datetime | None = None
) -> list[str]:
    """Studies whose item is to be completed now: ``linked`` ones whose item has no MPPS
    yet, and (``emulate``) ``matched`` ones stable for ``delay`` seconds whose item is still
    SCHEDULED or IN PROGRESS without a real MPPS. Orthanc IDs, oldest first, bounded."""
    now = now or utcnow()
    S, W = OrthancStudy, WorklistItem
    conditions = [S.state == "linked"]
    if emulate:
        conditions.append(
            and_(
                S.state == "matched",
                S.stable_at <= now - timedelta(seconds=delay),
                W.sps_status.in_(ACTIVE),
            )
        )
    stmt = (
        select(S.orthanc_id)
        .join(W, W.id == S.item_pk)
        .where(or_(*conditions), ~_blocking_mpps(S.item_pk))
        .order_by(S.stable_at, S.orthanc_id)
        .limit(DUE_BATCH)
    )
    with db.read() as session:
        return list(session.scalars(stmt))


def complete_from_study(
    db: Database,
    actor: Actor,
    orthanc_id: str,
    content: StudyContent,
    targets: Sequence[str] = (),
    uid_prefix: str = "",
    match_by: str = "study_instance_uid",
) -> str | None:
    """Complete the study's item (and, for a matched study, the other active items of the
    same study without an MPPS: a requested procedure done in one go, the group case of
    PS3.4 F.7.2.1) with an emulated MPPS; the study becomes ``emulated`` (a ``linked`` one
    stays ``linked``). The MPPS UID, or None when there was nothing to do (an MPPS came)."""
    with db.read() as session:
        study = session.get(OrthancStudy, orthanc_id)
        if study is None or study.item_pk is None or study.state not in ("matched", "linked"):
            return None
        primary = session.get(WorklistItem, study.item_pk)
        if primary is None or session.scalar(select(_blocking_mpps(primary.id))):
            return None
        item_ids = [primary.id]
        if study.state == "matched":
            link = mpps_worklist_links.c
            item_ids += [
                i.id
                for i in _matching_items(
                    session, content.study_instance_uid, content.accession_number, match_by
                )
                if i.id != primary.id
                and not session.scalar(select(exists().where(link.item_pk == i.id)))
            ]
        state = study.state
    uid = complete_item(db, actor, item_ids, content, targets, uid_prefix)
    with db.write() as session:
        study = session.get(OrthancStudy, orthanc_id, with_for_update=True)
        if study is not None and study.state == "matched":
            study.state = "emulated"
        audit.record(
            session,
            actor,
            "study.complete",
            f"study:{orthanc_id}",
            {"mpps": uid, "item_ids": item_ids, "state": study.state if study else state},
        )
    return uid


def link_study(
    db: Database,
    actor: Actor | None,
    orthanc_id: str,
    item_id: int,
    targets: Sequence[str] = (),
    content: StudyContent | None = None,
    uid_prefix: str = "",
) -> dict[str, Any]:
    """Link a study (one without an order, or matched to another item) to the item it
    was made for, audited ``study.link``: state ``linked``. Unless the item has an MPPS,
    it is completed from the study as emulation does, at once with ``content``, else by
    the feed follower's next pass (it holds the Orthanc connection). Refused
    (:class:`LinkError`): no such study or item, or a study already linked or emulated."""
    with db.write() as session:
        study = session.get(OrthancStudy, orthanc_id, with_for_update=True)
        if study is None:
            raise LinkError(f"no study {orthanc_id} seen in Orthanc", not_found=True)
        item = session.get(WorklistItem, item_id) if 0 < item_id < 2**31 else None
        if item is None:
            raise LinkError(f"no worklist item {item_id}", not_found=True)
        if study.state in ("linked", "emulated"):
            raise LinkError(f"study {orthanc_id} is already {study.state} to item {study.item_pk}")
        has_mpps = bool(item.mpps)
        old = study.state
        study.state, study.item_pk = "linked", item.id
        audit.record(
            session,
            actor,
            "study.link",
            f"study:{orthanc_id}",
            {
                "item_id": item.id,
                "worklist_item": f"{item.accession_number}/{item.sps_id}",
                "from": old,
                "item_has_mpps": has_mpps,
            },
        )
    uid = None
    if content is not None and not has_mpps:
        uid = complete_from_study(
            db, actor or Actor("unknown"), orthanc_id, content, targets, uid_prefix
        )
    return {
        "orthanc_id": orthanc_id,
        "item_id": item_id,
        "state": "linked",
        "mpps": uid,
        "completion": "done" if uid else ("none: the item has an MPPS" if has_mpps else "pending"),
    }


# --- listing --------------------------------------------------------------------------------


@dataclass
class Listing:
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


def _candidates(session: Session, study: OrthancStudy) -> list[dict[str, Any]]:
    """Items the study may be of (links.candidate_items), its first modality for the day."""
    modality = (study.modalities or "").split("\\")[0] or None
    return candidate_items(
        session, study.accession_number, study.patient_id, study.study_date, modality
    )


def unmatched_studies(db: Database, limit: int = LIMIT, candidates: bool = True) -> Listing:
    """Stable studies that matched no item (studies without an order), newest first, with
    the data to reconcile them and (``candidates``) the items they may be of."""
    S = OrthancStudy
    unmatched = S.state == "unmatched"
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(S).where(unmatched)) or 0
        studies = session.scalars(
            select(S).where(unmatched).order_by(S.stable_at.desc(), S.orthanc_id).limit(limit)
        )
        rows = [
            {
                "orthanc_id": s.orthanc_id,
                "study_instance_uid": s.study_instance_uid,
                "accession_number": s.accession_number,
                "patient_id": s.patient_id,
                "patient_name": s.patient_name,
                "study_date": s.study_date,
                "study_time": s.study_time,
                "study_description": s.study_description,
                "modalities": s.modalities,
                "series": s.series_count,
                "instances": s.instance_count,
                "stable_at": as_utc(s.stable_at).isoformat(timespec="seconds"),
                "candidates": _candidates(session, s) if candidates else [],
            }
            for s in studies
        ]
    return Listing(rows, total)


def show_study(db: Database, orthanc_id: str) -> dict[str, Any] | None:
    """One recorded study: its state and item (tests, the CLI)."""
    with db.read() as session:
        s = session.get(OrthancStudy, orthanc_id)
        if s is None:
            return None
        return {
            "orthanc_id": s.orthanc_id,
            "state": s.state,
            "item_id": s.item_pk,
            "study_instance_uid": s.study_instance_uid,
            "accession_number": s.accession_number,
            "change_seq": s.change_seq,
            "series": s.series_count,
            "instances": s.instance_count,
        }
