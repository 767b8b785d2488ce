"""application/dicom+xml: the Native DICOM Model (PS3.19 A.1) to and from pydicom.

pydicom reads and writes DICOM JSON but not the XML encoding, so this module
converts between a Dataset and ``<NativeDicomModel>``: DicomAttribute elements
with tag, vr and keyword; Value (numbered), PersonName with Alphabetic /
Ideographic / Phonetic component groups, Item for sequences, InlineBinary.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from worklist_mpps.web.dicomjson import (
    MAX_SEQUENCE_DEPTH,
    VRS,
    DicomJSONError,
    check_base64,
    check_number,
)

NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
INT_VRS = {"IS", "SL", "SS", "SV", "UL", "US", "UV"}
FLOAT_VRS = {"DS", "FD", "FL"}


class XMLError(ValueError):
    """The XML is not a Native DICOM Model document."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# --- Dataset -> XML ---------------------------------------------------------------------------


def _pn_element(parent: ET.Element, number: int, value: PersonName) -> None:
    pn = ET.SubElement(parent, "PersonName", number=str(number))
    groups = str(value).split("=")
    for name, group in zip(PN_GROUPS, groups, strict=False):  # trailing groups may be absent
        if not group:
            continue
        g = ET.SubElement(pn, name)
        for part_name, part in zip(PN_PARTS, group.split("^"), strict=False):
            if part:
                ET.SubElement(g, part_name).text = part


def _dataset_children(parent: ET.Element, ds: Dataset) -> None:
    for elem in ds:
        attr = ET.SubElement(parent, "DicomAttribute", {"tag": f"{elem.tag:08X}", "vr": elem.VR})
        if elem.keyword:
            attr.set("keyword", elem.keyword)
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value, start=1):
                _dataset_children(ET.SubElement(attr, "Item", number=str(n)), item)
            continue
        if elem.is_empty:
            continue
        if elem.VR in BINARY_VRS:
            ET.SubElement(attr, "InlineBinary").text = base64.b64encode(elem.value).decode()
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        for n, value in enumerate(values, start=1):
            if elem.VR == "PN":
                _pn_element(attr, n, value)
            elif elem.VR == "AT":
                ET.SubElement(attr, "Value", number=str(n)).text = f"{int(value):08X}"
            else:
                ET.SubElement(attr, "Value", number=str(n)).text = str(value)


def to_xml(ds: Dataset) -> bytes:
    root = ET.Element("NativeDicomModel", xmlns=NS)
    _dataset_children(root, ds)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# --- XML -> Dataset ---------------------------------------------------------------------------


def _pn_value(pn: ET.Element) -> str:
    groups = []
    for name in PN_GROUPS:
        group = next((g for g in pn if _local(g.tag) == name), None)
        if group is None:
            groups.append("")
            continue
        parts = [
            next((p.text or "" for p in group if _local(p.tag) == part), "") for part in PN_PARTS
        ]
        groups.append("^".join(parts).rstrip("^"))
    return "=".join(groups).rstrip("=")


def _number(child: ET.Element) -> int:
    try:
        return int(child.get("number", "1"))
    except ValueError:
        raise XMLError(f"{_local(child.tag)}: number must be an integer") from None


def _attribute_value(attr: ET.Element, vr: str):  # noqa: ANN202
    children = sorted((c for c in attr), key=_number)
    if vr == "SQ":
        return Sequence([_dataset(c) for c in children if _local(c.tag) == "Item"])
    binary = next((c for c in children if _local(c.tag) == "InlineBinary"), None)
    if binary is not None:
        try:
            return check_base64(binary.text or "", f"attribute {attr.get('tag')}")
        except DicomJSONError as exc:
            raise XMLError(str(exc)) from None
    values: list[Any]  # text first, then the VR's Python type
    if vr == "PN":
        values = [_pn_value(c) for c in children if _local(c.tag) == "PersonName"]
    else:
        values = [c.text or "" for c in children if _local(c.tag) == "Value"]
    try:
        for n, value in enumerate(values):
            if vr in INT_VRS or vr in FLOAT_VRS:
                check_number(vr, value, f"attribute {attr.get('tag')}[{n}]")
    except DicomJSONError as exc:
        raise XMLError(str(exc)) from None
    try:
        if vr in INT_VRS:
            values = [int(v) for v in values]
        elif vr in ("FD", "FL"):
            values = [float(v) for v in values]
        elif vr == "AT":
            values = [Tag(int(v, 16)) for v in values]
    except ValueError:
        raise XMLError(f"attribute {attr.get('tag')}: value is not a {vr}") from None
    if not values:  # zero-length: '' for text, as pydicom itself stores it
        return None if vr in INT_VRS or vr in ("FD", "FL", "AT") else ""
    return values[0] if len(values) == 1 else values


def _dataset(node: ET.Element) -> Dataset:
    ds = Dataset()
    for attr in node:
        if _local(attr.tag) != "DicomAttribute":
            continue
        tag_text = attr.get("tag", "")
        try:
            tag = Tag(int(tag_text, 16))
        except ValueError:
            raise XMLError(f"DicomAttribute tag {tag_text!r} is not 8 hex digits") from None
        vr = attr.get("vr") or (dictionary_VR(tag) if keyword_for_tag(tag) else None)
        if not vr:
            raise XMLError(f"DicomAttribute {tag_text}: vr is required")
        if vr not in VRS:
            raise XMLError(f"DicomAttribute {tag_text}: unknown VR {vr[:10]!r} (PS3.5 6.2)")
        ds.add_new(tag, vr, _attribute_value(attr, vr))
    return ds


def from_xml(data: bytes) -> Dataset:
    try:
        root = safe_fromstring(data)  # no entity expansion, no external entities
    except ET.ParseError as exc:
        raise XMLError(f"not well-formed XML: {exc}") from None
    except DefusedXmlException as exc:
        raise XMLError(f"XML refused: {exc.__class__.__name__}") from None
    if _local(root.tag) != "NativeDicomModel":
        raise XMLError("the root element must be NativeDicomModel (PS3.19)")
    _check_depth(root)
    return _dataset(root)


def _check_depth(root: ET.Element, max_depth: int = MAX_SEQUENCE_DEPTH) -> None:
    """Refuse Items nested deeper than ``max_depth`` before the recursive conversion."""
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        for child in node:
            level = depth + (_local(child.tag) == "Item")
            if level > max_depth:
                raise XMLError(f"sequences nested deeper than {max_depth} levels are not accepted")
            stack.append((child, level))
