"""An open association that carries nothing costs (almost) nothing (issue 18): the
event-driven reactors wait until a timer is due instead of waking every few ms. Counted,
not timed: the loop turns of both threads of one idle association over IDLE seconds."""

from __future__ import annotations

import collections
import time

import pytest
from pynetdicom.sop_class import Verification

from worklist_mpps.client.pynetdicom_race import RequestorAE

pytestmark = pytest.mark.dimse

IDLE = 2.0  # s with the association open and silent


def test_idle_association_threads_do_not_poll(tmp_path, monkeypatch):
    from worklist_mpps.config import Config
    from worklist_mpps.context import AppContext
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database
    from worklist_mpps.dimse.pynetdicom_ext import reactor
    from worklist_mpps.dimse.server import DicomServer

    turns: collections.Counter[str] = collections.Counter()
    wait, expired = reactor.EventDrivenDUL._wait, reactor.EventDrivenDUL.idle_timer_expired

    def counted_wait(self) -> None:  # the DUL thread's wait, once a loop turn when idle
        turns["dul"] += 1
        wait(self)

    def counted_expired(self) -> bool:  # asked once a turn of the association thread
        turns["association"] += 1
        return expired(self)

    monkeypatch.setattr(reactor.EventDrivenDUL, "_wait", counted_wait)
    monkeypatch.setattr(reactor.EventDrivenDUL, "idle_timer_expired", counted_expired)
    db = Database(f"sqlite:///{tmp_path / 'idle.db'}")
    migrate.upgrade(db.engine)
    server = DicomServer(AppContext(Config(bind="127.0.0.1", port=0), db))
    server.start()
    try:
        ae = RequestorAE(ae_title="IDLESCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="WORKLISTS")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        time.sleep(0.2)  # the echo's turns are over
        turns.clear()
        time.sleep(IDLE)
        idle = dict(turns)
        assert assoc.send_c_echo().Status == 0, "the idle association still serves"
        assoc.release()
    finally:
        server.stop()
        db.dispose()
    # IDLE_WAIT (1 s) bounds each wait: about IDLE turns each; polling every 20 ms: ~100
    assert idle.get("dul", 0) <= 2 * IDLE / reactor.IDLE_WAIT + 2, idle
    assert idle.get("association", 0) <= 2 * IDLE / reactor.IDLE_WAIT + 2, idle
