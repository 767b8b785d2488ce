"""raw_values.element against pydicom's own convert_raw_data_element: for every VR it
converts, random values in several character sets, implicit and explicit VR, the same
DataElement (VR, value type, value, the types of multiple values), or None."""

from __future__ import annotations

import random

import pytest
from pydicom import config
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from worklist_mpps.services import raw_values

# pydicom's own conversion of the escape-sequence values (left to it) warns; expected here
pytestmark = pytest.mark.filterwarnings("ignore:Found unknown escape sequence:UserWarning")

# the VRs raw_values converts; PN and SQ only when empty
VRS = ["AE", "AS", "CS", "DA", "DT", "TM", "UI", "SH", "LO", "UC", "ST", "LT", "UT", "PN", "SQ"]
ENCODINGS = ["iso8859", "latin_1", "utf_8", "iso8859_5", ["iso8859"], "", []]
ALPHABET = "AZaz09 ^\\.-_=Ü éÖ\x00Жж患"


def tag_of(vr: str) -> int:
    """A standard attribute of that VR (implicit VR looks it up in pydicom's dictionary)."""
    from pydicom.datadict import DicomDictionary

    return next(t for t, e in DicomDictionary.items() if e[0] == vr and not e[3])


def raw(vr: str, value: bytes | None, implicit: bool) -> RawDataElement:
    return RawDataElement(
        Tag(tag_of(vr)),
        None if implicit else vr,
        len(value or b""),
        value,
        0,
        implicit,
        True,
        True,
        False,
    )


def described(elem) -> tuple:
    value = elem.value
    kinds = [type(v) for v in value] if isinstance(value, MultiValue) else None
    return (elem.tag, elem.VR, type(value), repr(value), kinds, elem.is_undefined_length)


def random_value(rng: random.Random, encoding: str) -> bytes:
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))
    try:
        data = text.encode(encoding or "iso8859", errors="strict")
    except UnicodeEncodeError:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    return data


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("vr", VRS[:-2])
def test_values_are_pydicoms(vr, implicit):
    rng = random.Random(f"{vr}-{implicit}")
    converted = 0
    for n in range(600):
        encodings = ENCODINGS[n % len(ENCODINGS)]
        first = encodings[0] if isinstance(encodings, list) and encodings else encodings
        value = random_value(rng, first if isinstance(first, str) else "")
        if n % 50 == 0:
            value = b"\x1b$B" + value  # an ISO 2022 escape: pydicom's
        ours = raw_values.element(raw(vr, value, implicit), encodings)
        theirs = convert_raw_data_element(raw(vr, value, implicit), encoding=encodings)
        if ours is None:
            continue
        converted += 1
        assert described(ours) == described(theirs), (value, encodings)
        assert ours.value == theirs.value
    assert converted > 400


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("vr", VRS)
def test_empty_values_are_pydicoms(vr, implicit):
    for value in (None, b""):
        ours = raw_values.element(raw(vr, value, implicit), "iso8859")
        theirs = convert_raw_data_element(raw(vr, value, implicit), encoding="iso8859")
        assert ours is not None
        assert described(ours) == described(theirs)


def test_pydicom_converts_what_else_there_is():
    assert raw_values.element(raw("PN", b"Doe^John", False), "iso8859") is None
    assert raw_values.element(raw("SQ", b"\xfe\xff\x00\xe0\x00\x00\x00\x00", False), "") is None
    us = RawDataElement(Tag(0x00280010), "US", 2, b"\x00\x02", 0, False, True, True, False)
    assert raw_values.element(us, "iso8859") is None
    private = RawDataElement(Tag(0x00091001), None, 2, b"AB", 0, True, True, True, False)
    assert raw_values.element(private, "iso8859") is None  # no dictionary VR
    un = RawDataElement(Tag(0x00400254), "UN", 2, b"AB", 0, False, True, True, False)
    assert raw_values.element(un, "iso8859") is None
    lo = raw("LO", b"Zw\xf6lf", False)
    assert raw_values.element(lo, ["iso8859", "iso2022_jp"]) is None  # code extensions
    assert raw_values.element(raw("LO", b"\xff\xfe", False), "utf_8") is None  # undecodable


def test_pydicoms_datetime_conversion_is_honoured(monkeypatch):
    monkeypatch.setattr(config, "datetime_conversion", True)
    assert raw_values.element(raw("DA", b"20261203", False), "iso8859") is None
    assert raw_values.element(raw("CS", b"DONE", False), "iso8859") is not None


def test_a_registered_hook_is_honoured():
    from pydicom.hooks import hooks, raw_element_value

    def hook(raw, data, **kwargs):
        raw_element_value(raw, data, **kwargs)

    hooks.register_callback("raw_element_value", hook)
    try:
        assert raw_values.element(raw("CS", b"DONE", False), "iso8859") is None
    finally:
        hooks.register_callback("raw_element_value", raw_element_value)
    assert raw_values.element(raw("CS", b"DONE", False), "iso8859") is not None
