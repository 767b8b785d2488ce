"""The character set of a stored MPPS instance after an N-SET, told from its bytes where
they suffice (issue 18).

``dicom.charset_for_storage`` stores an instance as ISO_IR 192 when any text is outside
ASCII, else without Specific Character Set; to tell, it decodes every sequence of the
instance, and a decoded sequence is then written again by pydicom instead of copied as
the bytes it was read from (``dicom._write_copying_raw``). After an N-SET most of the
instance is as stored: its elements still raw are judged here by their bytes, the
elements the N-SET replaced by ``charset_for_storage`` itself, and the stored character
set is kept when the outcome is the one it already has. Every other case (a character
set changing, bytes that do not tell) is left to ``charset_for_storage``.

Bytes tell in the two character sets an instance is stored in: in UTF-8 and in the
default repertoire a raw text value with a byte outside ASCII has a character outside
ASCII: the instance stays ISO_IR 192. A sequence's bytes (item headers, binary values)
do not tell; an instance stored without Specific Character Set had only ASCII text when
written (every writer of the stored instance sets it by ``charset_for_storage``: mpps.py,
hl7_adt.py), so its raw sequences, unchanged since, still have: it stays without one
when the N-SET set nothing outside ASCII. Otherwise (an instance stored as ISO_IR 192
with no raw text value outside ASCII, or an N-SET that sets text outside ASCII in an
instance stored without) ``charset_for_storage`` decides on every value.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.dataelem import RawDataElement

from worklist_mpps.services.dicom import charset_for_storage

UTF8 = "ISO_IR 192"
_CHARSET_TAG = 0x00080005
# VRs whose values are text (PS3.5 Table 6.2-1): a raw value outside ASCII is such text
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UI", "UR", "UT"}
)


def _stored_charset(ds: Dataset) -> str | None:
    """The Specific Character Set of a stored instance when it is one this module
    handles ("" for none), else None."""
    if _CHARSET_TAG not in ds:
        return ""
    elem = ds.get_item(_CHARSET_TAG)
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        term = elem.value.decode("latin_1").strip(" \0")
        return term if term == UTF8 else None
    return None


def set_charset_for_storage(ds: Dataset) -> None:
    """``charset_for_storage(ds)`` of a stored instance (read from its bytes) that an
    N-SET changed: the same outcome, without decoding the raw elements when their bytes
    tell and the character set stays as stored."""
    stored = _stored_charset(ds)
    if stored is None:
        charset_for_storage(ds)
        return
    outside_ascii = False  # a raw text value, or one the N-SET set, outside ASCII
    replaced = Dataset()  # the elements not raw (set by the N-SET)
    for tag in list(ds.keys()):  # tags: iterating a Dataset decodes its elements
        if tag == _CHARSET_TAG:
            continue
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement):
            replaced.add(ds[tag])
        elif elem.VR in _TEXT_VRS and elem.value and not bytes(elem.value).isascii():
            outside_ascii = True
    if not outside_ascii:
        charset_for_storage(replaced)  # judges the replaced elements
        outside_ascii = "SpecificCharacterSet" in replaced
    # ISO_IR 192 is proven by a value outside ASCII; no character set kept when none was
    # stored (sequences as stored are ASCII then) and nothing outside ASCII was set
    if (UTF8 if outside_ascii else "") != stored:
        charset_for_storage(ds)  # the character set may change: decided on every value
