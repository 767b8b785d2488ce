"""DICOM value rules shared by the services and delivery: data set encoding and character
sets (PS3.5 6.1, PS3.4 F.7.2.2.3), value checks of the VRs (PS3.5 6.2, 9.1: UIDs, AE
titles, dates and times), required attributes (PS3.4 F.7.2, Table F.7.2-1) and new UIDs.

A broken rule raises :class:`~worklist_mpps.services.status.MPPSError` with the status of
PS3.7 Annex C (data sets), or :class:`BadValue` (a single value given by a user).

Over 400 lines: the in-place decoding of a request (issue 18) must sit beside the round
trip it stands in for, and with the charset rules both follow.
"""

from __future__ import annotations

import re
import struct
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.charset import default_encoding, python_encoding
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32, PersonName

from worklist_mpps.services import dataset_writer, raw_values
from worklist_mpps.services.matching import (
    MatchError,
    check_temporal,
    normalize_date,
    normalize_time,
    strip_padding,
)
from worklist_mpps.services.status import (
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    MISSING_ATTRIBUTE_VALUE,
    MPPSError,
)

# --- single values: UIDs and AE titles (PS3.5 9.1, Table 6.2-1) ---------------------------


class BadValue(ValueError):
    """A value that breaks its VR's rule; ``exit_code`` and ``kind`` as the client's
    errors have them (``dicom-mpps`` exits 4)."""

    exit_code, kind = 4, "bad-value"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def check_uid(value: str, what: str) -> str:
    """PS3.5 9.1: digits and dots, components without leading zeros, <= 64 characters."""
    if len(value) > 64 or not _UID.match(value):
        raise BadValue(
            f"invalid {what} {value!r}: a UID is digits and dots, at most 64 "
            "characters, no leading zeros"
        )
    return value


def check_ae_title(value: str, what: str) -> str:
    """PS3.5 Table 6.2-1 (AE): 1 to 16 characters, no backslash or control character."""
    if not value or len(value) > 16 or "\\" in value or not value.isprintable():
        raise BadValue(f"invalid {what} {value!r}: 1 to 16 printable characters")
    return value


def new_study_uid(prefix: str = "") -> str:
    """A new UID (Study Instance, MPPS instance): under ``prefix`` or UUID-derived
    (2.25.x, PS3.5 B.2)."""
    if prefix:
        return generate_uid(prefix=prefix if prefix.endswith(".") else prefix + ".")
    return generate_uid(prefix=None)


# --- encoding and character sets ---------------------------------------------------------


def _write(ds: Dataset) -> bytes:
    """Explicit VR Little Endian bytes of a dataset, in its Specific Character Set;
    pydicom's exception when a value cannot be written."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    if (
        COPY_RAW_ELEMENTS
        and ds.original_encoding == (False, True)
        and ds.original_character_set == ds._character_set
    ):
        _write_copying_raw(fp, ds)
    elif COPY_RAW_ELEMENTS and (data := dataset_writer.write(ds)) is not None:
        return data  # a request's data set, decoded (issue 18)
    else:
        write_dataset(fp, ds)
    return fp.getvalue()


# False: every data set through pydicom's write_dataset (the tests compare both ways)
COPY_RAW_ELEMENTS = True
_LONG_LENGTH_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF


def _write_copying_raw(fp: DicomBytesIO, ds: Dataset) -> None:
    """pydicom's ``write_dataset`` of a data set read from Explicit VR Little Endian bytes
    whose character set is unchanged (a stored instance being modified by N-SET, issue 18):
    it then writes every element still raw as the bytes it was read from (PS3.5 7.1.2:
    tag, VR, 16- or 32-bit length, value); this writes those header and value bytes
    directly, the same, and gives every other element to pydicom's
    ``write_data_element`` with the same character set, as ``write_dataset`` does.
    (``dataset_writer.write`` first: it does that and writes plain text elements itself.)"""
    data = dataset_writer.write(ds)
    if data is not None:
        fp.write(data)
        return
    encodings = ds.get("SpecificCharacterSet", default_encoding)
    write = fp.write
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # group lengths are not written (as write_dataset)
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED:
            value, vr = elem.value, elem.VR
            if isinstance(value, bytes) and vr is not None and len(vr) == 2:
                n = len(value)
                if vr in _LONG_LENGTH_VRS:
                    write(_LONG_HEADER.pack(tag.group, tag.element, vr.encode("latin_1"), 0, n))
                    write(value)
                    continue
                if n <= 0xFFFF:
                    write(_SHORT_HEADER.pack(tag.group, tag.element, vr.encode("latin_1"), n))
                    write(value)
                    continue
        write_data_element(fp, elem, encodings)


_LONG_HEADER = struct.Struct("<HH2sHL")
_SHORT_HEADER = struct.Struct("<HH2sH")


def encode_dataset(ds: Dataset) -> bytes:
    """Explicit VR Little Endian bytes of a dataset, in its Specific Character Set."""
    try:
        return _write(ds)
    except Exception:  # noqa: BLE001 - a value whose length or VR is wrong
        raise MPPSError(
            INVALID_ATTRIBUTE_VALUE,
            "An attribute value does not fit its VR (cannot be encoded)",
            offending_attributes(ds),
        ) from None


def offending_attributes(ds: Dataset) -> list[int]:
    """The top-level attributes whose values cannot be read or written, each tried alone:
    the Attribute Identifier List of a 0x0106 Invalid Attribute Value (PS3.4 F.7.2.1.3);
    a value inside a sequence is named by its sequence."""
    try:
        charset = ds.get(0x00080005)
    except Exception:  # noqa: BLE001
        return [0x00080005]
    bad = []
    for tag in list(ds.keys()):
        one = Dataset()
        try:
            if charset is not None and tag != 0x00080005:
                one[0x00080005] = charset
            one[tag] = ds[tag]
            _materialize(decode_dataset(_write(one)))
        except Exception:  # noqa: BLE001 - whatever pydicom raises on this value
            bad.append(int(tag))
    return bad


def decode_dataset(data: bytes) -> Dataset:
    """The data set of bytes written by :func:`encode_dataset` (Explicit VR Little Endian);
    pydicom decodes each element when it is first read."""
    return read_dataset(BytesIO(data), False, True)  # Explicit VR Little Endian


# VRs whose values are text (PS3.5 Table 6.2-1) and whose values never are
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UI", "UR", "UT"}
)
_BINARY_VRS = frozenset(
    {"AT", "FD", "FL", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV", "UL", "US"} | {"UV"}
)
# Python codecs in which a byte outside ASCII is exactly a character outside ASCII
_BYTEWISE_CODECS = frozenset({"iso8859", "latin_1", "UTF8"})


def _bytewise(ds: Dataset) -> bool:
    """Whether the raw text of ``ds`` (read from bytes) is in a bytewise codec."""
    charset = ds.original_character_set
    if isinstance(charset, str):
        return charset in _BYTEWISE_CODECS
    return len(charset) == 1 and charset[0] in _BYTEWISE_CODECS


def _text_is_ascii(ds: Dataset) -> bool:
    """Whether every text value of ``ds``, in sequences too, is ASCII. A text element
    still raw in a bytewise character set (a stored instance: ISO_IR 192 or none) is
    judged by its bytes without being decoded (issue 18: it is then written back as it
    was read); binary VRs hold no text."""
    bytewise = _bytewise(ds)
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            if elem.VR in _BINARY_VRS:
                continue
            if bytewise and elem.VR in _TEXT_VRS:
                if not bytes(elem.value or b"").isascii():
                    return False
                continue
            elem = ds[tag]  # decoded: SQ, UN and the others
        if elem.VR == "SQ":
            if not all(_text_is_ascii(item) for item in elem.value):
                return False
        elif (
            (isinstance(elem.value, str) and not elem.value.isascii())
            or (elem.VR == "PN" and elem.value is not None and not str(elem.value).isascii())
            or (
                isinstance(elem.value, MultiValue) and not all(str(v).isascii() for v in elem.value)
            )
        ):
            return False
    return True


def as_unicode(ds: Dataset) -> Dataset:
    """Every text value as Unicode, decoded with the request's character set.

    F.7.2.2.3: the N-SET character set does not replace the N-CREATE one; the
    SCP keeps the combination. We hold every value as Unicode and store the
    instance as ISO_IR 192 when any text is outside ASCII. Each element is decoded
    from bytes exactly once (pydicom's Dataset.decode() re-encodes str person names
    wrongly): a request just read from the wire is decoded where it stands
    (:func:`_decoded_in_place`, issue 18); any other data set, or one that path cannot
    vouch for, is written in its own character set and read back
    (:func:`_roundtrip_unicode`), which gives the same values.
    """
    fast = _decoded_in_place(ds)
    return fast if fast is not None else _roundtrip_unicode(ds)


def _roundtrip_unicode(ds: Dataset) -> Dataset:
    """:func:`as_unicode` by writing ``ds`` in its own character set and reading it back;
    a value that cannot be written or decoded is a 0x0106 naming it (PS3.4 F.7.2.1.3)."""
    try:  # pydicom decodes the request lazily: a malformed value fails here
        encoded = encode_dataset(ds)  # written in the request's own character set
    except MPPSError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on bad bytes
        raise MPPSError(
            INVALID_ATTRIBUTE_VALUE,
            f"Data set cannot be decoded: {exc.__class__.__name__}: {exc}"[:200],
            offending_attributes(ds),
        ) from None
    try:
        raw = decode_dataset(encoded)
        _materialize(raw)
    except (LookupError, UnicodeError) as exc:
        raise MPPSError(
            INVALID_ATTRIBUTE_VALUE,
            f"Text cannot be decoded with Specific Character Set: {exc}",
            ["SpecificCharacterSet"],
        ) from None
    except Exception as exc:  # noqa: BLE001 - a value that does not fit its VR
        raise MPPSError(
            INVALID_ATTRIBUTE_VALUE,
            f"Data set cannot be decoded: {exc.__class__.__name__}: {exc}"[:200],
            offending_attributes(ds),
        ) from None
    _check_sequence_vrs(raw)
    if "SpecificCharacterSet" in raw:
        del raw.SpecificCharacterSet
    return raw


# Specific Character Sets (PS3.3 C.12.1.1.2) whose Python codec maps decoded text back to
# the same bytes: none (the default repertoire, which pydicom reads as Latin-1), one
# single-byte ISO 8859 part, or UTF-8. ISO 2022 code extensions, the Japanese, Chinese
# and Korean sets take the round trip.
_IN_PLACE_CODECS = {
    term: python_encoding[term]
    for term in (
        "",
        "ISO_IR 6",
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 192",
    )
}


def _decoded_in_place(ds: Dataset) -> Dataset | None:
    """:func:`as_unicode` of a data set read from bytes and not touched since (every
    top-level element still raw): its elements decoded once, in a copy (``ds`` is left
    as it was). None when the round trip must decide: an element already decoded, a
    character set outside ``_IN_PLACE_CODECS``, a value pydicom cannot convert, an
    ambiguous VR, or decoded text the character set cannot encode again (bytes the set
    does not define), i.e. whenever writing and reading back could give other values or
    an error."""
    decoded = _copy_as_read(ds)
    if decoded is None:
        return None
    charset = decoded.get_item(_CHARSET_TAG)
    term = ""
    if isinstance(charset, RawDataElement) and charset.value:
        term = bytes(charset.value).decode("latin_1").strip(" \0")
    codec = _IN_PLACE_CODECS.get(term)
    if codec is None:
        return None
    try:
        if not _decode_all(decoded, codec):
            return None
    except Exception:  # noqa: BLE001 - the round trip reports it
        return None
    _check_sequence_vrs(decoded)
    if _CHARSET_TAG in decoded:
        del decoded[_CHARSET_TAG]
    return decoded


_CHARSET_TAG = 0x00080005


def _copy_as_read(ds: Dataset) -> Dataset | None:
    """A copy of ``ds`` to decode (decoding it leaves ``ds`` as it was) when every element,
    in sequences too, is as pydicom's reader left it: raw, empty, or a sequence of such
    items; else None. (Reads pydicom's element dict: ``Dataset.elements()`` costs more
    than the decoding it saves.)"""
    elements: dict = {}
    for tag, elem in ds._dict.items():
        if not isinstance(elem, RawDataElement):
            if elem.VR == "SQ":
                items = []
                for item in elem.value:
                    item_copy = _copy_as_read(item)
                    if item_copy is None:
                        return None
                    items.append(item_copy)
                elem = DataElement(tag, "SQ", items, is_undefined_length=elem.is_undefined_length)
            elif not elem.is_empty:
                return None
        elements[tag] = elem
    copied = Dataset(elements)
    implicit, little_endian = ds.original_encoding
    copied.set_original_encoding(implicit, little_endian, ds.original_character_set)
    copied.is_undefined_length_sequence_item = ds.is_undefined_length_sequence_item
    return copied


def _decode_all(ds: Dataset, codec: str) -> bool:
    """:func:`_materialize` ``ds``; False when a VR is ambiguous or a text value does not
    encode in ``codec`` again (its bytes were not all of the character set), or for an
    element :func:`_converted` leaves to pydicom's own reading."""
    elements = ds._dict
    charset = None  # the data set's, read once (as pydicom's __getitem__ reads it)
    for tag in sorted(elements):  # the order of iterating ``ds``
        elem = elements[tag]
        if isinstance(elem, RawDataElement):
            if charset is None:
                charset = ds.original_character_set or ds._character_set
            converted = _converted(ds, elem, charset)
            if converted is None:
                return False
            elem = converted
        vr = elem.VR
        if vr == "SQ":
            if not all(_decode_all(item, codec) for item in elem.value):
                return False
            continue
        if vr is None or len(vr) != 2:
            return False
        value = elem.value
        if value is None:
            continue
        if vr == "PN":
            if isinstance(value, MultiValue):
                elem.value = [str(v) for v in value]
            else:
                elem.value = str(value)
            value = elem.value
        texts = value if isinstance(value, (MultiValue, list)) else (value,)
        for text in texts:
            if isinstance(text, (str, PersonName)):
                str(text).encode(codec)  # UnicodeEncodeError: the round trip decides
    return True


_PIXEL_GROUP = 0x7FE0


def _converted(ds: Dataset, raw: RawDataElement, charset: Any) -> DataElement | None:
    """``ds[raw.tag]`` for an element still raw: converted as pydicom's ``__getitem__``
    converts it (``convert_raw_data_element`` with the data set's character set, or the
    default one for Specific Character Set itself; the text VRs by raw_values.py, the
    same) and put in its place, without the look-ups ``__getitem__`` repeats around that
    (issue 18: 0.78 -> 0.55 ms for an MPPS cycle's three requests, with raw_values.py).
    None, the element left raw, for what takes more than that: a deferred value, a
    private element (its creator), pixel data, a VR pydicom corrects (US or SS...)."""
    tag = raw.tag
    if (raw.value is None and raw.length != 0) or tag.group & 1 or tag.group == _PIXEL_GROUP:
        return None
    encoding = default_encoding if tag == _CHARSET_TAG else charset
    elem = raw_values.element(raw, encoding) or convert_raw_data_element(
        raw, encoding=encoding, ds=ds
    )
    if elem.VR in AMBIGUOUS_VR:
        return None
    if elem.VR == "SQ":
        ds[tag] = elem  # pydicom's __setitem__: the items' pixel representation
    else:
        ds._dict[tag] = elem
    return elem


def _check_sequence_vrs(ds: Dataset) -> None:
    """A sequence attribute sent with another VR (or the reverse) is an invalid value."""
    for elem in ds:
        # elem.keyword and dictionary_VR read this entry (DicomDictionary only: a tag not
        # in it has no keyword and is skipped), one look-up instead of several (issue 18)
        entry = DicomDictionary.get(elem.tag)
        if entry is None or not entry[4]:
            continue
        expected = entry[0]
        if (expected == "SQ") != (elem.VR == "SQ"):
            raise MPPSError(
                INVALID_ATTRIBUTE_VALUE,
                f"{elem.keyword} has VR {elem.VR}, the standard's is {expected}",
                [elem.keyword],
            )
        if elem.VR == "SQ":
            for item in elem.value:
                _check_sequence_vrs(item)


def _materialize(ds: Dataset) -> None:
    """Convert every element from bytes now; person names become plain str.

    A PersonName read from bytes keeps them and pydicom writes them again
    unchanged; stored in another character set it must be encoded anew.
    """
    for elem in ds:  # iterating converts raw elements with the dataset's charset
        if elem.VR == "SQ":
            for item in elem.value:
                _materialize(item)
        elif elem.VR == "PN" and elem.value is not None:
            if isinstance(elem.value, MultiValue):
                elem.value = [str(v) for v in elem.value]
            else:
                elem.value = str(elem.value)


def charset_for_storage(ds: Dataset) -> None:
    """Store as ISO_IR 192 when any text is outside ASCII, else with no Specific Character
    Set (the values are Unicode already: :func:`as_unicode`, PS3.4 F.7.2.2.3)."""
    if "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    if not _text_is_ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"


# --- attribute values ----------------------------------------------------------------------


def text_value(ds: Dataset, keyword: str) -> str | None:
    """A value as stored in the indexed columns: without padding (PS3.5 Table 6.2-1)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip().strip("\0").strip() or None


def is_empty(elem: DataElement) -> bool:
    return len(elem.value) == 0 if elem.VR == "SQ" else elem.is_empty


def require(ds: Dataset, keyword: str, path: str = "", why: str = "") -> None:
    """0x0120 when the attribute is absent, 0x0121 when it has no value.

    Nested attributes are named by the sequence tag and item number, so the
    comment fits the 64 characters of Error Comment (LO).
    """
    name = f"{path}{keyword}"
    if keyword not in ds:
        raise MPPSError(MISSING_ATTRIBUTE, f"{why}Missing attribute {name}", [keyword])
    if is_empty(ds[keyword]):
        raise MPPSError(MISSING_ATTRIBUTE_VALUE, f"{why}Missing value of {name}", [keyword])


def normalized(value: Any, vr: str = "") -> Any:
    """A comparable form of an element value (sequences recursively), without the
    padding its VR calls not significant (PS3.5 Table 6.2-1)."""
    if value is None or value == "":
        return None
    if isinstance(value, Dataset):
        return tuple(sorted((int(e.tag), normalized(e.value, e.VR)) for e in value))
    if isinstance(value, (list, MultiValue)):
        items = tuple(normalized(v, vr) for v in value)
        return items or None
    return strip_padding(vr, str(value)).rstrip() if vr else str(value).rstrip()


def datetime_value(ds: Dataset, date_kw: str, time_kw: str) -> str | None:
    """YYYYMMDDHHMMSS of a date/time pair; 0x0106 when invalid."""
    date, time = text_value(ds, date_kw), text_value(ds, time_kw)
    if date is None:
        return None
    try:
        day = normalize_date(date_kw, date)
        clock = normalize_time(time_kw, time) if time else "000000"
    except MatchError as exc:
        raise MPPSError(INVALID_ATTRIBUTE_VALUE, str(exc), [exc.keyword]) from None
    return day + clock


def check_dates_and_times(ds: Dataset, path: str = "") -> None:
    """0x0106 naming the attribute unless every DA, TM and DT value of the data set, in
    sequences too, is a real date, time or date time (PS3.5 Table 6.2-1), with the one
    validator of matching.py."""
    for elem in ds:
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value, start=1):
                check_dates_and_times(
                    item, f"{path}({elem.tag.group:04X},{elem.tag.element:04X})[{n}] > "
                )
            continue
        if elem.VR not in ("DA", "TM", "DT") or elem.is_empty:
            continue
        keyword = elem.keyword or str(elem.tag)
        values = elem.value if isinstance(elem.value, (MultiValue, list)) else [elem.value]
        for value in values:
            try:
                check_temporal(elem.VR, keyword, str(value))
            except MatchError as exc:
                raise MPPSError(
                    INVALID_ATTRIBUTE_VALUE, f"{path}{exc}", [elem.keyword] if elem.keyword else []
                ) from None
