"""Received request command sets read with ``struct``: C-FIND-RQ, N-CREATE-RQ, N-SET-RQ.

pynetdicom decodes every command set into a pydicom Dataset and copies its elements into
the primitive one by one: 80-90 us a request in-process, about a fifth of a selective
query's CPU and 3-4 % of an MPPS cycle's (issue 18); read here, 10-17 us. A command set
of these requests holding exactly the elements of its table, in tag order, whole in one
fragment, with a data set and plain UIDs, is read here instead, and its primitive built
with pynetdicom's own setters in the order pynetdicom sets them (tag order). Anything
else returns None and pynetdicom decodes it as before.

Command sets are implicit VR little endian (PS3.7 6.3.1); the elements of each request
are those of PS3.7 Table 9.3-3 (C-FIND-RQ), Table 10.3-9 (N-CREATE-RQ) and Table 10.3-5
(N-SET-RQ). wire.DIMSEProvider uses this; tests/test_command_sets.py compares the
primitives with pynetdicom's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND, N_CREATE, N_SET

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
NO_DATASET = 0x0101  # (0000,0800): no data set follows (PS3.7 E.1)
UID, US, UL = 0, 2, 4  # the value length required: 0 is a UID, any even length up to 64
_UID_CHARS = frozenset(b"0123456789.")


@dataclass(frozen=True)
class Layout:
    """One request's command set: its Command Field, its elements in tag order as
    (element number of group 0000, value length required, required), the primitive's
    fields set from them (element number, primitive attribute) in tag order, and the
    primitive's data set attribute."""

    name: str
    command_field: int
    elements: tuple[tuple[int, int, bool], ...]
    fields: tuple[tuple[int, str], ...]
    primitive: type
    dataset: str


# the group length (0000,0000) may be left out of each; the others are as in the tables
_HEAD = ((0x0000, UL, False),)
_FIELD_AND_ID = ((0x0100, US, True), (0x0110, US, True))  # Command Field, Message ID
_DATA_SET = (0x0800, US, True)  # Command Data Set Type
LAYOUTS = {
    layout.command_field: layout
    for layout in (
        Layout(  # PS3.7 Table 9.3-3
            "C-FIND-RQ",
            0x0020,
            (*_HEAD, (0x0002, UID, True), *_FIELD_AND_ID, (0x0700, US, True), _DATA_SET),
            ((0x0002, "AffectedSOPClassUID"), (0x0110, "MessageID"), (0x0700, "Priority")),
            C_FIND,
            "Identifier",
        ),
        Layout(  # PS3.7 Table 10.3-9: the Affected SOP Instance UID is U (F.7.2.1.1)
            "N-CREATE-RQ",
            0x0140,
            (*_HEAD, (0x0002, UID, True), *_FIELD_AND_ID, _DATA_SET, (0x1000, UID, False)),
            (
                (0x0002, "AffectedSOPClassUID"),
                (0x0110, "MessageID"),
                (0x1000, "AffectedSOPInstanceUID"),
            ),
            N_CREATE,
            "AttributeList",
        ),
        Layout(  # PS3.7 Table 10.3-5
            "N-SET-RQ",
            0x0120,
            (*_HEAD, (0x0003, UID, True), *_FIELD_AND_ID, _DATA_SET, (0x1001, UID, True)),
            (
                (0x0003, "RequestedSOPClassUID"),
                (0x0110, "MessageID"),
                (0x1001, "RequestedSOPInstanceUID"),
            ),
            N_SET,
            "ModificationList",
        ),
    )
}

# the UID elements of the layouts: their values are UIDs whatever their length
_UID_ELEMENTS = frozenset(
    element for layout in LAYOUTS.values() for element, size, _ in layout.elements if size == UID
)


def _elements(command: bytes) -> dict[int, bytes] | None:
    """The elements of a command set of group 0000 only, in strictly ascending tag order,
    each whole: {element number: value bytes}; None for anything else."""
    found: dict[int, bytes] = {}
    offset, end, last = 0, len(command), -1
    while offset + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(command, offset)
        offset += 8
        if group or element <= last or offset + length > end:
            return None
        found[element] = command[offset : offset + length]
        offset, last = offset + length, element
    return found if offset == end and found else None


def _uid(value: bytes) -> str | None:
    """A UID of digits and dots, at most 64, with at most its one trailing NUL pad
    (PS3.5 9.1); None for anything pydicom should judge (spaces, several values)."""
    if value.endswith(b"\0"):
        value = value[:-1]
    if not value or len(value) > 64 or not _UID_CHARS.issuperset(value):
        return None
    return value.decode()


def read(command: bytes) -> tuple[Layout, tuple[Any, ...]] | None:
    """(layout, the values of its ``fields``) of a request command set holding exactly
    the elements of its layout (the optional ones may be left out), of the sizes
    required, with a data set (0000,0800) other than 0101H; None for anything else."""
    found = _elements(command)
    if found is None or len(found.get(0x0100, b"")) != US:
        return None
    layout = LAYOUTS.get(_US.unpack(found[0x0100])[0])
    if layout is None:
        return None
    known = 0
    for element, size, required in layout.elements:
        value = found.get(element)
        if value is None:
            if required:
                return None
            continue
        known += 1
        if size and len(value) != size:
            return None
    if known != len(found) or _US.unpack(found[0x0800])[0] == NO_DATASET:
        return None
    values: list[Any] = []
    for element, _name in layout.fields:
        value = found.get(element)
        if value is None:
            values.append(None)
        elif element not in _UID_ELEMENTS:
            values.append(_US.unpack(value)[0])  # its size was checked above
        elif (uid := _uid(value)) is not None:
            values.append(uid)
        else:
            return None
    return layout, tuple(values)


class ReadRequest(DIMSEMessage):
    """A request message whose command set :func:`read` read: pynetdicom's message (its
    data set fragments are assembled by ``decode_msg`` as ever), with the primitive made
    from those values instead of from a pydicom Dataset of the command set."""

    def __init__(self, context_id: int, layout: Layout, values: tuple[Any, ...]) -> None:
        # not DIMSEMessage.__init__: the Dataset of the command set it makes is the cost
        self.context_id = context_id
        self.encoded_command_set = BytesIO()
        self.data_set = BytesIO()
        self._data_set_path = None
        self._data_set_file = None
        self.layout, self.values = layout, values

    def message_to_primitive(self):  # noqa: ANN201
        """pynetdicom's primitive of this message, its fields set in the same order through
        the same setters (which check them as for a decoded command set); a field the
        command set left out is not set, as there."""
        primitive = self.layout.primitive()
        for (_element, name), value in zip(self.layout.fields, self.values, strict=True):
            if value is not None:
                setattr(primitive, name, value)
        setattr(primitive, self.layout.dataset, self.data_set)
        primitive._context_id = self.context_id
        primitive._dataset_path = None
        primitive._dataset_file = None
        return primitive
