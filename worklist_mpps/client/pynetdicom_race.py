"""The fix of pynetdicom's requestor race, and the list of the internals it relies on.

pynetdicom 3.0.4 pauses an association's reactor thread for each ``send_*()``: the
sender clears ``_reactor_checkpoint`` and spins until ``_is_paused``; the reactor sets
``_is_paused = True``, waits on the checkpoint, sets ``_is_paused = False`` and takes the
next DIMSE message off the queue. If the reactor has just passed ``wait()`` when the
sender clears the checkpoint, the sender still reads ``_is_paused`` True and sends; a
response queued before the sender reaches its own blocking get is taken by the reactor,
logged as "Received unexpected N-SET service message" and dropped. The sender then waits
out its DIMSE timeout and aborts (the next send_n_set raises "association with a peer
SCP must be established prior to sending an N-SET request"); a C-FIND can lose its first
pending response (one match fewer, final Success). The server had answered in time.
Found by tests/test_soak.py (issue 18); tests/test_client_race.py holds the window open
and shows it.

The fix: ``_is_paused`` behind a per-association lock, and the reactor not leaving its
pause while a sender holds the checkpoint cleared. It applies to requestor associations
only, those built by :class:`RequestorAE` (the client wing's, dicom-mpps's and MPPS
forwarding's): the server's acceptors are built by its own listener
(dimse/pynetdicom_ext/reactor.py, or pynetdicom's RequestHandler when dimse_fast_path is
false) and keep pynetdicom's plain attribute.

This is the client wing's only code that depends on pynetdicom internals; they are
listed in ``PYNETDICOM_INTERNALS`` and checked by ``problems()``, which
tests/test_client_race.py runs so that a pynetdicom release that changes one fails there,
naming it. (The server's own list is dimse/pynetdicom_ext/internals.py; the import
contracts keep the client wing from importing dimse/.)
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

_LOCK, _FLAG = "_wm_paused_lock", "_wm_paused"


class _Paused:
    """``Association._is_paused`` as a lock-guarded property: setting it from True to
    False (the reactor leaving its pause) waits while a sender holds the checkpoint
    cleared, so the reactor never takes a message off the queue once a sender saw it
    paused. Only leaving a pause waits: the reactor's first ``_is_paused = False`` (not
    paused yet) passes, or a sender on a fresh association would wait for a pause that
    never comes."""

    def __get__(self, assoc: Any, owner: type | None = None) -> Any:
        if assoc is None:
            return self
        with assoc.__dict__[_LOCK]:
            return assoc.__dict__[_FLAG]

    def __set__(self, assoc: Any, value: bool) -> None:
        lock: threading.Lock = assoc.__dict__[_LOCK]
        while True:
            with lock:
                paused = assoc.__dict__[_FLAG]
                if value or not paused or assoc._reactor_checkpoint.is_set():
                    assoc.__dict__[_FLAG] = value
                    return
            assoc._reactor_checkpoint.wait()


class PauseSafeAssociation(Association):
    """pynetdicom's requestor Association with the pause handshake fixed (``_Paused``)."""

    _is_paused = _Paused()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        vars(self).update({_LOCK: threading.Lock(), _FLAG: False})
        super().__init__(*args, **kwargs)


def make_pause_safe(assoc: Association) -> None:
    """Give ``assoc`` (created, its thread not started) the fixed pause handshake."""
    if isinstance(assoc, PauseSafeAssociation):
        return
    if type(assoc) is not Association or assoc.is_alive():
        raise TypeError(f"only a new pynetdicom Association can be made pause-safe: {assoc!r}")
    state = vars(assoc)
    state[_LOCK] = threading.Lock()
    state[_FLAG] = state.pop("_is_paused")
    assoc.__class__ = PauseSafeAssociation


class RequestorAE(AE):
    """pynetdicom's AE whose ``associate()`` builds :class:`PauseSafeAssociation`s.

    ``AE.associate`` creates ``Association(self, MODE_REQUESTOR)`` and passes it to
    ``_create_socket`` before requesting the association and starting its thread; this
    hook changes the new object's class there (nothing else holds it yet)."""

    def _create_socket(self, assoc: Association, *args: Any, **kwargs: Any) -> Any:
        make_pause_safe(assoc)
        return super()._create_socket(assoc, *args, **kwargs)


# --- what the fix relies on, and the check of it ---------------------------------------------

_SPIN = re.compile(r"self\._reactor_checkpoint\.clear\(\)\s*\n\s*while not self\._is_paused:")
_PAUSE = re.compile(
    r"self\._is_paused = True\s*\n\s*self\._reactor_checkpoint\.wait\(\)\s*\n"
    r"\s*self\._is_paused = False\s*\n(?:\s*#.*\n|\s*\n)*"
    r"\s*context_id, msg = self\.dimse\.get_msg\(block=False\)"
)

AE_MODULE, ASSOC_MODULE = "pynetdicom.ae", "pynetdicom.association"

# (module, name, code its source must still contain: exact text, or a compiled pattern)
Internal = tuple[str, str, tuple[str | re.Pattern[str], ...]]
PYNETDICOM_INTERNALS: tuple[Internal, ...] = (
    (
        ASSOC_MODULE,
        "Association.__init__",
        (
            "self._reactor_checkpoint: threading.Event = threading.Event()",
            "self._reactor_checkpoint.set()",
            "self._is_paused: bool = False",
        ),
    ),
    # the pause the reactor takes each loop, right before taking a message off the queue
    (ASSOC_MODULE, "Association._run_reactor", (_PAUSE,)),
    # the sender's side: clear the checkpoint, spin until paused (release, each send_*)
    *(
        (ASSOC_MODULE, f"Association.{name}", (_SPIN,))
        for name in (
            "release",
            "send_c_echo",
            "send_c_find",
            "send_n_create",
            "send_n_set",
            "send_n_get",
        )
    ),
    # RequestorAE's hook: the new association reaches _create_socket before it starts
    (
        AE_MODULE,
        "ApplicationEntity.associate",
        (
            re.compile(
                r"assoc = Association\(self, MODE_REQUESTOR\)\n"
                r"(?:(?!.*\.start\().*\n)*?\s*sock = self\._create_socket\(assoc,"
                r"(?:.*\n)*?\s*assoc\.start\(\)"
            ),
        ),
    ),
    (AE_MODULE, "ApplicationEntity._create_socket", ("assoc: Association",)),
)


def problems(internals: tuple[Internal, ...] = PYNETDICOM_INTERNALS) -> list[str]:
    """One message per internal that is missing or changed, naming it."""
    found = []
    for module, name, codes in internals:
        what = f"pynetdicom internal {name} ({module}, used by client/pynetdicom_race.py)"
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            text = inspect.getsource(obj)
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            found.append(f"{what} is missing or unreadable: {exc}")
            continue
        for code in codes:
            if not (code in text if isinstance(code, str) else code.search(text)):
                shown = code if isinstance(code, str) else code.pattern
                found.append(f"{what} changed: its code no longer contains {shown!r}")
    return found
