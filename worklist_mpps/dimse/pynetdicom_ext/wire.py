"""C-FIND responses encoded straight to P-DATA-TF bytes: the worklist fast path; and the
bound on received DIMSE messages (``max_message_size``, at the end).

pynetdicom builds every C-FIND-RSP as pydicom Datasets, encodes them in pure
Python and hands each fragment through its state machine's queue: about 0.4 ms
per response, most of a broad query. Here the command set is a fixed template
(only the Message ID Being Responded To and the Status change), the identifier
is encoded from the plain elements of ``worklist.response_elements``, and a
batch of responses goes to the socket in one write, through pynetdicom's own
AssociationSocket.

The byte layouts come from the standard: data elements PS3.5 7.1 (implicit and
explicit VR little endian), the DIMSE command set of a C-FIND-RSP PS3.7 9.3.2.2,
message fragments and P-DATA-TF PDUs PS3.8 9.3.5 and E.2. Anything else (big
endian or deflated transfer syntaxes, ISO 2022 character sets, TLS) goes the
ordinary pynetdicom way.

Over 400 lines: with reactor.py the one place allowed to touch pynetdicom's internals
(pynetdicom_ext/__init__.py); splitting the byte layouts from the provider that sends
them would spread those internals.
"""

from __future__ import annotations

import functools
import logging
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Iterable
from io import BytesIO
from typing import Any, cast

from pydicom.charset import python_encoding
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import dimse_messages, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import (
    C_CANCEL,
    C_ECHO,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    N_CREATE,
    N_SET,
    DimseServiceType,
)
from pynetdicom.pdu_primitives import P_DATA

from worklist_mpps.dimse.admission import RateLimitedLog
from worklist_mpps.dimse.pynetdicom_ext import command_sets
from worklist_mpps.services import status as dimse_status

log = logging.getLogger("worklist_mpps.dimse")
MWL_FIND = b"1.2.840.10008.5.1.4.31"  # 22 bytes: even, no padding
C_FIND_RSP = 0x8020
DATASET_PRESENT, NO_DATASET = 0x0001, 0x0101  # (0000,0800) as pynetdicom writes them

# PS3.5 Table 7.1-1: explicit VRs with a 4-byte length (after two reserved bytes)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
BINARY = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l", "FL": "<f", "FD": "<d"}
_UL, _US = struct.Struct("<L"), struct.Struct("<H")
SIMPLE_CHARSETS = {None: "ascii", "ISO_IR 6": "ascii", "": "ascii"}


def codec(charset: str | None) -> str | None:
    """Python codec of a response character set, None when this path cannot encode it
    (ISO 2022 code extensions need pydicom's escape sequence handling)."""
    if charset is None or charset in SIMPLE_CHARSETS:  # None is one of them
        return SIMPLE_CHARSETS[charset]
    if charset.startswith("ISO 2022"):
        return None
    return python_encoding.get(charset)


MIN_PDU = 14  # a PDU of a PDV item with an 8-byte fragment: pynetdicom's smallest


def peer_max_pdu(assoc) -> int:  # noqa: ANN001
    """The peer's Maximum Length (PS3.8 D.1): the largest PDU sent to it (0: no limit)."""
    return assoc.dimse.maximum_pdu_size


def usable(assoc, transfer_syntax: str) -> bool:  # noqa: ANN001
    """Can responses on this association and presentation context take the fast path?"""
    if transfer_syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        return False
    if 0 < assoc.dimse.maximum_pdu_size < MIN_PDU:
        return False
    sock = getattr(assoc.dul.socket, "socket", None)
    return sock is not None and not isinstance(sock, ssl.SSLSocket)


# --- data elements (PS3.5 7.1) ------------------------------------------------------------


def _value(vr: str, value: Any, text_codec: str) -> bytes:
    if value is None:
        return b""
    if vr in BINARY:
        return struct.pack(BINARY[vr], int(value))
    raw = str(value).encode(text_codec)
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


@functools.lru_cache(maxsize=4096)
def _tag_vr(tag: int, vr: str, explicit: bool) -> tuple[bytes, struct.Struct]:
    """The fixed part of an element header and the packer of its length."""
    if not explicit:
        return struct.pack("<HH", tag >> 16, tag & 0xFFFF), _UL
    if vr in LONG_VRS:
        return struct.pack("<HH2s2x", tag >> 16, tag & 0xFFFF, vr.encode()), _UL
    return struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode()), _US


def _header(tag: int, vr: str, length: int, explicit: bool) -> bytes:
    fixed, packer = _tag_vr(tag, vr, explicit)
    return fixed + packer.pack(length)


def encode_elements(
    elements: Iterable[tuple[int, str, Any]], text_codec: str, explicit: bool
) -> bytes:
    """Encode elements (tag, VR, value) given in ascending tag order; sequences and
    their items with defined lengths (PS3.5 7.5)."""
    out = []
    for tag, vr, value in elements:
        if vr == "SQ":
            items = b"".join(
                struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
                for body in (encode_elements(item, text_codec, explicit) for item in value)
            )
            out.append(_header(tag, "SQ", len(items), explicit) + items)
        else:
            raw = _value(vr, value, text_codec)
            out.append(_header(tag, vr, len(raw), explicit) + raw)
    return b"".join(out)


def encode_identifier(
    elements: list[tuple[int, str, Any]], charset: str | None, explicit: bool
) -> bytes | None:
    """The response identifier, with (0008,0005) Specific Character Set when one is
    needed; None when ``charset`` is not one this path encodes."""
    text_codec = codec(charset)
    if text_codec is None:
        return None
    if charset:
        elements = sorted([*elements, (0x00080005, "CS", charset)], key=lambda e: e[0])
    return encode_elements(elements, text_codec, explicit)


# --- DIMSE command set (PS3.7 9.3.2.2, E.1) and P-DATA-TF PDUs (PS3.8 9.3.5) ---------------


def _command(
    sop_class: bytes,
    command_field: int,
    message_id: int,
    status: int,
    dataset_type: int,
    tail: bytes = b"",
) -> bytes:
    """A response command set (C-ECHO-RSP PS3.7 9.3.5.2, C-FIND-RSP 9.3.2.2), always
    implicit VR little endian (PS3.7 6.3.1); ``tail``: the encoded elements after the
    Status (0000,0900), in tag order."""
    if len(sop_class) % 2:
        sop_class += b"\0"
    body = (
        struct.pack("<HHL", 0x0000, 0x0002, len(sop_class))
        + sop_class
        + struct.pack("<HHLH", 0x0000, 0x0100, 2, command_field)
        + struct.pack("<HHLH", 0x0000, 0x0120, 2, message_id)
        + struct.pack("<HHLH", 0x0000, 0x0800, 2, dataset_type)
        + struct.pack("<HHLH", 0x0000, 0x0900, 2, status)
        + tail
    )
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def _pdus(data: bytes, context_id: int, command: bool, max_pdu: int) -> bytes:
    """``data`` as P-DATA-TF PDUs of one PDV each, fragments within the peer's maximum
    PDU length (PS3.8 9.3.5, E.2: bit 0 command, bit 1 last fragment)."""
    size = max(len(data), 1) if max_pdu == 0 else (max_pdu - 6) & ~1  # even (PS3.8 E.1)
    out = []
    for start in range(0, max(len(data), 1), size):
        fragment = data[start : start + size]
        flags = (0x01 if command else 0x00) | (0x02 if start + size >= len(data) else 0x00)
        out.append(struct.pack(">BxL", 0x04, len(fragment) + 6) + _pdv(fragment, context_id, flags))
    return b"".join(out)


def _pdv(data: bytes, context_id: int, flags: int) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, flags) + data


def one_pdv(context_id: int, data: bytes) -> list[tuple[int, bytes]]:
    """A ``P_DATA.presentation_data_value_list`` of one PDV. pynetdicom's setter takes
    only ``[context ID, bytes]`` lists (a tuple is a TypeError), though annotated with
    tuples: the list is cast to the annotation."""
    return cast("list[tuple[int, bytes]]", [[context_id, data]])


@functools.lru_cache(maxsize=64)
def _find_command(message_id: int, status: int, dataset: bool) -> bytes:
    """The C-FIND-RSP command set; the same for every pending response of a request."""
    return _command(
        MWL_FIND, C_FIND_RSP, message_id, status, DATASET_PRESENT if dataset else NO_DATASET
    )


def find_response(
    message_id: int, status: int, identifier: bytes | None, context_id: int, max_pdu: int
) -> bytes:
    """One whole C-FIND-RSP message: command set, then the identifier if any.

    Command and identifier go in one P-DATA-TF PDU when both fit: PDVs of the same
    message may share a PDU (PS3.8 E.1), and the peer then reads one PDU per response.
    """
    command = _find_command(message_id, status, identifier is not None)
    if identifier is None:
        return _pdus(command, context_id, True, max_pdu)
    length = len(command) + len(identifier) + 12
    if max_pdu and length > max_pdu:
        return _pdus(command, context_id, True, max_pdu) + _pdus(
            identifier, context_id, False, max_pdu
        )
    return (
        struct.pack(">BxL", 0x04, length)
        + _pdv(command, context_id, 0x03)
        + _pdv(identifier, context_id, 0x02)
    )


def drain(assoc, timeout: float = 1.0) -> None:  # noqa: ANN001
    """Wait until pynetdicom's DUL has taken everything queued before, so that direct
    writes cannot overtake it (a peer may not pipeline requests without asynchronous
    operations negotiated, so this is normally empty at once)."""
    dul = assoc.dul
    if getattr(dul, "owner", None) == threading.get_ident():  # this thread runs its loop
        dul.pump(lambda: not dul.to_provider_queue.qsize(), timeout)  # reactor.py
        return
    deadline = time.monotonic() + timeout
    while dul.to_provider_queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.0002)


def send(assoc, data: bytes) -> bool:  # noqa: ANN001
    """Write to the peer through pynetdicom's AssociationSocket (which reports a failed
    write to the state machine as a closed connection); False once the association ended."""
    assoc.dul.socket.send(data)
    return assoc.is_established and assoc.dul.socket.socket is not None


def send_with_final(assoc, data: bytes) -> bool:  # noqa: ANN001
    """Like :func:`send`, or, when ``assoc`` runs :class:`DIMSEProvider`, keep ``data`` (the
    last pending responses) to go out in one write with the final C-FIND-RSP that
    pynetdicom sends next (``DIMSEProvider.send_msg``); a response may follow another in
    the same TCP segment, as PDUs follow each other on the connection (PS3.8 9.3.1)."""
    dimse = assoc.dimse
    if not isinstance(dimse, DIMSEProvider) or not dimse.fast_path:
        return send(assoc, data)
    dimse.held += data
    return True


# --- the Attribute Identifier List of an N-CREATE-RSP ---------------------------------------


def n_create_attribute_identifier_list() -> None:
    """Let an N-CREATE-RSP carry the Attribute Identifier List (0000,1005).

    PS3.7 10.3.5: the N-CREATE-RSP holds the fields of Table 10.3-10 *and* the status
    fields of Annex C, among them (0000,1005) naming the attributes of a failure (C.5.13
    Missing Attribute 0120H, C.5.17 No such Attribute 0105H; PS3.4 F.7.2.1.3 asks 0106H
    "with an Attribute List"). pynetdicom 3.0.4 has (0000,1005) on N-SET and N-GET only:
    its N-CREATE primitive lacks the parameter, so ``ServiceClass.validate_status`` drops
    it from a handler's status Dataset, and its N-CREATE-RSP command set template leaves
    it out. This adds both (idempotent; additive: a response without the list encodes
    as before, and an N-CREATE-RSP that carries one now reaches the primitive).
    """
    keyword = "AttributeIdentifierList"
    setattr(N_CREATE, keyword, None)  # a parameter (undeclared there) validate_status copies into
    keywords = dimse_messages._COMMAND_SET_KEYWORDS["N-CREATE-RSP"]
    if keyword not in keywords:
        dimse_messages._COMMAND_SET_KEYWORDS["N-CREATE-RSP"] = (*keywords, keyword)


n_create_attribute_identifier_list()


# --- status-only responses through pynetdicom's DUL -------------------------------------------


RESPONSE_FIELDS = {C_ECHO: 0x8030, C_FIND: C_FIND_RSP}
# N-CREATE-RSP (PS3.7 10.3.5) and N-SET-RSP (10.3.3): the same fields plus the Affected
# SOP Instance UID (0000,1000); the MPPS answers (issue 18)
INSTANCE_RESPONSE_FIELDS = {N_CREATE: (0x8140, "N-CREATE-RSP"), N_SET: (0x8120, "N-SET-RSP")}
# what a status-only response carries: every other field of its command set is empty
_STATUS_ONLY_FIELDS = frozenset(
    {
        "CommandGroupLength",
        "AffectedSOPClassUID",
        "CommandField",
        "MessageIDBeingRespondedTo",
        "CommandDataSetType",
        "Status",
        "AffectedSOPInstanceUID",
    }
)


def status_only_command(primitive) -> bytes | None:  # noqa: ANN001
    """The command set of a response that carries nothing but its status (every C-ECHO-RSP,
    the final C-FIND-RSP, an N-CREATE-RSP or N-SET-RSP without Error Comment, Error ID,
    Attribute Identifier List or Attribute List); None for anything else."""
    kind = type(primitive)
    if kind in INSTANCE_RESPONSE_FIELDS:
        return _instance_status_only(primitive, *INSTANCE_RESPONSE_FIELDS[kind])
    field = RESPONSE_FIELDS.get(kind)
    if (
        field is None
        or primitive.MessageIDBeingRespondedTo is None
        or primitive.AffectedSOPClassUID is None
        or primitive.ErrorComment is not None
        or getattr(primitive, "Identifier", None) is not None
        or getattr(primitive, "OffendingElement", None) is not None
    ):
        return None
    return _command(
        str(primitive.AffectedSOPClassUID).encode(),
        field,
        primitive.MessageIDBeingRespondedTo,
        int(primitive.Status),
        NO_DATASET,
    )


def _instance_status_only(primitive, field: int, name: str) -> bytes | None:  # noqa: ANN001
    """:func:`status_only_command` of an N-CREATE-RSP or N-SET-RSP: the fields pynetdicom
    encodes for it (``dimse_messages._COMMAND_SET_KEYWORDS``, where this module adds the
    Attribute Identifier List to N-CREATE-RSP) must all be empty but the status ones."""
    if (
        primitive.MessageIDBeingRespondedTo is None
        or primitive.AffectedSOPClassUID is None
        or primitive.AffectedSOPInstanceUID is None
        or primitive.Status is None
        or primitive.AttributeList is not None
    ):
        return None
    for keyword in dimse_messages._COMMAND_SET_KEYWORDS[name]:
        if keyword not in _STATUS_ONLY_FIELDS and getattr(primitive, keyword, None) is not None:
            return None
    instance = str(primitive.AffectedSOPInstanceUID).encode()
    if len(instance) % 2:
        instance += b"\0"
    return _command(
        str(primitive.AffectedSOPClassUID).encode(),
        field,
        primitive.MessageIDBeingRespondedTo,
        int(primitive.Status),
        NO_DATASET,
        struct.pack("<HHL", 0x0000, 0x1000, len(instance)) + instance,
    )


# --- bounded received messages ---------------------------------------------------------------

REFUSED = RateLimitedLog(log)
COMMAND_SET_LIMIT = 65536  # bytes; a real command set is a few hundred
OUT_OF_RESOURCES = {  # the "Refused: Out of Resources" of each DIMSE-C service
    C_FIND: dimse_status.OUT_OF_RESOURCES,  # PS3.4 C.4.1.1.4, K.4.1.1.4
    C_STORE: dimse_status.OUT_OF_RESOURCES,  # PS3.4 B.2.3
    C_GET: dimse_status.OUT_OF_RESOURCES_MATCHES,  # PS3.4 C.4.3.1.4
    C_MOVE: dimse_status.OUT_OF_RESOURCES_MATCHES,  # PS3.4 C.4.2.1.4
}


_REFUSAL = "wm_refusal"  # the one attribute this project adds to pynetdicom's DIMSE primitives


def mark_refused(request: object, comment: str) -> None:
    """Mark a received request for :func:`refusal_response`, ``comment`` its Error Comment."""
    setattr(request, _REFUSAL, comment)


def refusal_of(request: object) -> str | None:
    """The comment :func:`mark_refused` left on ``request``; None if it is not refused."""
    return getattr(request, _REFUSAL, None)


def refusal_response(request, comment: str):  # noqa: ANN001, ANN201
    """The response to a request whose data set was too large to take: its own DIMSE type
    with the service's resource status and ``comment`` as Error Comment (0000,0902);
    None for what is not answered (C-CANCEL, a response)."""
    if isinstance(request, C_CANCEL) or getattr(request, "MessageID", None) is None:
        return None
    response = type(request)()
    response.MessageIDBeingRespondedTo = request.MessageID
    sop_class = getattr(request, "AffectedSOPClassUID", None) or getattr(
        request, "RequestedSOPClassUID", None
    )
    instance = getattr(request, "AffectedSOPInstanceUID", None) or getattr(
        request, "RequestedSOPInstanceUID", None
    )
    if sop_class:
        response.AffectedSOPClassUID = sop_class
    if instance and hasattr(response, "AffectedSOPInstanceUID"):
        response.AffectedSOPInstanceUID = instance
    for name in ("EventTypeID", "ActionTypeID"):
        if getattr(request, name, None) is not None:
            setattr(response, name, getattr(request, name))
    response.Status = OUT_OF_RESOURCES.get(type(request), dimse_status.RESOURCE_LIMITATION)
    response.ErrorComment = comment[:64]  # LO
    return response


class CancelRequests(dict):
    """pynetdicom's C-CANCEL requests received (``DIMSEServiceProvider.cancel_req``,
    message ID -> C-CANCEL). A service class looks for one between responses (PS3.4
    C.4.1.2.3) with ``keys()``: when the asking thread runs the DUL loop itself
    (reactor.py, one thread per association), the loop first takes what has arrived and
    sends what is queued, as pynetdicom's own DUL thread does meanwhile."""

    def __init__(self, assoc) -> None:  # noqa: ANN001
        super().__init__()
        self._assoc = weakref.ref(assoc)  # no reference cycle (reactor._unlink)

    def keys(self):  # noqa: ANN201
        dul = getattr(self._assoc(), "dul", None)
        if dul is not None and getattr(dul, "owner", None) == threading.get_ident():
            dul.pump(_never, 0)  # turns until nothing is left to do, no wait
        return super().keys()


def _never() -> bool:
    return False


class DIMSEProvider(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider; with ``fast_path``, status-only C-ECHO, C-FIND,
    N-CREATE and N-SET responses skip pydicom's command set encoding and go to the DUL as
    one ready P-DATA primitive; in both modes a received message is bounded by
    ``max_message_size``."""

    max_message_size = 0  # bytes of one message, command and data set (0: no bound)
    fast_path = True  # dimse_fast_path: status-only responses skip pydicom's encoding
    held = b""  # encoded responses waiting to go out before the next one (send_with_final)
    _received = 0  # bytes of the message being received
    _discarding = False  # its data set is over the bound: fragments are dropped

    _cancel_req: CancelRequests | None = None

    @property
    def cancel_req(self) -> CancelRequests:
        assert self._cancel_req is not None  # set by pynetdicom's __init__
        return self._cancel_req

    @cancel_req.setter
    def cancel_req(self, value: dict) -> None:
        """pynetdicom assigns a plain dict here (``__init__``, and ``_serve_request``
        before and after each request, clearing what was received); it stays a
        CancelRequests, so a service class's look for a C-CANCEL still takes what has
        arrived when the association runs its DUL loop itself."""
        requests = CancelRequests(self.assoc)
        requests.update(value)
        self._cancel_req = requests

    def receive_primitive(self, primitive) -> None:  # noqa: ANN001
        """pynetdicom assembles a message's fragments (PS3.8 E.2) in memory, however many.
        Here, once a message passes ``max_message_size`` (counting the data sets still
        queued on this association), its data set fragments are discarded as they
        come, and the request, when its last fragment arrives, is answered with the
        resource status of its service (``refusal_response``). A command set over
        COMMAND_SET_LIMIT cannot be decoded for an answer: the association is aborted."""
        limit = self.max_message_size
        if not limit:
            self._assemble(primitive)
            return
        for context_id, data in primitive.presentation_data_value_list:
            if self.message is None:
                self.message = DIMSEMessage()
                self._received, self._discarding = 0, False
            self._received += len(data) - 1
            if data[0] & 1:  # command fragment
                if self._received > min(limit, COMMAND_SET_LIMIT):
                    self._abort(f"a command set of more than {self._received} bytes")
                    return
            elif self._discarding or self._received + self._queued() > limit:
                if not self._discarding:
                    self._discarding = True
                    self.message.data_set = BytesIO()  # drop what was kept so far
                if data[0] & 2:
                    self._refuse(context_id, limit)
                continue
            single = P_DATA()
            single.presentation_data_value_list = one_pdv(context_id, data)
            if not self._assemble(single):
                return

    def _assemble(self, primitive) -> bool:  # noqa: ANN001
        """pynetdicom's assembly; a command set it cannot decode (an unknown Command Field,
        wrong lengths) aborts the association with one log line instead of a traceback
        from pynetdicom's state machine (PS3.8 9.2 AA-8)."""
        try:
            if not (self.fast_path and self._read_request(primitive)):
                super().receive_primitive(primitive)
            return True
        except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on bad bytes
            self._abort(f"an undecodable command set: {exc.__class__.__name__}: {exc}"[:200])
            return False

    def _read_request(self, primitive) -> bool:  # noqa: ANN001
        """Start a C-FIND-RQ, N-CREATE-RQ or N-SET-RQ whose command set, whole in the first
        PDV, ``command_sets.read`` reads (a ``ReadRequest``), and pass the primitive's
        other PDVs on to pynetdicom; False (nothing done) for anything else, or when
        EVT_DIMSE_RECV handlers want pynetdicom's decoded command set."""
        pdvs = primitive.presentation_data_value_list
        if not pdvs or pdvs[0][1][0] & 3 != 3:  # not a whole command set (PS3.8 E.2)
            return False
        message = self.message
        if message is not None and (
            type(message) is not DIMSEMessage
            or message.encoded_command_set.tell()
            or cast(BytesIO, message.data_set).tell()
        ):
            return False  # a message already begun: pynetdicom's assembly
        context_id, data = pdvs[0]
        read = command_sets.read(data[1:])
        if read is None or self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
            return False
        self.message = command_sets.ReadRequest(context_id, *read)
        if len(pdvs) > 1:
            rest = P_DATA()
            rest.presentation_data_value_list = pdvs[1:]
            super().receive_primitive(rest)
        return True

    def _may_write(self) -> bool:
        """May a response be written to the socket here rather than queued for the DUL?
        Yes on the thread running the DUL loop (reactor.py), in Sta6 (data transfer),
        with nothing queued before it, and no handler of EVT_PDU_SENT (which the DUL's
        own send triggers)."""
        dul = self.dul
        return (
            getattr(dul, "owner", None) == threading.get_ident()
            and not dul.to_provider_queue.qsize()
            and dul.state_machine.current_state == "Sta6"
            and not self.assoc.get_handlers(evt.EVT_PDU_SENT)
        )

    def _queued(self) -> int:
        """Data set bytes of received messages not yet taken by the association."""
        total = 0
        for _, msg in list(self.msg_queue.queue):
            for name in (
                "DataSet",
                "Identifier",
                "AttributeList",
                "ModificationList",
                "ActionInformation",
                "EventInformation",
            ):
                value = getattr(msg, name, None)
                if isinstance(value, BytesIO):
                    total += value.getbuffer().nbytes
        return total

    def _refuse(self, context_id: int, limit: int) -> None:
        """Queue the request without its data set, marked for refusal_response."""
        msg, size = self.message, self._received
        assert msg is not None  # receive_primitive calls this with the message it receives
        self.message = None
        req = self.assoc.requestor
        if type(msg) is DIMSEMessage or msg.context_id is None:  # data before the command
            self._abort(f"a message of {size} bytes without a command set")
            return
        try:
            request = msg.message_to_primitive()
        except Exception as exc:  # noqa: BLE001 - a command set pynetdicom cannot take
            self._abort(f"an undecodable command set: {exc.__class__.__name__}")
            return
        REFUSED.warning(
            "%s of %d bytes from %s@%s refused: more than max_message_size %d",
            msg.__class__.__name__.replace("_", "-"),
            size,
            req.ae_title,
            req.address,
            limit,
        )
        mark_refused(request, f"Message over max_message_size of {limit} bytes")
        # the queue's annotation leaves C-CANCEL out; pynetdicom's receive_primitive queues
        # one too (past its tenth), with this cast; refusal_response answers none
        self.msg_queue.put((context_id, cast(DimseServiceType, request)))

    def _abort(self, why: str) -> None:
        req = self.assoc.requestor
        REFUSED.warning("Association from %s@%s aborted: %s", req.ae_title, req.address, why)
        self.message = None
        self.dul.event_queue.put("Evt19")  # invalid PDU contents: A-ABORT (PS3.8 9.2 AA-8)

    def send_msg(self, primitive, context_id: int) -> None:  # noqa: ANN001
        max_pdu = self.maximum_pdu_size
        if 0 < max_pdu < MIN_PDU:
            # pynetdicom fails on these (division by zero, fragment too short) with a
            # traceback; nothing can be sent in PDUs that small: end the association
            req = self.assoc.requestor
            log.warning(
                "Association from %s@%s aborted: its maximum PDU length %d is too "
                "small to carry any message",
                req.ae_title,
                req.address,
                max_pdu,
            )
            self.assoc.abort()
            return
        command = status_only_command(primitive) if self.fast_path else None
        held, self.held = self.held, b""
        if (
            command is None
            or (max_pdu and len(command) + 6 > max_pdu)
            or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            if held and not send(self.assoc, held):
                return
            super().send_msg(primitive, context_id)  # fragments, or logging wants the message
            return
        if isinstance(primitive, C_FIND) and self._may_write():
            # as the DUL would send it (DT-1: one P-DATA-TF PDU of one PDV), after the
            # pending responses held back: one write for both
            send(self.assoc, held + _pdus(command, context_id, True, max_pdu))
            return
        if held and not send(self.assoc, held):
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = one_pdv(context_id, b"\x03" + command)  # command, last
        self.dul.send_pdu(pdata)


# What this module relies on of pynetdicom's internals is listed in internals.py.
