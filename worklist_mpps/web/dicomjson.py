"""application/dicom+json in: the DICOM JSON Model (PS3.18 F.2) checked before pydicom sees it.

pydicom's ``Dataset.from_json`` recurses once per sequence level and accepts what
the model has no place for (an unknown VR, NaN, a list inside a value, base64 with
stray characters). Everything here is checked first, iteratively, so a hostile
body is a 400 naming the attribute, never a RecursionError or a value stored wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from pydicom import Dataset

# Sequences nested deeper than this are refused, in JSON and in XML (a worklist or MPPS
# data set nests 2 or 3 levels; pydicom and the store recurse once per level).
MAX_SEQUENCE_DEPTH = 16
# PS3.5 Table 6.2-1
VRS = frozenset(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    ]
)
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
FLOAT_VRS = frozenset({"DS", "FD", "FL"})
# PS3.5 Table 6.2-1: the range of each integer VR
INT_RANGES = {
    "IS": (-(2**31), 2**31 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "SV": (-(2**63), 2**63 - 1),
    "UL": (0, 2**32 - 1),
    "US": (0, 2**16 - 1),
    "UV": (0, 2**64 - 1),
}
PN_GROUPS = frozenset({"Alphabetic", "Ideographic", "Phonetic"})
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


class DicomJSONError(ValueError):
    """The body is not a DICOM JSON data set this server accepts; the message says where."""


def check_number(vr: str, value: Any, where: str) -> None:
    """A numeric value of ``vr`` is a finite number in the VR's range (PS3.5 6.2).

    DICOM JSON has no NaN or Infinity (PS3.18 F.2.3: JSON numbers), nor does DS.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DicomJSONError(f"{where}: a {vr} value must be a number")
    try:
        number = float(value) if vr in FLOAT_VRS else int(value)
    except (ValueError, OverflowError):
        raise DicomJSONError(f"{where}: {str(value)[:40]!r} is not a {vr} number") from None
    if vr in FLOAT_VRS and not math.isfinite(number):
        raise DicomJSONError(
            f"{where}: {vr} values must be finite (no NaN or Infinity in DICOM JSON, PS3.18 F.2.3)"
        )
    bounds = INT_RANGES.get(vr)
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        raise DicomJSONError(f"{where}: {number} is outside the range of {vr}")


def check_base64(text: Any, where: str) -> bytes:
    """InlineBinary is base64 (PS3.18 F.2.7, RFC 4648): nothing else is skipped silently."""
    if not isinstance(text, str):
        raise DicomJSONError(f"{where}: InlineBinary must be a base64 string")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise DicomJSONError(f"{where}: InlineBinary is not valid base64") from None


def _check_value(vr: str, value: Any, where: str) -> None:
    if value is None:
        return
    if vr == "PN":
        if (
            not isinstance(value, dict)
            or not set(value) <= PN_GROUPS
            or not all(isinstance(v, str) for v in value.values())
        ):
            raise DicomJSONError(
                f"{where}: a PN value is an object of Alphabetic, "
                "Ideographic and Phonetic strings (PS3.18 F.2.2)"
            )
    elif vr in FLOAT_VRS or vr in INT_RANGES:
        check_number(vr, value, where)
    elif not isinstance(value, str):
        raise DicomJSONError(f"{where}: a {vr} value must be a string")


def check_model(doc: Any, max_depth: int = MAX_SEQUENCE_DEPTH) -> None:
    """Check a parsed DICOM JSON object against the model (PS3.18 F.2), iteratively."""
    stack: list[tuple[Any, int, str]] = [(doc, 0, "")]
    while stack:
        ds, depth, path = stack.pop()
        if not isinstance(ds, dict):
            raise DicomJSONError(f"{path or 'body'}: a data set must be a JSON object")
        for key, attr in ds.items():
            where = f"{path}{key}"
            if not _TAG.fullmatch(key):
                raise DicomJSONError(f"{where[:60]!r}: attribute keys are 8 hex digits")
            if not isinstance(attr, dict) or not set(attr) <= {
                "vr",
                "Value",
                "InlineBinary",
                "BulkDataURI",
            }:
                raise DicomJSONError(
                    f"{where}: an attribute is an object of vr and Value, "
                    "InlineBinary or BulkDataURI (PS3.18 F.2.2)"
                )
            vr = attr.get("vr")
            if vr not in VRS:
                raise DicomJSONError(f"{where}: unknown VR {str(vr)[:10]!r} (PS3.5 6.2)")
            if "BulkDataURI" in attr:
                raise DicomJSONError(f"{where}: BulkDataURI is not accepted: send the value inline")
            if "InlineBinary" in attr:
                if vr not in BINARY_VRS or "Value" in attr:
                    raise DicomJSONError(
                        f"{where}: InlineBinary is for the binary VRs "
                        "(OB, OD, OF, OL, OV, OW, UN), without Value"
                    )
                check_base64(attr["InlineBinary"], where)
            values = attr.get("Value", [])
            if not isinstance(values, list):
                raise DicomJSONError(f"{where}: Value must be an array (PS3.18 F.2.4)")
            if vr == "SQ":
                if values and depth >= max_depth:
                    raise DicomJSONError(
                        f"{where}: sequences nested deeper than {max_depth} levels are not accepted"
                    )
                stack.extend((item, depth + 1, f"{where}[{n}].") for n, item in enumerate(values))
                continue
            for n, value in enumerate(values):
                _check_value(vr, value, f"{where}[{n}]")


def _no_constant(name: str) -> None:
    raise DicomJSONError(
        f"{name} is not a JSON number: DICOM JSON has no NaN or Infinity (PS3.18 F.2.3)"
    )


def from_json(body: bytes) -> Dataset:
    """One data set from an application/dicom+json body (an object, or an array of one)."""
    try:
        doc = json.loads(body or b"null", parse_constant=_no_constant)
    except RecursionError:
        raise DicomJSONError("JSON nested too deep") from None
    except UnicodeDecodeError:
        raise DicomJSONError("DICOM JSON is UTF-8 (PS3.18 F.2)") from None
    except json.JSONDecodeError as exc:
        raise DicomJSONError(f"not JSON: {exc}") from None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict):
        raise DicomJSONError("expected one DICOM JSON object (PS3.18 F.2)")
    check_model(doc)
    return Dataset.from_json(doc)
