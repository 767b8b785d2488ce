"""pynetdicom's requestor race and the client wing's fix (client/pynetdicom_race.py).

pynetdicom 3.0.4's reactor thread can take a response off the queue under a sender's
feet (found by tests/test_soak.py, issue 18): the reproducer below holds the race's
window open, deterministically, and shows stock pynetdicom losing the N-SET response
while the client wing's RequestorAE keeps it. The guard tests fail, naming the internal,
when a pynetdicom release changes what the fix relies on.
"""

from __future__ import annotations

import inspect
import re
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from worklist_mpps.client import pynetdicom_race as race
from worklist_mpps.client.messages import ScheduledStep, n_create, n_set_progress
from worklist_mpps.client.pynetdicom_race import PauseSafeAssociation, RequestorAE

ROOT = Path(__file__).resolve().parents[1]

# --- the guard on the internals the fix relies on ---------------------------------------------


def test_pynetdicom_internals_the_fix_relies_on_are_there():
    problems = race.problems()
    assert not problems, "\n".join(problems)


def _altered(name: str, old: str | re.Pattern[str], new: str):
    """inspect.getsource, with ``old`` replaced by ``new`` in the source of ``name``."""
    real = inspect.getsource

    def getsource(obj):
        text = real(obj)
        if getattr(obj, "__qualname__", "") == name:
            text = old.sub(new, text) if isinstance(old, re.Pattern) else text.replace(old, new)
        return text

    return getsource


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        # the reactor no longer pauses right before taking a message
        (
            "Association._run_reactor",
            "self._reactor_checkpoint.wait()",
            "self._reactor_event.wait()",
        ),
        # a sender no longer spins on _is_paused
        ("Association.send_n_set", "while not self._is_paused:", "while not self.paused:"),
        ("Association.__init__", "self._is_paused: bool = False", "self._paused = False"),
        # AE.associate starts the association before _create_socket
        (
            "ApplicationEntity.associate",
            re.compile(r"sock = self\._create_socket"),
            "assoc.start()\n        sock = self._create_socket",
        ),
    ],
)
def test_a_changed_internal_is_named(monkeypatch, name, old, new):
    monkeypatch.setattr(race.inspect, "getsource", _altered(name, old, new))
    problems = race.problems()
    assert len(problems) == 1 and name in problems[0] and "changed" in problems[0], problems


def test_a_missing_internal_is_named(monkeypatch):
    monkeypatch.delattr(Association, "send_n_get")
    problems = race.problems()
    assert len(problems) == 1 and "Association.send_n_get" in problems[0], problems


def test_only_pynetdicom_race_touches_the_pause_internals():
    """The client wing's other modules use pynetdicom's public API, and build their AEs
    as RequestorAE (so every requestor of the product gets the fix)."""
    offenders = []
    for path in sorted((ROOT / "worklist_mpps").rglob("*.py")):
        if path.name == "pynetdicom_race.py" or "dimse" in path.parts:
            continue  # the server's acceptors: dimse/pynetdicom_ext, its own guard
        text = path.read_text()
        for pattern in (r"\b_is_paused\b", r"\b_reactor_checkpoint\b", r"(?<!Requestor)AE\("):
            offenders += [f"{path.name}: {pattern}" for _ in re.finditer(pattern, text)]
    assert not offenders, offenders


# --- the fixed pause handshake ----------------------------------------------------------------


def test_fix_holds_only_a_reactor_leaving_its_pause():
    """The reactor's first ``_is_paused = False`` (not paused yet) passes even with the
    checkpoint cleared by a sender; leaving a pause waits until the sender sets it."""
    assoc = PauseSafeAssociation(AE(), "requestor")
    assoc._reactor_checkpoint.clear()  # a sender is at work
    start = threading.Thread(target=setattr, args=(assoc, "_is_paused", False), daemon=True)
    start.start()
    start.join(10)
    assert not start.is_alive(), "the reactor's start held: the sender would wait forever"
    assoc._is_paused = True
    leave = threading.Thread(target=setattr, args=(assoc, "_is_paused", False), daemon=True)
    leave.start()
    leave.join(0.2)
    assert leave.is_alive() and assoc._is_paused, "left its pause under a sender's feet"
    assoc._reactor_checkpoint.set()
    leave.join(10)
    assert not leave.is_alive() and assoc._is_paused is False


def test_requestor_ae_builds_pause_safe_associations_only():
    """RequestorAE changes the class of its own new associations; a started or an
    acceptor-built association is refused, pynetdicom's Association keeps its attribute."""
    assert "_is_paused" not in vars(Association)
    assoc = Association(AE(), "requestor")
    race.make_pause_safe(assoc)
    assert type(assoc) is PauseSafeAssociation and assoc._is_paused is False
    assert "_is_paused" not in vars(assoc)
    race.make_pause_safe(assoc)  # once is enough
    with pytest.raises(TypeError):
        race.make_pause_safe(type("Other", (Association,), {})(AE(), "acceptor"))


def overtaken_n_set(ae: AE, port: int) -> tuple[int | None, bool]:
    """One N-CREATE, then an N-SET sent while the requestor's reactor is caught just
    past its checkpoint (held there 0.3 s) and the sender is slow to read its response
    (0.6 s after sending): the N-SET's status (None: no response) and whether the
    association is still up. Deterministic: the window of the race, held open."""
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 10, 2, 10
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS")
    assert assoc.is_established
    uid = generate_uid()
    create = n_create(
        [ScheduledStep(generate_uid(), "RACE")], modality="CT", station_ae_title="CT01"
    )
    status, _ = assoc.send_n_create(create, MPPS, uid)
    assert status.Status == 0
    armed = threading.Event()
    checkpoint, send_msg = assoc._reactor_checkpoint, assoc.dimse.send_msg
    sender = threading.current_thread()

    class Held(threading.Event):
        def wait(self, timeout=None):
            passed = checkpoint.wait(timeout)
            if armed.is_set() and threading.current_thread() is not sender:
                armed.clear()
                time.sleep(0.3)  # the reactor thread descheduled just past wait()
            return passed

        def set(self) -> None:
            checkpoint.set()

        def clear(self) -> None:
            checkpoint.clear()

        def is_set(self) -> bool:
            return checkpoint.is_set()

    def slow_send(*args, **kwargs):
        send_msg(*args, **kwargs)
        if threading.current_thread() is sender:
            time.sleep(0.6)  # the sender descheduled before its blocking get

    assoc._reactor_checkpoint = Held()
    assoc.dimse.send_msg = slow_send
    armed.set()
    time.sleep(0.05)  # the reactor is now held just past its checkpoint, paused
    try:
        status, _ = assoc.send_n_set(n_set_progress([]), MPPS, uid)
        return (status.Status if status and "Status" in status else None), assoc.is_established
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.mark.dimse
def test_pynetdicom_requestor_race_loses_a_response_and_the_fix_keeps_it(live_server):
    """The race behind "association must be established prior to N-SET": with
    pynetdicom's stock AE the N-SET response is taken by the reactor and dropped (the
    association then aborted at the DIMSE timeout); with the client wing's RequestorAE
    it reaches send_n_set. The server is right both times (it answered)."""
    server = live_server(None, "--http-enabled", "false", "--load-sample-data", "false")
    lost = overtaken_n_set(AE(ae_title="STOCKRACE"), server.port)
    kept = overtaken_n_set(RequestorAE(ae_title="FIXEDRACE"), server.port)
    assert lost == (None, False), f"pynetdicom's race did not show (fixed upstream?): {lost}"
    assert kept == (0, True), kept
    log = server.log()
    assert "N-SET from STOCKRACE" in log and "N-SET from FIXEDRACE" in log, "it answered both"


@pytest.mark.dimse
def test_the_client_wing_associates_pause_safe(live_server):
    """scu.Association (dicom-mpps, MPPS forwarding) runs on a PauseSafeAssociation."""
    from worklist_mpps.client.scu import Association as ScuAssociation
    from worklist_mpps.client.scu import Peer

    server = live_server(None, "--http-enabled", "false", "--load-sample-data", "false")
    with ScuAssociation(Peer("127.0.0.1", server.port, "WORKLISTS"), "FIXEDSCU", 10) as a:
        assert type(a.established) is PauseSafeAssociation
        create = n_create(
            [ScheduledStep(generate_uid(), "SCU")], modality="CT", station_ae_title="CT01"
        )
        status, uid = a.n_create(create, generate_uid())
        assert status.Status == 0
        assert a.n_set(uid, n_set_progress([])).Status == 0
