"""Explicit VR Little Endian bytes of an MPPS data set, written without pydicom's per-element
machinery where the element is plain (issue 18).

pydicom's ``write_dataset`` spends most of an MPPS message's encoding time in its general
per-element path (a buffer per element, the writer table, the VR and length rules, the
ambiguous-VR walk of a data set read in another transfer syntax). The data sets stored
here are simple: text values, sequences of such items, one character set for the whole
data set (none, or ISO_IR 192 after ``dicom.charset_for_storage``). :func:`write` writes
those elements itself, exactly as pydicom does (PS3.5 7.1.2 explicit VR element header,
7.5 sequence items with explicit lengths or delimiters as the element says; the value
joined by backslash and padded to even length, with a space, or NUL for UI: PS3.5 6.2),
and hands every other element to pydicom's ``write_data_element`` with the same
character set: a number string, a binary value, a person name already encoded, a value
the character set cannot encode, an element still raw in another encoding.

Returns None (the caller then runs pydicom's ``write_dataset``) when the data set is not
one this writer vouches for: an ambiguous VR, a character set other than the default
repertoire, an ISO 8859 part or UTF-8, or a sequence item with a character set of its
own. ``tests/test_dataset_writer.py`` compares its bytes with pydicom's.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName

_LONG = struct.Struct("<HH2sHL")  # tag, VR, reserved, 32-bit length (PS3.5 7.1.2)
_SHORT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length
_ITEM = struct.Struct("<HHL")  # item / delimiter tag and length (PS3.5 7.5)
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
# pydicom's write_string: values in its default encoding whatever the character set
_ASCII_VRS = {"AE": b" ", "AS": b" ", "CS": b" ", "DA": b" ", "DT": b" ", "TM": b" "}
_ASCII_VRS |= {"UI": b"\0", "UR": b" "}
# pydicom's write_text: values in the data set's character set, space padded
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
# Python codecs (pydicom's names) in which text is one encode call, no escapes
_PLAIN_CODECS = frozenset({"iso8859", "latin_1", "UTF8"} | {f"iso8859_{n}" for n in range(2, 16)})
_CHARSET = 0x00080005


class _Unsure(Exception):
    """The data set is not one this writer vouches for: pydicom writes it whole (as it
    does after any other exception here, raising it again if it is the value's fault)."""


def write(ds: Dataset) -> bytes | None:
    """``ds`` as pydicom's ``write_dataset`` writes it in Explicit VR Little Endian, or
    None when pydicom must (see the module docstring)."""
    try:
        codec = _codec(ds.get(_CHARSET), default_encoding)
        out: list[bytes] = []
        _dataset(out, ds, codec)
    except Exception:  # noqa: BLE001 - _Unsure, or a value pydicom must judge (and report)
        return None
    return b"".join(out)


def _codec(charset: Any, parent: str) -> str:
    if charset is None:
        return parent
    value = charset.value if isinstance(charset, (DataElement, RawDataElement)) else charset
    if isinstance(value, bytes):
        value = value.decode("latin_1").strip(" \0")
    encodings = convert_encodings(value)
    if len(encodings) != 1 or encodings[0] not in _PLAIN_CODECS:
        raise _Unsure
    return encodings[0]


def _dataset(out: list[bytes], ds: Dataset, codec: str) -> None:
    """The elements of ``ds`` in tag order (group lengths left out, as pydicom does)."""
    elements = ds._dict
    for tag in sorted(elements):
        if tag.element == 0 and tag.group > 6:
            continue
        elem = elements[tag]
        if isinstance(elem, RawDataElement):
            _raw(out, ds, elem, codec)
            continue
        vr = elem.VR
        if vr is None or len(vr) != 2:
            raise _Unsure  # ambiguous: pydicom's correct_ambiguous_vr decides
        if vr == "SQ":
            _sequence(out, elem, codec)
            continue
        value = _value(elem, vr, codec)
        if value is None:
            _pydicom(out, elem, codec)
            continue
        _header(out, tag, vr, len(value))
        out.append(value)


def _raw(out: list[bytes], ds: Dataset, elem: RawDataElement, codec: str) -> None:
    """A raw element: its bytes as read when they are Explicit VR Little Endian in this
    character set (pydicom writes them so); anything else must be decoded by pydicom."""
    if ds.original_encoding != (False, True) or ds.original_character_set != ds._character_set:
        raise _Unsure
    value, vr = elem.value, elem.VR
    if elem.length == _UNDEFINED or not isinstance(value, bytes) or vr is None or len(vr) != 2:
        _pydicom(out, elem, codec)
        return
    if vr not in _LONG_VRS and len(value) > 0xFFFF:
        _pydicom(out, elem, codec)
        return
    _header(out, elem.tag, vr, len(value))
    out.append(value)


def _header(out: list[bytes], tag: int, vr: str, length: int) -> None:
    if vr in _LONG_VRS:
        out.append(_LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode("latin_1"), 0, length))
    else:
        out.append(_SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode("latin_1"), length))


def _value(elem: DataElement, vr: str, codec: str) -> bytes | None:
    """The padded value bytes of a plain text element; None for pydicom to write."""
    pad = _ASCII_VRS.get(vr)
    text = vr in _TEXT_VRS
    if pad is None and not text and vr != "PN":
        return None
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, (MultiValue, list, tuple)):
        if not all(isinstance(v, str) for v in value) or vr == "PN":
            return None
        value = "\\".join(value)
    elif isinstance(value, PersonName):
        if vr != "PN" or value.original_string is not None:
            return None
        value = str(value)
    elif not isinstance(value, str):
        return None
    if vr == "PN" and ("=" in value or (not value.isascii() and codec != "UTF8")):
        return None  # component groups: pydicom encodes each
    try:
        data = value.encode("latin_1" if pad is not None else codec)
    except UnicodeError:
        return None  # pydicom's warning and replacement path
    if len(data) % 2:
        data += pad or b" "
    return data if len(data) <= 0xFFFF or vr in _LONG_VRS else None


def _sequence(out: list[bytes], elem: DataElement, codec: str) -> None:
    """A sequence (PS3.5 7.5): items with their lengths, or delimited where the element
    or the item was read with undefined length, as pydicom writes them."""
    body: list[bytes] = []
    for item in elem.value:
        if _CHARSET in item._dict:
            raise _Unsure  # an item's own character set
        inner: list[bytes] = []
        _dataset(inner, item, codec)
        if getattr(item, "is_undefined_length_sequence_item", False):
            body.append(_ITEM.pack(0xFFFE, 0xE000, _UNDEFINED))
            body.extend(inner)
            body.append(_ITEM.pack(0xFFFE, 0xE00D, 0))
        else:
            data = b"".join(inner)
            body.append(_ITEM.pack(0xFFFE, 0xE000, len(data)))
            body.append(data)
    tag = elem.tag
    if elem.is_undefined_length:
        out.append(_LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, _UNDEFINED))
        out.extend(body)
        out.append(_ITEM.pack(0xFFFE, 0xE0DD, 0))
        return
    data = b"".join(body)
    out.append(_LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, len(data)))
    out.append(data)


def _pydicom(out: list[bytes], elem: Any, codec: str) -> None:
    """One element written by pydicom's ``write_data_element`` in ``codec``."""
    one = DicomBytesIO()
    one.is_implicit_VR, one.is_little_endian = False, True
    write_data_element(one, elem, [codec])
    out.append(one.getvalue())
