"""No stop-the-world collection on the serving path, and memory bounded without it
(issue 18). pynetdicom's listener ran a full ``gc.collect()`` every 60 passes of its loop
because ended associations (association, DUL, ACSE, DIMSE provider, socket, service users
pointing at each other) were only freed by the cycle collector; GatedAssociationServer
drops that call and EventDrivenAssociation breaks the cycles when it ends
(pynetdicom_ext/reactor.py). A real pynetdicom peer in another process opens the
associations; the server runs in this process so that the collector can be watched."""

from __future__ import annotations

import gc
import subprocess
import sys
import time

import pytest

from conftest import ROOT, wait_for

pytestmark = pytest.mark.dimse

ASSOCIATIONS = 130  # more than 60: the stock listener collects at least twice
CLIENT = """
import sys
sys.path.insert(0, {tests!r})
from dicom_clients import echo
for _ in range(int(sys.argv[2])):
    assert echo(int(sys.argv[1])) == 0
"""


def _echo_associations(port: int, n: int) -> None:
    subprocess.run(
        [sys.executable, "-c", CLIENT.format(tests=str(ROOT / "tests")), str(port), str(n)],
        check=True,
        timeout=120,
    )


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "stock-reactors"])
def test_associations_are_freed_without_a_full_collection(tmp_path, fast):
    """With the automatic collector off, ASSOCIATIONS C-ECHO associations leave no object
    behind (tracked objects and association objects counted before and after) and no
    generation-2 collection runs: one would be an explicit ``gc.collect()`` on the
    serving path (gc.callbacks sees those too)."""
    from worklist_mpps.config import Config
    from worklist_mpps.context import AppContext
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database
    from worklist_mpps.dimse.pynetdicom_ext.reactor import EventDrivenAssociation
    from worklist_mpps.dimse.server import DicomServer

    db = Database(f"sqlite:///{tmp_path / 'gc.db'}")
    migrate.upgrade(db.engine)
    server = DicomServer(AppContext(Config(bind="127.0.0.1", port=0, dimse_fast_path=fast), db))
    server.start()
    full: list[float] = []
    started: list[float] = []

    def watch(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                full.append(time.perf_counter() - started.pop())

    try:
        _echo_associations(server.port, 10)  # warm-up: pools, caches, lazy imports
        wait_for(lambda: not server.ae.active_associations, timeout=10)
        gc.collect()
        gc.disable()
        gc.callbacks.append(watch)
        try:
            objects, rss = len(gc.get_objects()), _rss_kib()
            _echo_associations(server.port, ASSOCIATIONS)
            wait_for(lambda: not server.ae.active_associations, timeout=10)
            time.sleep(0.3)  # the last association thread's own end
            grown = len(gc.get_objects()) - objects
            left = sum(isinstance(o, EventDrivenAssociation) for o in gc.get_objects())
            rss_grown = _rss_kib() - rss
        finally:
            gc.callbacks.remove(watch)
            gc.enable()
        assert full == [], f"{len(full)} full collection(s) on the serving path: {full}"
        assert left == 0, f"{left} ended association(s) not freed by reference counting"
        # a few hundred objects per association when they are only freed by collection
        assert grown < 2 * ASSOCIATIONS, f"{grown} more tracked objects after the run"
        assert rss_grown < 16 * 1024, f"RSS grew by {rss_grown} KiB"
        assert gc.collect() < ASSOCIATIONS  # no cyclic garbage per association either
    finally:
        server.stop(grace=2)
        db.dispose()


def test_listener_loop_does_not_collect():
    """GatedAssociationServer.service_actions (called every pass of socketserver's loop)
    runs no collection: pynetdicom's ran ``gc.collect()`` on every 60th pass."""
    from worklist_mpps.dimse.pynetdicom_ext.reactor import GatedAssociationServer

    listener = object.__new__(GatedAssociationServer)
    listener._gc = [0, 59]  # pynetdicom's pass counter (AssociationServer.__init__)
    collections: list[int] = []
    callback = lambda phase, info: phase == "start" and collections.append(info["generation"])  # noqa: E731
    gc.callbacks.append(callback)
    try:
        for _ in range(200):
            listener.service_actions()
    finally:
        gc.callbacks.remove(callback)
    assert 2 not in collections
