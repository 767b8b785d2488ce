"""One instance at a time: a named lease in the database (table ``leases``), for the jobs
that must not run twice when several instances share one database (the Orthanc change
feed, the expiry and purge timer; README "Several instances, one PostgreSQL").

An instance holds a lease for ``seconds`` and renews it while it works; an instance that
dies loses it when it runs out, and another one takes over. The check and the take happen
in one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: the row locked FOR UPDATE,
a concurrent first insert refused by the primary key).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import Lease, as_utc, utcnow


def instance_name() -> str:
    """This process, as lease holders are named: host, PID and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def acquire(
    db: Database, name: str, holder: str, seconds: float, now: datetime | None = None
) -> bool:
    """Take or renew lease ``name`` for ``seconds``: True when ``holder`` has it now."""
    now = now or utcnow()
    until = now + timedelta(seconds=seconds)
    try:
        with db.write() as session:
            lease = session.get(Lease, name, with_for_update=True)
            if lease is None:
                session.add(Lease(name=name, holder=holder, until=until))
                return True
            if lease.holder != holder and as_utc(lease.until) > now:
                return False
            lease.holder, lease.until = holder, until
            return True
    except IntegrityError:  # another instance inserted the first row at the same moment
        return False


def release(db: Database, name: str, holder: str) -> None:
    """Give the lease up (at a clean stop), so another instance need not wait it out."""
    with db.write() as session:
        session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def holder_of(db: Database, name: str, now: datetime | None = None) -> str | None:
    """Who holds ``name`` now (None: nobody, or the lease ran out)."""
    now = now or utcnow()
    with db.read() as session:
        lease = session.get(Lease, name)
        if lease is None or as_utc(lease.until) <= now:
            return None
        return lease.holder
