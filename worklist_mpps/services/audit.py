"""Audit trail: every worklist and MPPS change records who, what and when.

Written with :func:`record` inside the transaction of the change itself, so
an audited change and its audit event exist together or not at all.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import AuditEvent, as_utc, utcnow


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a calling AE title over DIMSE, a user over HTTP or the CLI."""

    name: str
    address: str | None = None
    channel: str = "DIMSE"

    @classmethod
    def cli(cls) -> Actor:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(user, "local", "CLI")


def record(
    session: Session | Connection,
    actor: Actor | None,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one audit row in ``session``'s transaction (a session or a Core connection):
    one Core INSERT, sent now (the ORM unit of work cost more than the row, issue 18); it
    commits or rolls back with the change it records."""
    actor = actor or Actor("unknown", None, "unknown")
    session.execute(
        _INSERT,
        {
            "at": utcnow(),
            "channel": actor.channel,
            "actor": actor.name[:128],
            "address": actor.address or None,
            "action": action,
            "target": str(target)[:80],
            "detail": detail,
        },
    )


_INSERT = insert(AuditEvent.__table__)  # type: ignore[arg-type]


def query(
    db: Database,
    since: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    limit: int = 100,
) -> list[dict]:
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if target:
        stmt = stmt.where(AuditEvent.target == target)
    with db.read() as session:
        return [
            {
                "id": e.id,
                "at": as_utc(e.at).isoformat(timespec="milliseconds"),
                "channel": e.channel,
                "actor": e.actor,
                "address": e.address,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in session.scalars(stmt)
        ]
