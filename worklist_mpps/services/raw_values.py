"""Text values of raw data elements converted as pydicom converts them, without its hooks.

A request's elements are converted once each (dicom.py ``_converted``, issue 18). pydicom's
``convert_raw_data_element`` runs two hooks, a dictionary look-up and a converter per
element: most of decoding an MPPS request. For the text VRs an MPPS request is made of,
:func:`element` gives the same DataElement directly, by the rules of pydicom 3's
``pydicom.values`` converters (PS3.5 6.2: the padding each VR may carry, backslash
between values):

- AE: each value without leading and trailing spaces (``convert_AE_string``);
- AS, CS, DA, DT, TM: the default character repertoire, trailing spaces and NULs off the
  whole value, then split (``convert_string``; DA, DT and TM only while pydicom's
  ``datetime_conversion`` is off, its default);
- UI: as CS, each value a ``UID`` (``convert_UI``);
- SH, LO, UC: the data set's character set, each value without trailing spaces and NULs
  (``convert_text``); ST, LT, UT: one value, the same (``convert_single_string``).

An empty value of these VRs, of PN or of SQ is pydicom's ``empty_value_for_VR``, as
``convert_value`` gives it. Anything else returns None and pydicom converts it: other VRs
(PN, numbers, sequences), a VR to look up beyond pydicom's main dictionary, escape sequences (ISO
2022), bytes the character set does not decode, several character sets, hooks or
callbacks configured. tests/test_raw_values.py compares with pydicom over random values.
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from typing import Any

from pydicom import config
from pydicom.charset import default_encoding
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.multival import MultiValue
from pydicom.uid import UID

_ESC = 0x1B  # starts an ISO 2022 escape sequence (PS3.5 6.1.2.5)
_UNDEFINED = 0xFFFFFFFF


def _split(text: str, valtype: Callable[[str], Any]) -> Any:
    """pydicom's ``multi_string``: trailing spaces and NULs off, then the values."""
    items = text.rstrip(" \x00").split("\\")
    return valtype(items[0]) if len(items) == 1 else MultiValue(valtype, items)


def _string(value: bytes, _encoding: str) -> Any:
    return _split(value.decode(default_encoding), str)


def _ae(value: bytes, _encoding: str) -> Any:
    items = [item.strip() for item in value.decode(default_encoding).split("\\")]
    return items[0] if len(items) == 1 else MultiValue(str, items)


def _ui(value: bytes, _encoding: str) -> Any:
    return _split(value.decode(default_encoding).rstrip("\0 "), UID)


def _text(value: bytes, encoding: str) -> Any:
    items = [item.rstrip("\0 ") for item in value.decode(encoding).split("\\")]
    return items[0] if len(items) == 1 else MultiValue(str, items)


def _single(value: bytes, encoding: str) -> Any:
    return value.decode(encoding).rstrip("\0 ")


_STRINGS = {"AS": _string, "CS": _string, "AE": _ae, "UI": _ui}
_DATES = {"DA": _string, "DT": _string, "TM": _string}  # with datetime_conversion off
_TEXTS = {"SH": _text, "LO": _text, "UC": _text, "ST": _single, "LT": _single, "UT": _single}
# an empty value of these is pydicom's empty_value_for_VR (convert_value), whatever the set
_EMPTY_VRS = frozenset({*_STRINGS, *_DATES, *_TEXTS, "PN", "SQ"})


def _plain_pydicom() -> bool:
    """pydicom converts raw elements with its own hooks and no callback."""
    return (
        config.data_element_callback is None
        and not hooks.raw_element_kwargs
        and hooks.raw_element_vr is raw_element_vr
        and hooks.raw_element_value is raw_element_value
    )


def element(raw: RawDataElement, encodings: str | MutableSequence[str]) -> DataElement | None:
    """The DataElement pydicom's ``convert_raw_data_element(raw, encoding=encodings)``
    makes of ``raw``, for the VRs above; None for anything else."""
    vr = raw.VR
    if vr is None:  # implicit VR: pydicom's dictionary, as its raw_element_vr hook reads it
        entry = DicomDictionary.get(raw.tag)
        if entry is None:
            return None
        vr = entry[0]
    value = raw.value
    if raw.length == 0 and vr in _EMPTY_VRS:
        if not _plain_pydicom():
            return None
        return DataElement(raw.tag, vr, empty_value_for_VR(vr), raw.value_tell, False, True)
    if not value or not isinstance(value, bytes):
        return None  # deferred: pydicom's rules
    convert = _STRINGS.get(vr) or _TEXTS.get(vr)
    if convert is None and not config.datetime_conversion:
        convert = _DATES.get(vr)
    if convert is None or not _plain_pydicom():
        return None
    encodings = encodings or default_encoding  # as pydicom's convert_value
    if isinstance(encodings, str):
        encoding = encodings
    elif len(encodings) == 1:
        encoding = encodings[0]
    else:
        return None  # several character sets: ISO 2022 code extensions
    if vr in _TEXTS and _ESC in value:
        return None
    try:
        converted = convert(value, encoding)
    except (LookupError, UnicodeError):
        return None  # pydicom warns and replaces, or falls back to the default set
    return DataElement(
        raw.tag,
        vr,
        converted,
        raw.value_tell,
        raw.length == _UNDEFINED,
        already_converted=True,
    )
