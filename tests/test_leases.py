"""services/leases.py: one instance at a time, on SQLite and PostgreSQL (the `db` fixture),
with the clock given by the test."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import utcnow
from worklist_mpps.services import leases


def test_one_holder_until_the_lease_runs_out(db):
    t0 = utcnow()
    assert leases.acquire(db, "feed", "a", 30, now=t0)
    assert not leases.acquire(db, "feed", "b", 30, now=t0 + timedelta(seconds=29))
    assert leases.acquire(db, "feed", "a", 30, now=t0 + timedelta(seconds=29))  # renewed
    assert leases.holder_of(db, "feed", now=t0 + timedelta(seconds=58)) == "a"
    # a dead holder stops renewing: the lease is anyone's once it ran out
    assert leases.acquire(db, "feed", "b", 30, now=t0 + timedelta(seconds=60))
    assert leases.holder_of(db, "feed", now=t0 + timedelta(seconds=61)) == "b"
    assert leases.acquire(db, "other", "a", 30, now=t0)  # names are independent


def test_release_lets_another_take_it_at_once(db):
    assert leases.acquire(db, "timer", "a", 300)
    leases.release(db, "timer", "b")  # not b's to give
    assert not leases.acquire(db, "timer", "b", 300)
    leases.release(db, "timer", "a")
    assert leases.acquire(db, "timer", "b", 300)


def test_concurrent_takers_get_one_lease(db_url):
    """Eight threads, each with its own engine (as separate instances), race for a new
    lease: exactly one wins."""
    from worklist_mpps.db.migrate import upgrade

    first = Database(db_url)
    upgrade(first.engine)
    engines = [Database(db_url) for _ in range(8)]
    barrier = threading.Barrier(len(engines))
    won: list[str] = []

    def take(i: int, database: Database) -> None:
        barrier.wait(10)
        try:
            if leases.acquire(database, "race", f"i{i}", 60):
                won.append(f"i{i}")
        except IntegrityError:  # pragma: no cover - acquire must not raise it
            won.append("raised")

    threads = [threading.Thread(target=take, args=(i, d)) for i, d in enumerate(engines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for database in (first, *engines):
        database.dispose()
    assert len(won) == 1, won
