"""The guard on pynetdicom's internals: pynetdicom_ext (reactor.py, wire.py, assoc.py)
subclasses and calls private parts of pynetdicom, listed in pynetdicom_ext/internals.py.
A pynetdicom release that changes one fails here with a message naming it, not silently
on the wire. (Replaces the guard tests of test_i12_dimse.py and test_i12_hostile.py.)"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.dimse.pynetdicom_ext import internals
from worklist_mpps.dimse.pynetdicom_ext.internals import Internal

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "worklist_mpps"
EXT = PACKAGE / "dimse" / "pynetdicom_ext"


def test_installed_pynetdicom_is_the_tested_release():
    assert internals.version_problem() is None, internals.version_problem()


def test_pyproject_pins_the_tested_release():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if re.match(r"pynetdicom\b", d))
    assert pin.replace(" ", "") == "pynetdicom" + internals.TESTED_PYNETDICOM, (
        f"pyproject.toml has {pin!r}, pynetdicom_ext was tested with {internals.TESTED_PYNETDICOM}"
    )


def test_pynetdicom_internals_relied_on_are_there():
    """Every internal of internals.py still exists, with the parameters, code and
    instance attributes relied on."""
    assert len(internals.PYNETDICOM_INTERNALS) > 20
    problems = internals.problems()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "broken, expected",
    [
        (
            Internal(
                "reactor.py",
                "pynetdicom.dul",
                "DULServiceProvider._read_pdu_data",
                ("self", "size"),
            ),
            "pynetdicom internal DULServiceProvider._read_pdu_data (pynetdicom.dul, used by "
            "pynetdicom_ext/reactor.py) changed: expected parameters ('self', 'size'), "
            "got ('self',)",
        ),
        (
            Internal("wire.py", "pynetdicom.dimse", "DIMSEServiceProvider._gone"),
            "pynetdicom internal DIMSEServiceProvider._gone (pynetdicom.dimse, used by "
            "pynetdicom_ext/wire.py) is missing",
        ),
        (
            Internal(
                "reactor.py",
                "pynetdicom.transport",
                "RequestHandler.handle",
                ("self",),
                source=("assoc.begin()",),
            ),
            "its code no longer contains 'assoc.begin()'",
        ),
        (
            Internal(
                "reactor.py",
                "pynetdicom.association",
                "Association",
                attributes=("_no_such_attribute",),
            ),
            "instance attribute _no_such_attribute is missing",
        ),
    ],
)
def test_a_changed_internal_is_named(broken, expected):
    """The check itself fails, naming the internal, for each kind of change."""
    problems = internals.problems((broken,))
    assert len(problems) == 1 and expected in problems[0], problems


def _private_pynetdicom_uses(path: Path) -> list[str]:
    """Private names imported from pynetdicom, and attributes set or read with a leading
    underscore or as ``wm_*`` on anything but ``self``/``cls`` (pynetdicom's objects)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            found += [
                f"from {node.module} import {a.name}"
                for a in node.names
                if a.name.startswith("_") or ("._" in node.module)
            ]
        elif isinstance(node, ast.Attribute) and (
            node.attr.startswith("wm_")
            or (node.attr.startswith("_") and not node.attr.startswith("__"))
        ):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr in ("dul", "acse"):
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_only_pynetdicom_ext_touches_pynetdicom_internals():
    """dimse/ outside pynetdicom_ext uses pynetdicom's public API and pynetdicom_ext only
    (per-association state through assoc.note/set_note, the socket through socket_of,
    rejections through reject, listeners through register_server)."""
    offenders = {}
    for path in sorted((PACKAGE / "dimse").rglob("*.py")):
        if EXT in path.parents or path.name == "admission.py":  # admission: no pynetdicom
            continue
        uses = _private_pynetdicom_uses(path)
        if uses:
            offenders[str(path.relative_to(ROOT))] = uses
    assert not offenders, offenders


# --- the dimse_fast_path switch ---------------------------------------------------------------


def test_dimse_fast_path_setting():
    from worklist_mpps.config import load_config

    assert load_config(env={}).dimse_fast_path is True
    assert load_config(env={"WORKLIST_MPPS_DIMSE_FAST_PATH": "false"}).dimse_fast_path is False
    assert load_config(env={}, overrides={"dimse_fast_path": "false"}).dimse_fast_path is False


@pytest.mark.parametrize("fast", [True, False])
def test_dimse_fast_path_picks_the_reactors(tmp_path, fast):
    """On: the event-driven reactors (the DUL waits in select on its wake-up pipe) and
    wire.py's status-only responses; off: pynetdicom's own loops and encoding, with the
    message bound and the handshake deadline still set."""
    from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

    from worklist_mpps.config import Config
    from worklist_mpps.context import AppContext
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database
    from worklist_mpps.dimse.server import DicomServer

    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    migrate.upgrade(db.engine)
    server = DicomServer(AppContext(Config(bind="127.0.0.1", port=0, dimse_fast_path=fast), db))
    server.start()
    try:
        scu = RequestorAE(ae_title="SCU")
        scu.add_requested_context(Verification)
        # a second SOP Class: a Verification-only association is echo_fast.py's
        scu.add_requested_context(ModalityWorklistInformationFind)
        assoc = scu.associate("127.0.0.1", server.port, ae_title="WORKLISTS")
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0
            (acceptor,) = server.ae.active_associations
            assert (acceptor.fast_path, acceptor.dul.fast_path, acceptor.dimse.fast_path) == (
                fast,
            ) * 3
            assert (acceptor.dul._pipe is not None) == fast  # only the event-driven DUL
            # on: one thread per association, running the DUL loop too (no DUL thread)
            assert acceptor.dul.is_alive() != fast
            assert (acceptor.dul.owner == acceptor.ident) == fast
            assert acceptor.dimse.max_message_size == Config().max_message_size
            assert acceptor.ticket is not None and acceptor.ticket.associated
        finally:
            assoc.release()
    finally:
        server.stop(grace=2)
        db.dispose()


def test_c_find_without_fast_path_yields_every_response_to_pynetdicom(tmp_path):
    """dimse_fast_path off: even on a little-endian plain context, every pending response
    goes through pynetdicom's own encoding (the handler yields it; wire.py is not asked)."""
    from types import SimpleNamespace

    from pydicom.uid import ExplicitVRLittleEndian

    from conftest import SAMPLE
    from dicom_clients import worklist_query
    from worklist_mpps.config import Config
    from worklist_mpps.context import AppContext
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database
    from worklist_mpps.dimse.worklist import handle_find
    from worklist_mpps.services.loader import load_file

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    migrate.upgrade(db.engine)
    load_file(db, SAMPLE)
    requestor = SimpleNamespace(ae_title="SCU", address="127.0.0.1", port=1)
    # an association without a DUL or DIMSE provider: wire.py cannot be used on it
    event = SimpleNamespace(
        identifier=worklist_query(),
        is_cancelled=False,
        assoc=SimpleNamespace(requestor=requestor),
        context=SimpleNamespace(context_id=1, transfer_syntax=ExplicitVRLittleEndian),
    )
    sent = list(handle_find(event, AppContext(Config(dimse_fast_path=False), db)))
    assert len(sent) > 1 and {s for s, _ in sent} == {0xFF00}
    assert all(ds.AccessionNumber for _, ds in sent)
    db.dispose()
