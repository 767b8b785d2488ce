"""C-FIND-RQ command sets read with struct (wire.find_rq_fields, wire.FindRequest) against
pynetdicom's own decoding: the same primitive, or pynetdicom's path for anything else."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

from worklist_mpps.dimse.pynetdicom_ext import wire


@pytest.fixture(autouse=True)
def no_log_handlers(monkeypatch):
    """As the server runs (assoc.quiet_logging): no pynetdicom log handlers bound to new
    associations, so that the fast paths are taken."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


FIELDS = ("AffectedSOPClassUID", "MessageID", "Priority", "_context_id")


def command_set(message_id: int = 7, priority: int = 2, sop_class: str = MWL) -> bytes:
    """The command set pynetdicom itself encodes for a C-FIND-RQ (PS3.7 9.3.2.1)."""
    rq = C_FIND()
    rq.MessageID, rq.Priority, rq.AffectedSOPClassUID = message_id, priority, sop_class
    rq.Identifier = BytesIO(b"")
    msg = C_FIND_RQ()
    msg.primitive_to_message(rq)
    encoded = encode(msg.command_set, True, True)
    assert encoded is not None
    return encoded


def element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, elem, len(value)) + value


def pynetdicoms(command: bytes, identifier: bytes, context_id: int = 3) -> C_FIND:
    msg = DIMSEMessage()
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]
    assert not msg.decode_msg(pdata)
    pdata.presentation_data_value_list = [[context_id, b"\x02" + identifier]]
    assert msg.decode_msg(pdata)
    return msg.message_to_primitive()


def ours(command: bytes, identifier: bytes, context_id: int = 3) -> C_FIND:
    fields = wire.find_rq_fields(command)
    assert fields is not None
    msg = wire.FindRequest(context_id, fields)
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[context_id, b"\x02" + identifier]]
    assert msg.decode_msg(pdata)
    return msg.message_to_primitive()


@pytest.mark.parametrize(
    ("message_id", "priority", "sop_class"),
    [(1, 2, MWL), (65535, 0, MWL), (300, 1, "1.2.840.10008.5.1.4.1.2.2.1"), (2, 2, "1.2.3")],
)
def test_the_primitive_is_pynetdicoms(message_id, priority, sop_class):
    command = command_set(message_id, priority, sop_class)
    identifier = b"\x10\x00\x10\x00\x00\x00\x00\x00"
    mine, theirs = ours(command, identifier), pynetdicoms(command, identifier)
    assert type(mine) is type(theirs)
    for name in FIELDS:
        assert getattr(mine, name) == getattr(theirs, name), name
    assert str(mine.AffectedSOPClassUID) == str(theirs.AffectedSOPClassUID)
    assert mine.Identifier.getvalue() == theirs.Identifier.getvalue() == identifier
    assert mine.is_valid_request and theirs.is_valid_request
    assert vars(mine).keys() == vars(theirs).keys()


def test_without_the_group_length():
    command = command_set()
    assert command[:4] == b"\0\0\0\0"
    assert wire.find_rq_fields(command[12:]) == (MWL, 7, 2)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c + element(0x0902, b"extra "),  # an element not of a C-FIND-RQ
        lambda c: c[:-2],  # cut short
        lambda c: c.replace(struct.pack("<HHLH", 0, 0x0100, 2, 0x20), element(0x0100, b"\x30\x00")),
        lambda c: c.replace(struct.pack("<HHLH", 0, 0x0800, 2, 1), element(0x0800, b"\x01\x01")),
        lambda c: c.replace(struct.pack("<HHLH", 0, 0x0700, 2, 2), element(0x0700, b"\x02\0\0\0")),
        lambda c: c.replace(element(0x0002, MWL.encode()), element(0x0002, b"1.2.3 \x00")),
        lambda c: c.replace(element(0x0002, MWL.encode()), element(0x0002, b"1.2\\3.4")),
        lambda c: c.replace(element(0x0002, MWL.encode()), element(0x0002, b"")),
        lambda c: c[12:42] + c[:12] + c[42:],  # out of order
        lambda c: struct.pack("<HHL", 2, 0x0010, 0) + c,  # another group
        lambda c: b"",
        lambda c: c[:-10],  # without the data set type
    ],
)
def test_anything_else_is_left_to_pydicom(change):
    changed = change(command_set())
    assert changed != command_set()
    assert wire.find_rq_fields(changed) is None


def provider(max_message_size: int = 0) -> wire.DIMSEProvider:
    from pynetdicom import AE

    from worklist_mpps.dimse.pynetdicom_ext.reactor import EventDrivenAssociation

    assoc = EventDrivenAssociation(AE(), "acceptor")
    assoc.dimse.max_message_size = max_message_size
    return assoc.dimse


@pytest.mark.parametrize("max_message_size", [0, 1 << 20])
@pytest.mark.parametrize("one_pdu", [False, True])
@pytest.mark.parametrize("fast_path", [True, False])
def test_the_provider_reads_the_command_set_itself(max_message_size, one_pdu, fast_path):
    """With the fast path a C-FIND-RQ is a FindRequest from its first fragment; the
    request queued is pynetdicom's either way, whether command set and identifier come
    in one P-DATA or two."""
    dimse = provider(max_message_size)
    dimse.fast_path = fast_path
    command, identifier = command_set(9), b"\x10\x00\x20\x00\x00\x00\x00\x00"
    pdvs = [[1, b"\x03" + command], [1, b"\x02" + identifier]]
    for n, part in enumerate([pdvs] if one_pdu else [pdvs[:1], pdvs[1:]]):
        pdata = P_DATA()
        pdata.presentation_data_value_list = part
        dimse.receive_primitive(pdata)
        if n == 0 and not one_pdu:  # the command set taken, the identifier to come
            assert (type(dimse.message) is wire.FindRequest) is fast_path
    context_id, request = dimse.msg_queue.get(block=False)
    theirs = pynetdicoms(command, identifier, 1)
    assert context_id == 1 and type(request) is C_FIND
    for name in FIELDS:
        assert getattr(request, name) == getattr(theirs, name), name
    assert request.Identifier.getvalue() == identifier
    assert dimse.message is None


def test_dimse_recv_handlers_get_pynetdicoms_message():
    from pynetdicom import evt

    dimse = provider()
    seen = []
    dimse.assoc.bind(evt.EVT_DIMSE_RECV, lambda event: seen.append(event.message))
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[1, b"\x03" + command_set()]]
    dimse.receive_primitive(pdata)
    assert type(dimse.message) is C_FIND_RQ
    assert seen == []  # the message is not complete yet
