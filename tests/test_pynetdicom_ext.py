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
        f"pyproject.toml has {pin!r}, pynetdicom_ext was tested with "
        f"{internals.TESTED_PYNETDICOM}")


def test_pynetdicom_internals_relied_on_are_there():
    """Every internal of internals.py still exists, with the parameters, code and
    instance attributes relied on."""
    assert len(internals.PYNETDICOM_INTERNALS) > 20
    problems = internals.problems()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("broken, expected", [
    (Internal("reactor.py", "pynetdicom.dul", "DULServiceProvider._read_pdu_data",
              ("self", "size")),
     "pynetdicom internal DULServiceProvider._read_pdu_data (pynetdicom.dul, used by "
     "pynetdicom_ext/reactor.py) changed: expected parameters ('self', 'size'), got ('self',)"),
    (Internal("wire.py", "pynetdicom.dimse", "DIMSEServiceProvider._gone"),
     "pynetdicom internal DIMSEServiceProvider._gone (pynetdicom.dimse, used by "
     "pynetdicom_ext/wire.py) is missing"),
    (Internal("reactor.py", "pynetdicom.transport", "RequestHandler.handle", ("self",),
              source=("assoc.begin()",)),
     "its code no longer contains 'assoc.begin()'"),
    (Internal("reactor.py", "pynetdicom.association", "Association",
              attributes=("_no_such_attribute",)),
     "instance attribute _no_such_attribute is missing"),
])
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
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") or ("._" in node.module)]
        elif isinstance(node, ast.Attribute) and (
                node.attr.startswith("wm_")
                or (node.attr.startswith("_") and not node.attr.startswith("__"))):
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
