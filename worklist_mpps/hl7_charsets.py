"""HL7 v2 character sets (MSH-18, HL7 v2.5.1 Table 0211) and the Python codecs that decode
them. The worklist stores Unicode; the DIMSE side chooses the Specific Character Set of
each C-FIND response from the values (PS3.5 6.1), so only decoding is needed here."""

from __future__ import annotations

import codecs

# HL7 Table 0211 "Alternate character sets" -> Python codec
_CODECS = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "ISO IR87": "iso2022_jp",
    "ISO IR6": "ascii",
    "ISO IR100": "iso8859-1",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}


def python_codec(name: str) -> str | None:
    """The codec of an MSH-18 value (its first repetition), or None when unknown."""
    key = " ".join(name.split("~")[0].strip().upper().split())
    codec = _CODECS.get(key)
    if codec is None:
        return None
    codecs.lookup(codec)
    return codec
