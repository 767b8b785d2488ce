"""Request command sets read with struct (pynetdicom_ext/command_sets.py: C-FIND-RQ,
N-CREATE-RQ, N-SET-RQ) against pynetdicom's own decoding: the same primitive, or
pynetdicom's path for anything else."""

from __future__ import annotations

import re
import struct
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RQ, N_CREATE_RQ, N_SET_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND, N_CREATE, N_SET
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

from worklist_mpps.dimse.pynetdicom_ext import command_sets, wire


@pytest.fixture(autouse=True)
def no_log_handlers(monkeypatch):
    """As the server runs (assoc.quiet_logging): no pynetdicom log handlers bound to new
    associations, so that the fast paths are taken."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


PPS_UID = "1.2.826.0.1.3680043.2.1125.1.42"
# each request: pynetdicom's primitive and message classes, its data set attribute and
# the fields its command set carries
REQUESTS = {
    "C-FIND": (C_FIND, C_FIND_RQ, "Identifier", ("AffectedSOPClassUID", "MessageID", "Priority")),
    "N-CREATE": (
        N_CREATE,
        N_CREATE_RQ,
        "AttributeList",
        ("AffectedSOPClassUID", "MessageID", "AffectedSOPInstanceUID"),
    ),
    "N-SET": (
        N_SET,
        N_SET_RQ,
        "ModificationList",
        ("RequestedSOPClassUID", "MessageID", "RequestedSOPInstanceUID"),
    ),
}


def command_set(kind: str = "C-FIND", message_id: int = 7, **values) -> bytes:
    """The command set pynetdicom itself encodes for a request (PS3.7 9.3.2.1, 10.3.5,
    10.3.3), with a data set."""
    primitive_class, message_class, dataset, _ = REQUESTS[kind]
    rq = primitive_class()
    rq.MessageID = message_id
    defaults = {
        "C-FIND": {"AffectedSOPClassUID": MWL, "Priority": 2},
        "N-CREATE": {"AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": PPS_UID},
        "N-SET": {"RequestedSOPClassUID": MPPS, "RequestedSOPInstanceUID": PPS_UID},
    }[kind]
    for name, value in {**defaults, **values}.items():
        setattr(rq, name, value)
    setattr(rq, dataset, BytesIO(b""))
    msg = message_class()
    msg.primitive_to_message(rq)
    encoded = encode(msg.command_set, True, True)
    assert encoded is not None
    return encoded


def element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, elem, len(value)) + value


def pynetdicoms(command: bytes, data_set: bytes, context_id: int = 3):
    msg = DIMSEMessage()
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]
    assert not msg.decode_msg(pdata)
    pdata.presentation_data_value_list = [[context_id, b"\x02" + data_set]]
    assert msg.decode_msg(pdata)
    return msg.message_to_primitive()


def ours(command: bytes, data_set: bytes, context_id: int = 3):
    read = command_sets.read(command)
    assert read is not None
    msg = command_sets.ReadRequest(context_id, *read)
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[context_id, b"\x02" + data_set]]
    assert msg.decode_msg(pdata)
    return msg.message_to_primitive()


def assert_same(kind: str, mine, theirs, data_set: bytes) -> None:
    _, _, dataset, fields = REQUESTS[kind]
    assert type(mine) is type(theirs) is REQUESTS[kind][0]
    for name in (*fields, "_context_id"):
        assert getattr(mine, name) == getattr(theirs, name), name
        assert str(getattr(mine, name)) == str(getattr(theirs, name)), name
    assert getattr(mine, dataset).getvalue() == getattr(theirs, dataset).getvalue() == data_set
    assert mine.is_valid_request and theirs.is_valid_request
    assert vars(mine).keys() == vars(theirs).keys()


@pytest.mark.parametrize(
    ("kind", "message_id", "values"),
    [
        ("C-FIND", 1, {}),
        ("C-FIND", 65535, {"Priority": 0}),
        ("C-FIND", 300, {"Priority": 1, "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.2.2.1"}),
        ("C-FIND", 2, {"AffectedSOPClassUID": "1.2.3"}),
        ("N-CREATE", 1, {}),
        ("N-CREATE", 65535, {"AffectedSOPInstanceUID": "1.2.3"}),  # odd: a NUL pad
        ("N-CREATE", 9, {"AffectedSOPInstanceUID": None}),  # U: the SCP assigns one
        ("N-CREATE", 4, {"AffectedSOPClassUID": "1.2.840.10008.5.1.4.33"}),
        ("N-SET", 2, {}),
        ("N-SET", 65535, {"RequestedSOPInstanceUID": "1." + "2" * 62}),  # 64 characters
        ("N-SET", 5, {"RequestedSOPClassUID": "1.2.3"}),
        ("C-FIND", 3, {"AffectedSOPClassUID": "12"}),  # a UID as long as a US value
        ("N-SET", 6, {"RequestedSOPInstanceUID": "12"}),
    ],
)
def test_the_primitive_is_pynetdicoms(kind, message_id, values):
    command = command_set(kind, message_id, **values)
    data_set = b"\x10\x00\x10\x00\x00\x00\x00\x00"
    assert_same(kind, ours(command, data_set), pynetdicoms(command, data_set), data_set)


@pytest.mark.parametrize("kind", REQUESTS)
def test_without_the_group_length(kind):
    command = command_set(kind)
    assert command[:4] == b"\0\0\0\0"
    read = command_sets.read(command[12:])
    assert read is not None and read == command_sets.read(command)
    assert read[0].name == f"{kind}-RQ"


def swap(old: bytes, new: bytes):
    def change(c: bytes) -> bytes:
        assert old in c
        return c.replace(old, new)

    return change


US = struct.Struct("<HHLH")


def uid(value: str) -> bytes:
    """A UID value as written, padded to even length with a NUL (PS3.5 9.1)."""
    return value.encode() + b"\0" * (len(value) % 2)


MWL_UID, MPPS_UID = element(0x0002, uid(MWL)), element(0x0002, uid(MPPS))
SET_UID = element(0x0003, uid(MPPS))
PPS = element(0x1001, uid(PPS_UID))
CREATED = element(0x1000, uid(PPS_UID))


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("C-FIND", lambda c: c + element(0x0902, b"extra ")),  # an element not of the table
        ("C-FIND", lambda c: c[:-2]),  # cut short
        ("C-FIND", swap(US.pack(0, 0x0100, 2, 0x20), element(0x0100, b"\x30\x00"))),
        ("C-FIND", swap(US.pack(0, 0x0800, 2, 1), element(0x0800, b"\x01\x01"))),
        ("C-FIND", swap(US.pack(0, 0x0700, 2, 2), element(0x0700, b"\x02\0\0\0"))),
        ("C-FIND", swap(MWL_UID, element(0x0002, b"1.2.3 \x00"))),
        ("C-FIND", swap(MWL_UID, element(0x0002, b"1.2\\3.4"))),
        ("C-FIND", swap(MWL_UID, element(0x0002, b""))),
        ("C-FIND", lambda c: c[12:42] + c[:12] + c[42:]),  # out of order
        ("C-FIND", lambda c: struct.pack("<HHL", 2, 0x0010, 0) + c),  # another group
        ("C-FIND", lambda c: b""),
        ("C-FIND", lambda c: c[:-10]),  # without the data set type
        ("N-CREATE", swap(US.pack(0, 0x0800, 2, 1), element(0x0800, b"\x01\x01"))),
        ("N-CREATE", swap(MPPS_UID, element(0x0003, uid(MPPS)))),  # Requested, not Affected
        ("N-CREATE", swap(US.pack(0, 0x0100, 2, 0x0140), US.pack(0, 0x0100, 2, 0x0150))),
        ("N-CREATE", lambda c: c + element(0x1001, uid(PPS_UID))),  # an N-SET element
        ("N-CREATE", swap(CREATED, element(0x1000, b"1.2.3 "))),
        ("N-CREATE", swap(CREATED, element(0x1000, b"1" * 66))),
        ("N-SET", lambda c: c[: c.index(PPS)]),  # without the Requested SOP Instance UID
        ("N-SET", swap(SET_UID, MPPS_UID)),  # Affected, not Requested
        ("N-SET", swap(PPS, element(0x1001, b"1.2.3\\1.2.4"))),
        ("N-SET", swap(US.pack(0, 0x0110, 2, 7), element(0x0110, b"\x07"))),
        ("N-SET", lambda c: c + b"\0\0\x02\x10\x02"),  # a piece of a header
    ],
)
def test_anything_else_is_left_to_pydicom(kind, change):
    changed = change(command_set(kind))
    assert changed != command_set(kind)
    assert command_sets.read(changed) is None


def provider(max_message_size: int = 0) -> wire.DIMSEProvider:
    from pynetdicom import AE

    from worklist_mpps.dimse.pynetdicom_ext.reactor import EventDrivenAssociation

    assoc = EventDrivenAssociation(AE(), "acceptor")
    assoc.dimse.max_message_size = max_message_size
    return assoc.dimse


@pytest.mark.parametrize("kind", REQUESTS)
@pytest.mark.parametrize("max_message_size", [0, 1 << 20])
@pytest.mark.parametrize("one_pdu", [False, True])
@pytest.mark.parametrize("fast_path", [True, False])
def test_the_provider_reads_the_command_set_itself(kind, max_message_size, one_pdu, fast_path):
    """With the fast path a request is a ReadRequest from its first fragment; the
    request queued is pynetdicom's either way, whether command set and data set come
    in one P-DATA or two."""
    dimse = provider(max_message_size)
    dimse.fast_path = fast_path
    command, data_set = command_set(kind, 9), b"\x10\x00\x20\x00\x00\x00\x00\x00"
    pdvs = [[1, b"\x03" + command], [1, b"\x02" + data_set]]
    for n, part in enumerate([pdvs] if one_pdu else [pdvs[:1], pdvs[1:]]):
        pdata = P_DATA()
        pdata.presentation_data_value_list = part
        dimse.receive_primitive(pdata)
        if n == 0 and not one_pdu:  # the command set taken, the data set to come
            assert (type(dimse.message) is command_sets.ReadRequest) is fast_path
    context_id, request = dimse.msg_queue.get(block=False)
    assert context_id == 1
    assert_same(kind, request, pynetdicoms(command, data_set, 1), data_set)
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


@pytest.mark.parametrize("kind", REQUESTS)
def test_mutated_command_sets_are_read_as_pynetdicom_reads_them(kind):
    """Differential check over seeded random mutations (bytes changed, cut, inserted):
    whatever ``read`` accepts, pynetdicom decodes to the same primitive, or its setters
    refuse the same value (a Priority of 3, say: pynetdicom's provider then aborts the
    association either way, dimse.py ``receive_primitive``)."""
    import random

    rng = random.Random(f"command-sets-{kind}")
    original = command_set(kind, 0x1234)
    accepted = 0
    for _ in range(3000):
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            how = rng.random()
            if how < 0.6:
                data[at] = rng.randrange(256)
            elif how < 0.8:
                del data[at : at + rng.randint(1, 4)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        changed = bytes(data)
        if command_sets.read(changed) is None:
            continue
        accepted += 1
        try:
            theirs = pynetdicoms(changed, b"")
        except ValueError as exc:
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                ours(changed, b"")
            continue
        assert_same(kind, ours(changed, b""), theirs, b"")
    assert accepted > 20  # the mutations reach values read, not only refusals
