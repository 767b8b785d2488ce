"""Durable notification outbox: MPPS changes reach Orthanc and downstream peers.

Every MPPS change writes one row per configured target in the same database
transaction as the change (:func:`enqueue`), so a notification exists exactly
when the change does. A worker thread in ``serve`` delivers rows with retry and
exponential backoff, in id order per (target, MPPS instance); rows survive
restarts, and a target that is down only delays delivery. IHE: the PPS
Manager "must not use failure of one or more of these transmissions as a
reason for rejecting the initial transmission": nothing here runs inside a
DIMSE reply.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database, rowcount
from worklist_mpps.db.models import OutboxMessage, as_utc, utcnow

log = logging.getLogger("worklist_mpps.delivery.worker")

CLAIM_SECONDS = 120  # a claimed row is another process's for this long at most


class Retry(Exception):
    """Deliver again later (``after`` seconds, or by the backoff)."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


class Failed(Exception):
    """Will not succeed by retrying; the row is marked failed for an operator."""


class Target(Protocol):
    """A delivery target."""

    name: str
    supersede: bool  # only the newest state matters: older pending rows are dropped
    # a failed row holds the later rows of its key until an operator retries it (HL7
    # order status: CM must not reach the order placer before the IP it refused);
    # false: a failed row is passed over
    hold_after_failure: bool

    def deliver(self, message: OutboxMessage) -> str | None:
        """Deliver; return a note for the log, raise Retry or Failed."""


def age_seconds(message: OutboxMessage, now: datetime | None = None) -> float:
    return ((now or utcnow()) - as_utc(message.created_at)).total_seconds()


class OutboxWorker:
    """Delivers due rows; several server processes may run one each."""

    def __init__(
        self, db: Database, config: Config, targets: dict[str, Target], batch: int = 20
    ) -> None:
        self.db = db
        self.config = config
        self.targets = targets
        self.batch = batch
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()
        log.info("Outbox worker started for %s", ", ".join(self.targets) or "no targets")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the delivery in progress, if any."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("Outbox worker error")
                busy = 0
            if not busy:
                self.wake.wait(timeout=1.0)
                self.wake.clear()

    # --- one pass ----------------------------------------------------------------------

    def _heads(self, session: Session, now: datetime) -> list[OutboxMessage]:
        """Due, unclaimed rows that are the oldest pending one of their (target, MPPS), and
        for a target that holds after a failure, with no failed row before them."""
        older = aliased(OutboxMessage)
        holding = [n for n, t in self.targets.items() if t.hold_after_failure]
        earlier_pending = exists().where(
            older.target == OutboxMessage.target,
            older.mpps_uid == OutboxMessage.mpps_uid,
            older.id < OutboxMessage.id,
            or_(
                older.state == "pending",
                and_(older.state == "failed", OutboxMessage.target.in_(holding)),
            ),
        )
        return list(
            session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.state == "pending",
                    OutboxMessage.target.in_(list(self.targets)),
                    OutboxMessage.next_attempt_at <= now,
                    or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
                    ~earlier_pending,
                )
                .order_by(OutboxMessage.id)
                .limit(self.batch)
            )
        )

    def _claim(self, message_id: int, now: datetime) -> OutboxMessage | None:
        """Take the row for this worker, dropping superseded older states first."""
        with self.db.write() as session:
            claimed = rowcount(
                session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.id == message_id,
                        OutboxMessage.state == "pending",
                        or_(
                            OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now
                        ),
                    )
                    .values(
                        claimed_by=self.owner, claimed_until=now + timedelta(seconds=CLAIM_SECONDS)
                    )
                )
            )
            if claimed != 1:
                return None
            message = session.get(OutboxMessage, message_id)
            if message is None:  # the row just claimed, in this transaction: not expected
                return None
            target = self.targets[message.target]
            if target.supersede:
                newest = session.scalar(
                    select(OutboxMessage.id)
                    .where(
                        OutboxMessage.target == message.target,
                        OutboxMessage.mpps_uid == message.mpps_uid,
                        OutboxMessage.state == "pending",
                    )
                    .order_by(OutboxMessage.id.desc())
                    .limit(1)
                )
                if newest != message.id:
                    session.execute(
                        update(OutboxMessage)
                        .where(
                            OutboxMessage.target == message.target,
                            OutboxMessage.mpps_uid == message.mpps_uid,
                            OutboxMessage.state == "pending",
                            OutboxMessage.id < newest,
                        )
                        .values(
                            state="superseded",
                            claimed_by=None,
                            claimed_until=None,
                            last_error=f"superseded by #{newest}",
                        )
                    )
                    log.info(
                        "Outbox #%d %s %s: superseded by #%d",
                        message.id,
                        message.target,
                        message.mpps_uid,
                        newest,
                    )
                    return None
            session.expunge(message)
            return message

    def _backoff(self, attempts: int) -> float:
        return min(
            self.config.outbox_retry_max, self.config.outbox_retry_min * 2 ** max(0, attempts - 1)
        )

    def _finish(self, message: OutboxMessage, **values: object) -> None:
        with self.db.write() as session:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message.id, OutboxMessage.claimed_by == self.owner)
                .values(
                    claimed_by=None, claimed_until=None, attempts=message.attempts + 1, **values
                )
            )

    def deliver(self, message: OutboxMessage) -> None:
        target = self.targets[message.target]
        label = (
            f"Outbox #{message.id} {message.target} {message.mpps_uid} {message.event} "
            f"{message.pps_status}"
        )
        try:
            note = target.deliver(message)
        except Retry as exc:
            delay = exc.after if exc.after is not None else self._backoff(message.attempts + 1)
            log.info("%s: retry in %.0f s: %s", label, delay, exc)
            self._finish(
                message,
                last_error=str(exc)[:500],
                next_attempt_at=utcnow() + timedelta(seconds=delay),
            )
        except Failed as exc:
            log.error("%s: failed: %s", label, exc)
            self._finish(message, state="failed", last_error=str(exc)[:500])
        except Exception as exc:
            log.exception("%s: unexpected error, will retry", label)
            self._finish(
                message,
                last_error=f"{exc.__class__.__name__}: {exc}"[:500],
                next_attempt_at=utcnow() + timedelta(seconds=self._backoff(message.attempts + 1)),
            )
        else:
            log.info(
                "%s: delivered (attempt %d)%s",
                label,
                message.attempts + 1,
                f": {note}" if note else "",
            )
            self._finish(message, state="delivered", delivered_at=utcnow(), last_error=note)

    def run_once(self) -> int:
        """Deliver what is due now; the number of rows handled."""
        now = utcnow()
        with self.db.read() as session:
            heads = self._heads(session, now)
        handled = 0
        for head in heads:
            if self._stop.is_set():
                break
            message = self._claim(head.id, now)
            if message is not None:
                self.deliver(message)
            handled += 1
        return handled
