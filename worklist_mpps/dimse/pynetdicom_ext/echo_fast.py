"""Verification-only associations answered without pynetdicom's Association (issue 18).

An association that only proposes the Verification SOP Class and carries C-ECHOs cost the
server 3-5 ms of CPU on the ordinary path, most of it in building pynetdicom's
Association (DUL, ACSE, DIMSE provider, timers, events) and running its state machine
for five PDUs. Here the connection's thread looks at the A-ASSOCIATE-RQ first, without
taking it from the socket (``MSG_PEEK``): if it is a plain request this module answers
exactly as the ordinary path would (every presentation context Verification with a
transfer syntax the AE supports, no extended negotiation, the called AE title checked
as pynetdicom does, the same admission and device-list decision), it reads it and sends
the A-ASSOCIATE-AC, the C-ECHO-RSPs and the A-RELEASE-RP itself (PS3.8 9.3, PS3.7 9.3.5,
the command set in implicit VR little endian, PS3.7 6.3.1), logging the same line per
association. Anything else, refusals included, is left in the socket untouched for the
ordinary path, which reads it as if this module did not exist (``serve`` returns False).

After the A-ASSOCIATE-AC nothing can be handed back: an A-RELEASE-RQ, an A-ABORT, the
end of the connection and the network timeout are handled as pynetdicom handles them.
A P-DATA-TF that is one whole C-ECHO-RQ in one PDV is answered from its bytes; any other
(a message in fragments, several PDVs, another request, a response, a C-CANCEL) goes
through the ordinary path's own pieces: pynetdicom's P-DATA-TF decoding, wire.py's
DIMSEProvider (assembly, the max_message_size bound, pynetdicom's message decoding and
encoding) and reactor.py's dispatch rules (:meth:`EchoFast._serve_message`,
common.refusal / refused_response), so the answer is the ordinary path's.
tests/test_echo_fast.py compares the bytes sent both ways.

What the provider reads of the stand-in association (``_Host``, ``_Dul``) is registered in
internals.py. Over 400 lines because the request's parser, the association's few states
and the hand-over to the ordinary path's pieces belong together: split, a reader would
have to follow one association across modules.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import P_DATA_TF

from worklist_mpps.dimse.admission import RateLimitedLog, Ticket
from worklist_mpps.dimse.common import refusal, refused_response, requested_sop_class
from worklist_mpps.dimse.pynetdicom_ext import wire

VERIFICATION = b"1.2.840.10008.1.1"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
PEEK_LIMIT = 16384  # bytes: a longer A-ASSOCIATE-RQ (a real one is a few hundred) falls back
MIN_PEER_PDU = 256  # a requestor's Maximum Length below this (0: none) falls back
ABORT_SERVICE_USER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
ABORT_PROVIDER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"
ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
ASSOCIATE_RQ_LIMIT = 65536  # bytes: reactor.py's bound on association and release PDUs
RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_AE_CHARS = frozenset(range(0x20, 0x7F)) - {0x5C}  # PS3.5 AE: no control chars, no "\"
_ECHO_TAGS = {0x0000, 0x0002, 0x0100, 0x0110, 0x0800}  # group length ... data set type

log = logging.getLogger("worklist_mpps.dimse")
DROPPED = RateLimitedLog(log)  # the same lines as reactor.py's, limited on their own
ABORTED = RateLimitedLog(log)


@dataclass
class Request:
    """What the fast path needs of an A-ASSOCIATE-RQ."""

    called: str
    calling: str
    contexts: list[tuple[int, list[bytes]]]  # (context ID, transfer syntaxes)
    maximum_length: int = 0  # the requestor's Maximum Length (0: none)


def parse_request(pdu: bytes) -> Request | None:
    """The A-ASSOCIATE-RQ ``pdu`` (header included) if this module can answer it, else
    None (PS3.8 9.3.2: only Verification contexts; user information of Maximum Length,
    Implementation Class UID and Version Name only; every length consistent)."""
    if len(pdu) < 74 or pdu[0] != 0x01 or struct.unpack_from(">I", pdu, 2)[0] != len(pdu) - 6:
        return None
    if pdu[6:8] != b"\x00\x01":
        return None
    called, calling = _ae(pdu[10:26]), _ae(pdu[26:42])
    if called is None or calling is None:
        return None
    contexts: list[tuple[int, list[bytes]]] = []
    app = user = False
    maximum_length = 0
    items = _items(pdu, 74)
    if items is None:
        return None
    for kind, value in items:
        if kind == 0x10 and not app and not contexts and not user:
            if value != APPLICATION_CONTEXT:
                return None
            app = True
        elif kind == 0x20 and app and not user:
            context = _context(value)
            if context is None or any(context[0] == cid for cid, _ in contexts):
                return None
            contexts.append(context)
        elif kind == 0x50 and contexts and not user:
            peer_max = _user_information(value)
            if peer_max is None:
                return None
            maximum_length, user = peer_max, True
        else:
            return None
    if not user:
        return None
    return Request(called, calling, contexts, maximum_length)


def _items(data: bytes, offset: int) -> list[tuple[int, bytes]] | None:
    """The items of ``data`` from ``offset`` (type, reserved, 2-byte length, value: PS3.8
    9.3.2), or None when the last one is cut short."""
    items = []
    while offset < len(data):
        if offset + 4 > len(data):
            return None
        kind, length = data[offset], struct.unpack_from(">H", data, offset + 2)[0]
        value = data[offset + 4 : offset + 4 + length]
        if len(value) != length:
            return None
        items.append((kind, value))
        offset += 4 + length
    return items


def _ae(raw: bytes) -> str | None:
    if not all(c in _AE_CHARS for c in raw):
        return None
    text = raw.decode("ascii").strip()
    return text or None


def _context(value: bytes) -> tuple[int, list[bytes]] | None:
    if len(value) < 4 or value[0] % 2 == 0:
        return None
    abstract = None
    syntaxes: list[bytes] = []
    items = _items(value, 4)
    if items is None:
        return None
    for kind, item in items:
        if not item:
            return None
        if kind == 0x30 and abstract is None and not syntaxes:
            abstract = item
        elif kind == 0x40 and abstract is not None:
            syntaxes.append(item)
        else:
            return None
    if abstract != VERIFICATION or not syntaxes:
        return None
    return value[0], syntaxes


def _user_information(value: bytes) -> int | None:
    """The Maximum Length of a user information item this module takes, else None."""
    seen: list[int] = []
    peer_max = 0
    items = _items(value, 0)
    if items is None:
        return None
    for kind, item in items:
        if kind in seen or kind not in (0x51, 0x52, 0x55):
            return None
        if kind == 0x51:
            if len(item) != 4:
                return None
            peer_max = struct.unpack(">I", item)[0]
            if peer_max and peer_max < MIN_PEER_PDU:
                return None
        elif not item or not all(0x20 < c < 0x7F for c in item):
            return None
        seen.append(kind)
    return peer_max if 0x51 in seen and 0x52 in seen else None


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


@dataclass
class EchoFast:
    """The Verification fast path of one listener, set up by server.py.

    ``admit(calling_ae_title, address, ticket)``: the association would be accepted by
    the ordinary path (admission slot taken, device list passed), else False (fall back);
    ``echo(state)`` the C-ECHO status (the EVT_C_ECHO handler's logic, ``state`` a
    :class:`EchoAssociation`); ``closed(how, state)`` logs the association's last line.
    """

    ae_title: str
    require_called: bool
    maximum_length: int
    implementation_uid: str
    implementation_version: str | None
    transfer_syntaxes: Sequence[str]  # the AE's for Verification, in its order
    network_timeout: float | None
    acse_timeout: float | None
    pdata_cap: int  # the largest P-DATA-TF read (0: any), as reactor.py's _pdu_cap
    admit: Callable[[str, str, Ticket | None], bool]
    echo: Callable[[EchoAssociation], int]
    closed: Callable[[str, EchoAssociation], None]
    # SOP Class -> DIMSE operations served, as reactor.py's (None: only C-ECHO answered)
    operations: Mapping[str, Collection[str]] | None = None
    max_message_size: int = 0  # wire.DIMSEProvider's bound on a received message (0: none)
    active: set[socket.socket] = field(default_factory=set)  # connections being served
    served: int = 0  # associations answered here (tests tell the paths apart by it)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._syntaxes = [uid.encode() for uid in self.transfer_syntaxes]
        version = self.implementation_version
        self._user = _item(
            0x50,
            _item(0x51, struct.pack(">I", self.maximum_length))
            + _item(0x52, self.implementation_uid.encode())
            + (_item(0x55, version.encode()) if version else b""),
        )

    def accept_pdu(self, request: Request) -> bytes | None:
        """The A-ASSOCIATE-AC the ordinary path sends for ``request`` (PS3.8 9.3.3), or
        None when it would not accept every context (or reject the association)."""
        if self.require_called and request.called != self.ae_title.strip():
            return None
        results = []
        for cid, offered in sorted(request.contexts):
            chosen = next((ts for ts in self._syntaxes if ts in offered), None)
            if chosen is None:
                return None
            results.append(_item(0x21, bytes((cid, 0, 0, 0)) + _item(0x40, chosen)))
        body = (
            b"\x00\x01\x00\x00"
            + request.called.encode().ljust(16)
            + request.calling.encode().ljust(16)
            + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT)
            + b"".join(results)
            + self._user
        )
        return struct.pack(">BBI", 0x02, 0, len(body)) + body

    def may_answer(self, sock: socket.socket) -> bool:
        """False when the whole A-ASSOCIATE-RQ has already come (looked at without
        waiting) and is not one this module answers: the listener then sets the ordinary
        path up itself, without the extra thread that would wait for the RQ."""
        try:
            data = sock.recv(PEEK_LIMIT, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # nothing yet (EAGAIN), or a reset the ordinary path will see
            return True
        if len(data) < 6:
            return True
        length = 6 + struct.unpack_from(">I", data, 2)[0]
        if data[0] != 0x01 or length > PEEK_LIMIT:
            return False
        if len(data) < length:
            return True
        request = parse_request(data[:length])
        return request is not None and self.accept_pdu(request) is not None

    def serve(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        ticket: Ticket | None,
        deadline: float,
    ) -> bool:
        """Serve the connection ``sock`` if its A-ASSOCIATE-RQ is one this module answers
        (True, the connection closed), else False with the socket as it was accepted."""
        opened = time.monotonic()
        with self._lock:
            self.active.add(sock)
        try:
            accepted = self._associate(sock, address, ticket, deadline)
            if accepted is None:
                return False
            state, ac, length = accepted
            with self._lock:
                self.served += 1
            try:
                sock.settimeout(self.network_timeout)
                if len(self._receive(sock, length)) != length:  # the RQ peeked at
                    raise ConnectionResetError("connection closed within a PDU")
                sock.sendall(ac)
                state.opened = opened
                self._run(sock, state)
            except OSError:  # a reset or a send failing: as the end of the connection
                self._end(state, "aborted")
            finally:
                if ticket is not None:
                    ticket.release()
                with _suppress():
                    sock.close()
            return True
        finally:
            with self._lock:
                self.active.discard(sock)

    def _associate(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        ticket: Ticket | None,
        deadline: float,
    ) -> tuple[EchoAssociation, bytes, int] | None:
        try:
            sock.settimeout(None)  # blocking, the wait bounded by SO_RCVTIMEO (_peek)
            header = self._peek(sock, 6, deadline)
            if len(header) < 6 or header[0] != 0x01:
                return None
            length = 6 + struct.unpack_from(">I", header, 2)[0]
            if length > PEEK_LIMIT:
                return None
            pdu = self._peek(sock, length, deadline)
        except (OSError, ValueError):
            return None
        finally:
            with _suppress():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0))
        if len(pdu) != length:
            return None
        request = parse_request(pdu)
        if request is None:
            return None
        ac = self.accept_pdu(request)
        if ac is None:
            return None
        if not self.admit(request.calling, address[0], ticket):
            return None
        with _suppress():
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = EchoAssociation(request.calling, address, self.ae_title)
        state.contexts = {cid for cid, _ in request.contexts}
        state.requestor.maximum_length = request.maximum_length
        return state, ac, length

    @staticmethod
    def _peek(sock: socket.socket, size: int, deadline: float) -> bytes:
        """The first ``size`` bytes the peer sent, left in the socket; fewer if it closed,
        BlockingIOError if they have not all come by ``deadline``. (On a socket with a
        Python timeout, non-blocking, MSG_WAITALL would not wait for the rest.)"""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(remaining))
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_WAITALL)

    @staticmethod
    def _receive(sock: socket.socket, size: int) -> bytes:
        """``size`` bytes, fewer if the peer closes; each wait bounded by the socket's
        timeout (the network timeout)."""
        chunks, got = [], 0
        while got < size:
            chunk = sock.recv(size - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _run(self, sock: socket.socket, state: EchoAssociation) -> None:
        """The established association: C-ECHO-RQs, then A-RELEASE-RQ or its end."""
        while True:
            try:
                header = self._receive(sock, 6)
            except TimeoutError:
                log.warning("Network timeout reached: aborting the association")
                sock.sendall(ABORT_SERVICE_USER)
                self._end(state, "aborted")
                return
            if len(header) < 6:
                self._end(state, "aborted")  # the peer closed: A-P-ABORT (AA-4)
                return
            kind, length = header[0], struct.unpack_from(">I", header, 2)[0]
            if kind not in range(0x01, 0x08):  # as reactor.py's read: Evt19, AA-8
                DROPPED.warning(
                    "Connection from %s dropped: unknown PDU type 0x%02X",
                    state.requestor.address,
                    kind,
                )
                self._abort(sock, state, ABORT_PROVIDER)
                return
            cap = self.pdata_cap if kind == 0x04 else ASSOCIATE_RQ_LIMIT
            if cap and length > cap:  # as reactor.py's read: "invalid PDU parameter value"
                ABORTED.warning(
                    "Association from %s@%s aborted: %s",
                    state.requestor.ae_title,
                    state.requestor.address,
                    f"PDU type 0x{kind:02X} of {length} bytes, more than the {cap} allowed",
                )
                self._abort(sock, state, ABORT_INVALID_PARAMETER)
                return
            if kind not in (0x04, 0x05, 0x07):
                self._unexpected(sock, state, f"PDU type 0x{kind:02X}")
                return
            body = self._receive(sock, length)
            if len(body) != length:
                self._end(state, "aborted")
                return
            if kind == 0x07:  # A-ABORT (AA-3)
                self._end(state, "aborted")
                return
            if kind == 0x05:  # A-RELEASE-RQ: A-RELEASE-RP, then the peer closes (AR-4)
                sock.sendall(RELEASE_RP)
                self._end(state, "released")
                self._await_close(sock)
                return
            dimse = state.dimse
            response = (
                self._echo_response(body, state)
                if dimse is None or dimse.message is None  # no message begun before
                else None
            )
            if response is not None:
                sock.sendall(response)
            elif not self._messages(sock, state, header + body):
                return

    def _messages(self, sock: socket.socket, state: EchoAssociation, pdu: bytes) -> bool:
        """A P-DATA-TF ``pdu`` other than one whole C-ECHO-RQ, taken as the ordinary path
        takes it: decoded by pynetdicom, its PDVs assembled into messages by wire.py's
        DIMSEProvider (bounded by max_message_size), each message served as reactor.py's
        ``_serve_request`` serves it. False: the association has ended."""
        try:
            tf = P_DATA_TF()
            tf.decode(pdu)
            primitive = tf.to_primitive()
        except Exception as exc:  # noqa: BLE001 - as reactor.py's read (Evt19, AA-8)
            why = f"undecodable PDU type 0x04: {exc.__class__.__name__}: {exc}"
            DROPPED.warning("Connection from %s dropped: %s", state.requestor.address, why[:300])
            self._abort(sock, state, ABORT_PROVIDER)
            return False
        dimse = state.dimse
        if dimse is None:
            host = _Host(
                sock, state.requestor, lambda msg, cid: self._serve_message(sock, state, msg, cid)
            )
            dimse = state.dimse = wire.DIMSEProvider(host)  # type: ignore[arg-type]
            dimse.max_message_size = self.max_message_size
        dimse.receive_primitive(primitive)
        if dimse.dul.event_queue:  # "Evt19": wire.py logged why; A-ABORT (AA-8)
            self._abort(sock, state, ABORT_PROVIDER)
            return False
        while not dimse.msg_queue.empty():
            context_id, msg = dimse.msg_queue.get_nowait()
            if not self._serve_message(sock, state, msg, context_id):
                return False
        return True

    def _serve_message(
        self, sock: socket.socket, state: EchoAssociation, msg: Any, context_id: int
    ) -> bool:
        """reactor.py's ``EventDrivenAssociation._serve_request`` for a Verification-only
        association (no release sent by this side). False: the association has ended."""
        dimse = state.dimse
        oversize = wire.refusal_of(msg)
        if oversize is not None:
            response = wire.refusal_response(msg, oversize)
            if response is not None:  # None: a response or C-CANCEL, nothing to answer
                dimse.send_msg(response, context_id)
            return True
        requestor = state.requestor
        if not msg.is_valid_request:
            missing = [k for k in msg.REQUEST_KEYWORDS if getattr(msg, k, None) is None]
            log.warning(
                "%s from %s@%s without %s: association aborted",
                msg.msg_type,
                requestor.ae_title,
                requestor.address,
                ", ".join(missing),
            )
            self._abort(sock, state, ABORT_SERVICE_USER)  # Association.abort()
            return False
        if context_id not in state.contexts:  # pynetdicom logs it at INFO and aborts
            self._abort(sock, state, ABORT_SERVICE_USER)
            return False
        if self.operations is not None:
            sop_class = requested_sop_class(msg)
            refused = refusal(msg.msg_type, sop_class, VERIFICATION.decode(), self.operations)
            if refused is not None:
                rsp = refused_response(msg, context_id, *refused, requestor)
                dimse.send_msg(rsp, context_id)
                return True
        if not isinstance(msg, C_ECHO):  # no operations given: only C-ECHO is answered
            self._unexpected(sock, state, f"a {msg.msg_type} request")
            return False
        dimse.cancel_req = {}  # as pynetdicom's _serve_request, before and after
        rsp = C_ECHO()
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        rsp.AffectedSOPClassUID = VERIFICATION.decode()
        rsp.Status = self.echo(state)
        dimse.send_msg(rsp, context_id)
        dimse.cancel_req = {}
        return True

    def _echo_response(self, body: bytes, state: EchoAssociation) -> bytes | None:
        """The P-DATA-TF answering the one C-ECHO-RQ in ``body``, else None."""
        if len(body) < 6:
            return None
        pdv_length = struct.unpack_from(">I", body)[0]
        if pdv_length != len(body) - 4 or pdv_length < 2 or body[5] != 0x03:
            return None
        context = body[4]
        if context not in state.contexts:
            return None
        command, offset = {}, 6
        while offset < len(body):
            if offset + 8 > len(body):
                return None
            group, tag, length = struct.unpack_from("<HHI", body, offset)
            value = body[offset + 8 : offset + 8 + length]
            if group != 0 or tag not in _ECHO_TAGS or tag in command or len(value) != length:
                return None
            command[tag] = value
            offset += 8 + length
        if (
            command.get(0x0100) != b"\x30\x00"
            or command.get(0x0800) != b"\x01\x01"
            or command.get(0x0002, b"").rstrip(b"\x00") != VERIFICATION
            or len(command.get(0x0110, b"")) != 2
        ):
            return None
        status = self.echo(state)
        elements = (
            _element(0x0002, VERIFICATION + b"\x00")
            + _element(0x0100, b"\x30\x80")
            + _element(0x0120, command[0x0110])
            + _element(0x0800, b"\x01\x01")
            + _element(0x0900, struct.pack("<H", status))
        )
        data = _element(0x0000, struct.pack("<I", len(elements))) + elements
        pdv = struct.pack(">I", len(data) + 2) + bytes((context, 0x03)) + data
        return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv

    def _unexpected(self, sock: socket.socket, state: EchoAssociation, what: str) -> None:
        """An unexpected PDU type (A-ASSOCIATE-RQ, -AC, -RJ, A-RELEASE-RP after the AC):
        A-ABORT (service-provider), as the ordinary path's state machine answers it."""
        ABORTED.warning(
            "Association from %s@%s aborted: %s (Verification fast path)",
            state.requestor.ae_title,
            state.requestor.address,
            what,
        )
        self._abort(sock, state, ABORT_PROVIDER)

    def _abort(self, sock: socket.socket, state: EchoAssociation, pdu: bytes) -> None:
        with _suppress():
            sock.sendall(pdu)
        self._end(state, "aborted")

    def _end(self, state: EchoAssociation, how: str) -> None:
        if not state.logged:
            state.logged = True
            self.closed(how, state)

    def _await_close(self, sock: socket.socket) -> None:
        """Sta13: wait (ARTIM, the ACSE timeout) for the peer to close the connection."""
        with _suppress():
            sock.settimeout(self.acse_timeout)
            while sock.recv(4096):
                pass

    def stop(self) -> None:
        """End the connections still served (at shutdown, after the grace period)."""
        with self._lock:
            socks = list(self.active)
        for sock in socks:
            with _suppress():
                sock.shutdown(socket.SHUT_RDWR)


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:  # noqa: ANN001
        return kind is not None and issubclass(kind, OSError)


class _Peer:
    def __init__(self, ae_title: str, address: tuple[str, int]) -> None:
        self.ae_title = ae_title
        self.address, self.port = address[0], address[1]
        self.maximum_length = 0


class _Events(list[str]):
    def put(self, event: str) -> None:
        self.append(event)


class _Dul:
    """What wire.DIMSEProvider uses of pynetdicom's DUL: ``event_queue`` (it puts "Evt19"
    there to abort) and ``send_pdu`` (P-DATA primitives, encoded by pynetdicom)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.event_queue = _Events()

    def send_pdu(self, primitive: Any) -> None:
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        self.sock.sendall(pdu.encode())


class _Host:
    """What wire.DIMSEProvider uses of pynetdicom's Association, for this module."""

    is_requestor = False
    dimse_timeout = None

    def __init__(
        self, sock: socket.socket, requestor: _Peer, serve: Callable[[Any, int], object]
    ) -> None:
        self.requestor = requestor
        self.dul = _Dul(sock)
        self._serve = serve

    @staticmethod
    def get_handlers(_event: Any) -> list[Any]:
        return []  # no EVT_DIMSE_RECV / EVT_DIMSE_SENT handlers

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """pynetdicom's provider hands a valid N-EVENT-REPORT-RQ to the association at
        once, in a thread of its own, as on the ordinary path: served the same way."""
        self._serve(msg, context_id)


class EchoAssociation:
    """The association as the handlers see it: ``requestor`` (ae_title, address, port),
    ``acceptor.ae_title`` and the notes of assoc.py (``note``/``set_note``)."""

    def __init__(self, calling: str, address: tuple[str, int], ae_title: str) -> None:
        self.requestor = _Peer(calling, address)
        self.acceptor = _Peer(ae_title, ("", 0))
        self.contexts: set[int] = set()
        self.dimse: Any = None  # wire.DIMSEProvider, once a message is not a plain C-ECHO-RQ
        self.opened = time.monotonic()
        self.logged = False
