"""The last pending C-FIND-RSPs and the final one in one write (wire.send_with_final,
wire.DIMSEProvider.send_msg), each response's bytes pynetdicom's own."""

from __future__ import annotations

import threading

import pytest
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

from worklist_mpps.dimse.pynetdicom_ext import wire
from worklist_mpps.dimse.pynetdicom_ext.reactor import EventDrivenAssociation


@pytest.fixture(autouse=True)
def no_log_handlers(monkeypatch):
    """As the server runs (assoc.quiet_logging): no pynetdicom log handlers bound to new
    associations, so that the fast paths are taken."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


class Socket:
    """pynetdicom's AssociationSocket as wire.send uses it: the writes it got."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.socket = object()

    def send(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def association(owner: bool = True) -> tuple[EventDrivenAssociation, Socket]:
    assoc = EventDrivenAssociation(AE(), "acceptor")
    sock = Socket()
    assoc.dul.socket = sock  # type: ignore[assignment]
    assoc.dul.state_machine.current_state = "Sta6"
    assoc.is_established = True
    if owner:
        assoc.dul.owner = threading.get_ident()
    return assoc, sock


def final(message_id: int = 5, status: int = 0x0000) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MWL
    rsp.Status = status
    return rsp


def pynetdicoms(rsp: C_FIND, context_id: int, max_pdu: int = 0) -> bytes:
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    return b"".join(P_DATA_TF(p).encode() for p in msg.encode_msg(context_id, max_pdu))


@pytest.mark.parametrize("status", [0x0000, 0xFE00])
def test_held_responses_and_the_final_one_in_one_write(status):
    assoc, sock = association()
    pending = wire.find_response(5, 0xFF00, b"\x10\x00\x10\x00\x00\x00\x00\x00", 1, 0)
    assert wire.send_with_final(assoc, pending)
    assert sock.writes == []
    assoc.dimse.send_msg(final(5, status), 1)
    assert sock.writes == [pending + pynetdicoms(final(5, status), 1)]
    assert assoc.dimse.held == b""
    assert not assoc.dul.to_provider_queue.qsize()


def test_a_final_response_with_an_error_comment_goes_pynetdicoms_way_after_them():
    assoc, sock = association()
    wire.send_with_final(assoc, b"pending")
    rsp = final(5, 0xC001)
    rsp.ErrorComment = "Unable to process"
    assoc.dimse.send_msg(rsp, 1)
    assert sock.writes == [b"pending"]  # then the failure, queued for the DUL
    assert assoc.dul.to_provider_queue.qsize() == 1


@pytest.mark.parametrize("why", ["not the loop's thread", "PDU sent handler", "queued"])
def test_otherwise_the_held_ones_first_then_the_dul(why):
    assoc, sock = association(owner=why != "not the loop's thread")
    if why == "PDU sent handler":
        assoc.bind(evt.EVT_PDU_SENT, lambda event: None)
    if why == "queued":
        assoc.dul.to_provider_queue.put(object())
    wire.send_with_final(assoc, b"pending")
    assoc.dimse.send_msg(final(), 1)
    assert sock.writes == [b"pending"]
    assert assoc.dul.to_provider_queue.qsize() == 1 + (why == "queued")


def test_without_the_fast_path_nothing_is_held():
    assoc, sock = association()
    assoc.dimse.fast_path = False
    wire.send_with_final(assoc, b"pending")
    assert sock.writes == [b"pending"]
