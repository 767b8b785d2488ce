"""Stale items and retention (README "Stale items and retention").

- :func:`expire`: a SCHEDULED step whose start lies more than ``worklist_expire_after``
  days before now becomes DISCONTINUED with reason ``expired`` (PS3.4 Table K.6-1 step
  status: DISCONTINUED, "canceled or unsuccessfully terminated") and so leaves the
  default worklist (``worklist_default_statuses``). Its start is SPS Start Date + Time
  (PS3.4 Table K.6-1, (0040,0002) / (0040,0003)) in the server's local time; a step
  with a date and no time starts at the end of its day (23:59:59); a step without a
  date never expires. One ``item.expire`` audit row per step.
- :func:`purge`: a finished step (COMPLETED or DISCONTINUED) whose end (its last
  change: when it became final) is more than ``worklist_retention_days`` days old is
  deleted, with its MPPS once every item the MPPS is linked to goes, and the delivered
  or superseded outbox rows of those MPPS. A step whose MPPS still has a pending or
  failed outbox row, or an MPPS not yet final, is kept. One ``item.purge`` audit row
  per batch with the counts. Patients, the audit trail and the HL7 message log stay
  (an ``hl7_messages.item_ids`` entry may then name a deleted item).

Both work in batches of ``BATCH`` steps per transaction with indexed SQL, and are run
by :class:`Lifecycle` every ``lifecycle_interval`` seconds under the lease
``lifecycle`` (one instance at a time on a shared database, services/leases.py); a
stop (SIGTERM) ends a pass after its current batch, the rest waits for the next pass.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from sqlalchemy import and_, delete, or_, select, update

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database, rowcount
from worklist_mpps.db.models import (
    FINAL_STATUSES,
    MPPSTracking,
    OrthancStudy,
    OutboxMessage,
    WorklistItem,
    mpps_worklist_links,
    utcnow,
)
from worklist_mpps.services import audit, leases
from worklist_mpps.services.audit import Actor
from worklist_mpps.timezone import parse_offset

log = logging.getLogger("worklist_mpps.services.lifecycle")

ACTOR = Actor("lifecycle", None, "TIMER")
BATCH = 500
LEASE = "lifecycle"
EXPIRED = "expired"
# outbox rows that keep their MPPS (and its items): still to deliver, or for an operator
OPEN_OUTBOX = ("pending", "failed")


def server_tz(offset: str) -> tzinfo | None:
    """The ``timezone_offset`` setting (+HHMM / -HHMM, PS3.5 DT) as a zone; None: the
    machine's."""
    return timezone(parse_offset(offset)) if offset else None


def _local(now: datetime, tz: tzinfo | None) -> datetime:
    """``now`` as the wall clock the steps are scheduled in (naive: already local)."""
    if now.tzinfo is None:
        return now
    return now.astimezone(tz) if tz is not None else now.astimezone()


def expire(
    db: Database,
    now: datetime,
    after_days: float,
    tz: tzinfo | None = None,
    batch: int = BATCH,
    stop: threading.Event | None = None,
) -> int:
    """DISCONTINUE (reason "expired") every SCHEDULED step that started more than
    ``after_days`` days before ``now``; the number of steps. 0 days: nothing."""
    if after_days <= 0:
        return 0
    cutoff = _local(now, tz) - timedelta(days=after_days)
    before = cutoff.strftime("%Y%m%d%H%M%S")
    # no time: the step starts at the end of its day, before the cutoff when its day is
    before_day = cutoff.strftime("%Y%m%d") + "000000"
    W = WorklistItem
    due = and_(
        W.sps_status == "SCHEDULED",
        W.sps_start < before,  # index ix_worklist_items_status_start
        or_(W.sps_start_time.is_not(None), W.sps_start < before_day),
    )
    total = 0
    while True:
        with db.write() as session:
            items = list(
                session.scalars(select(W).where(due).order_by(W.id).limit(batch).with_for_update())
            )
            for item in items:
                audit.record(
                    session,
                    ACTOR,
                    "item.expire",
                    f"item:{item.id}",
                    {
                        "from": "SCHEDULED",
                        "to": "DISCONTINUED",
                        "reason": EXPIRED,
                        "sps_start": item.sps_start,
                        "after_days": after_days,
                    },
                )
                item.sps_status = "DISCONTINUED"
                item.status_reason = EXPIRED
        total += len(items)
        if len(items) < batch or (stop is not None and stop.is_set()):
            return total


def purge(
    db: Database,
    now: datetime,
    retention_days: float,
    batch: int = BATCH,
    stop: threading.Event | None = None,
) -> dict:
    """Delete finished steps older than ``retention_days`` days and what goes with them;
    the counts {"items", "mpps", "outbox"}. 0 days: nothing."""
    counts = {"items": 0, "mpps": 0, "outbox": 0}
    if retention_days <= 0:
        return counts
    cutoff = now - timedelta(days=retention_days)
    W, M, L, Out = WorklistItem, MPPSTracking, mpps_worklist_links, OutboxMessage
    # an MPPS that holds its items: not final, or with an outbox row still open
    holding = (
        select(L.c.item_pk)
        .join(M, M.id == L.c.mpps_pk)
        .where(
            or_(
                M.status.not_in(FINAL_STATUSES),
                select(Out.id)
                .where(Out.mpps_uid == M.sop_instance_uid, Out.state.in_(OPEN_OUTBOX))
                .exists(),
            )
        )
    )
    due = and_(W.sps_status.in_(FINAL_STATUSES), W.updated_at < cutoff, W.id.not_in(holding))
    last_id = 0
    while True:
        with db.write() as session:
            rows = session.execute(
                select(W.id, W.accession_number)
                .where(due, W.id > last_id)
                .order_by(W.id)
                .limit(batch)
                .with_for_update()
            ).all()
            if not rows:
                return counts
            ids = [r.id for r in rows]
            last_id = ids[-1]
            # the MPPS of these items that no other item keeps
            linked = select(L.c.mpps_pk).where(L.c.item_pk.in_(ids))
            kept = select(L.c.mpps_pk).where(L.c.item_pk.not_in(ids))
            mpps = session.execute(
                select(M.id, M.sop_instance_uid).where(M.id.in_(linked), M.id.not_in(kept))
            ).all()
            mpps_ids = [m.id for m in mpps]
            uids = [m.sop_instance_uid for m in mpps]
            gone = delete(Out).where(Out.mpps_uid.in_(uids))
            outbox = rowcount(session.execute(gone)) if uids else 0
            session.execute(delete(L).where(or_(L.c.item_pk.in_(ids), L.c.mpps_pk.in_(mpps_ids))))
            session.execute(delete(M).where(M.id.in_(mpps_ids)))
            session.execute(
                update(OrthancStudy).where(OrthancStudy.item_pk.in_(ids)).values(item_pk=None)
            )
            session.execute(delete(W).where(W.id.in_(ids)))
            detail: dict[str, Any] = {
                "items": len(ids),
                "mpps": len(mpps_ids),
                "outbox": outbox,
                "retention_days": retention_days,
                "item_ids": ids,
                "accession_numbers": sorted({r.accession_number for r in rows} - {None}),
                "mpps_uids": uids,
            }
            audit.record(session, ACTOR, "item.purge", f"items:{len(ids)}", detail)
        counts["items"] += len(ids)
        counts["mpps"] += len(mpps_ids)
        counts["outbox"] += outbox
        if len(ids) < batch or (stop is not None and stop.is_set()):
            return counts


def run_pass(
    db: Database,
    config: Config,
    holder: str,
    now: datetime | None = None,
    tz: tzinfo | None = None,
    stop: threading.Event | None = None,
) -> dict | None:
    """One pass of both jobs if this instance holds the lease ``lifecycle``; None when
    another instance holds it. The lease outlives two intervals, so a dead holder's
    jobs are taken over within a few passes."""
    now = now or utcnow()
    seconds = max(3 * config.lifecycle_interval, 30.0)
    if not leases.acquire(db, LEASE, holder, seconds, now=now):
        return None
    expired = expire(db, now, config.worklist_expire_after, tz, stop=stop)
    purged = purge(db, now, config.worklist_retention_days, stop=stop)
    return {"expired": expired} | purged


class Lifecycle:
    """The timer of ``serve``: a pass every ``lifecycle_interval`` seconds; one log line
    per pass that changed something."""

    def __init__(self, db: Database, config: Config, tz: tzinfo | None = None) -> None:
        self.db = db
        self.config = config
        self.tz = tz if tz is not None else server_tz(config.timezone_offset)
        self.holder = leases.instance_name()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lifecycle", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the pass in progress, if any, and give the lease up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            leases.release(self.db, LEASE, self.holder)
        except Exception:
            log.warning("Lifecycle: could not release the lease", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.config.lifecycle_interval):
            try:
                done = run_pass(self.db, self.config, self.holder, tz=self.tz, stop=self._stop)
            except Exception:
                log.exception("Lifecycle pass failed")
                continue
            if done and any(done.values()):
                log.info(
                    "Lifecycle: %d item(s) expired, %d item(s) purged with %d MPPS and "
                    "%d outbox row(s)",
                    done["expired"],
                    done["items"],
                    done["mpps"],
                    done["outbox"],
                )
