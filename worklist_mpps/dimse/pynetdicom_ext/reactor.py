"""Event-driven reactors for pynetdicom's acceptor associations.

pynetdicom runs two polling loops per association: the DUL thread sleeps
between looks at its socket and queues (1 ms by default), the association
thread sleeps 1 ms between looks for a decoded DIMSE message. Every PDU hop
(A-ASSOCIATE, each request, A-RELEASE) can wait for a poll, and with a few
associations open the idle polling alone keeps a core busy. The subclasses
here keep pynetdicom's state machine, timers and message handling as they are
and change which thread runs them and how it waits:

- one thread per association: the association thread runs the DUL loop itself
  (``EventDrivenDUL.pump``) wherever pynetdicom's would wait for its DUL thread (the
  A-ASSOCIATE-RQ, the next request, the end of the connection, ``wire.drain``, a
  service class's look for a C-CANCEL); no DUL thread is started, and no PDU is
  handed between threads (issue 18: ~20 % of the CPU of an association carrying one
  C-ECHO was starting the second thread and the hand-offs);
- that loop blocks in ``select`` on the socket and a wake-up pipe, which every put to
  the provider or event queue from another thread (an abort at shutdown) writes to.

It does not wake for nothing: a wait ends when the next timer is due (ARTIM, the
network idle timer, the handshake deadline: ``_wait_limit``), IDLE_WAIT at most. Waking
every 20 ms, as the first version did, cost ~6 ms of CPU a second per open idle
association (issue 18: 8 idle associations, 52 ms/s).

With ``fast_path`` False (config ``dimse_fast_path``) two threads run pynetdicom's own
polling loops (``DULServiceProvider.run_reactor``, ``Association._run_reactor``), the
listener starts a thread per connection as pynetdicom's ThreadedAssociationServer, and
wire.py's encoding shortcuts are off. What protects the server stays on either way: the
bounded PDU read below (pynetdicom's loop calls ``_read_pdu_data`` too), the handshake
deadline (checked from ``_is_transport_event``, which its loop calls every turn),
admission at accept, the message bound of wire.DIMSEProvider and the refusals of
``_serve_request``.

The DUL also reads PDUs its own way (header first, bounded, plain and TLS alike, under
the handshake deadline before association), and the listener applies admission.py's
limits at accept. This module is over 400 lines because it is the one place (with
wire.py) allowed to subclass pynetdicom's internals; splitting it would spread them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import queue
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, ClassVar, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.timer import Timer
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

from worklist_mpps.dimse.admission import ConnectionGate, RateLimitedLog, Ticket
from worklist_mpps.dimse.common import refusal, refused_response, requested_sop_class
from worklist_mpps.dimse.pynetdicom_ext import wire
from worklist_mpps.dimse.pynetdicom_ext.echo_fast import EchoFast

log = logging.getLogger("worklist_mpps.dimse")
IDLE_WAIT = 1.0  # most seconds either thread waits with no timer due (a safety net)
MIN_WAIT = 0.005  # least seconds a timer wait lasts: a timer past due does not spin the loop
ASSOCIATE_RQ_LIMIT = 65536  # bytes; a real A-ASSOCIATE-RQ is a few hundred
STA13_POLL = 0.0002  # Sta13: pynetdicom closes the socket once the peer sent nothing more
HANDSHAKE_TIMEOUT = 5.0  # default seconds from accept to a whole A-ASSOCIATE-RQ
RECV_CHUNK = 65536
DROPPED = RateLimitedLog(log)  # one line per dropped connection, a flood summarised
ABORTED = RateLimitedLog(log)
REFUSED = RateLimitedLog(log)


def _due_in(timer: Timer) -> float:
    """Seconds until a running pynetdicom Timer expires (``remaining`` counts down only
    while it runs: started, not stopped), at most IDLE_WAIT."""
    if timer.timeout is None or timer._start_time is None or timer._end_time is not None:
        return IDLE_WAIT
    return min(timer.remaining, IDLE_WAIT)


class WakingQueue(queue.Queue):
    """A queue that calls ``wake`` after every put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def _put(self, item) -> None:  # noqa: ANN001
        super()._put(item)
        self._wake()


class ClosableQueue(WakingQueue):
    """A WakingQueue whose blocking get gives up once it is closed and empty."""

    closed = False

    def close(self) -> None:
        with self.not_empty:
            self.closed = True
            self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: float | None = None):  # noqa: ANN201
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.not_empty:
            while not self._qsize():
                remaining = None if deadline is None else deadline - time.monotonic()
                if self.closed or not block or (remaining is not None and remaining <= 0):
                    raise queue.Empty
                self.not_empty.wait(remaining)
            item = self._get()
            self.not_full.notify()
            return item


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, blocking in select() instead of sleeping."""

    to_user_queue: ClosableQueue  # closed when the connection ends (see __init__)
    fast_path: bool = True  # False: pynetdicom's own polling loop (set_fast_path)

    def __init__(self, assoc: Association, wake_assoc: Callable[[], None]) -> None:
        super().__init__(assoc)
        self._pipe: tuple[int, int] | None = None
        self._pipe_lock = threading.Lock()  # no poke into a closed (maybe reused) descriptor
        self.event_queue = WakingQueue(self._poke)
        self.to_provider_queue = WakingQueue(self._poke)
        # closed when the connection ends: an acceptor waiting for the A-ASSOCIATE-RQ of a
        # peer that hung up gives up at once instead of holding its slot for acse_timeout
        self.to_user_queue = ClosableQueue(wake_assoc)
        self._wake_assoc = wake_assoc
        self.handshake_deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        self._tls_done = False
        self._connected = False  # left Sta1 once: a later Sta1 means the connection closed
        self.owner: int | None = None  # the thread running this loop (the association's)
        self.ended = False  # the loop has stopped: connection closed, killed or aborted
        self._until: float | None = None  # monotonic time a pump's wait ends at

    def _poke(self) -> None:
        if threading.get_ident() == self.owner:
            return  # this thread's own put: its loop looks at the queues before waiting
        with self._pipe_lock:
            if self._pipe is not None:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                    os.write(self._pipe[1], b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self._poke()

    def _wait(self) -> None:
        """Block until the socket is readable, something is queued or a tick passes."""
        sock = getattr(self.socket, "socket", None)
        if self.state_machine.current_state == "Sta13" or sock is None or sock.fileno() < 0:
            time.sleep(STA13_POLL)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # TLS data already decrypted and buffered
        if self.to_provider_queue.qsize() or self.event_queue.qsize():
            return
        pipe = self._pipe
        assert pipe is not None  # run_reactor's loop, the one caller, has it open
        try:
            readable, _, _ = select.select([sock, pipe[0]], [], [], self._wait_limit())
        except (OSError, ValueError):
            time.sleep(STA13_POLL)  # socket closed under us: the next look reports it
            readable = [pipe[0]]
        if pipe[0] in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(pipe[0], 4096)

    def _wait_limit(self) -> float:
        """Seconds until the next timer this loop looks at is due: the ARTIM and idle
        timers while running (pynetdicom's Timer: ``remaining`` counts down only then), the
        handshake deadline before the association, and the end of the current pump."""
        limit = min(_due_in(self.artim_timer), _due_in(self._idle_timer))
        if self._before_association():
            limit = min(limit, self.handshake_deadline - time.monotonic())
        if self._until is not None:
            limit = min(limit, self._until - time.monotonic())
        return max(limit, MIN_WAIT)

    def _read_pdu_data(self) -> None:
        """pynetdicom's PDU read, restructured: the 6-byte PDU header is read first, from
        a plain or a TLS socket alike, and decides whether the rest is read at all.

        - A PDU longer than the Maximum Length this side announced (PS3.8 D.1), or an
          A-ASSOCIATE-RQ (which that length does not bind) over ASSOCIATE_RQ_LIMIT, is
          not read but aborted with reason "invalid PDU parameter value" (PS3.8 9.3.8).
        - Before the association (Sta2) every read ends at the handshake deadline.
        - Failures are one warning line, never a traceback.
        """
        sock: socket.socket | None = getattr(self.socket, "socket", None)
        if sock is None:
            self.event_queue.put("Evt17")
            return
        deadline = self.handshake_deadline if self._before_association() else None
        saved = sock.gettimeout()
        try:
            if isinstance(sock, ssl.SSLSocket) and not self._tls_done:
                self._settimeout(sock, deadline, saved)
                sock.do_handshake()  # in this thread, not in the listener's (PS3.15 B.1)
                self._tls_done = True
            header = self._recv(sock, 6, deadline, saved)
            if len(header) < 6:
                if header:
                    self._dropped(f"{len(header)} bytes of a PDU header, then closed")
                self.event_queue.put("Evt17")  # the peer closed the connection
                return
            pdu_type, length = header[0], int.from_bytes(header[2:6], "big")
            if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
                self._dropped(f"unknown PDU type 0x{pdu_type:02X}")
                self.event_queue.put("Evt19")  # unrecognised PDU: A-ABORT (PS3.8 9.3.1)
                return
            cap = self._pdu_cap(pdu_type)
            if cap and length > cap:
                self._abort(
                    f"PDU type 0x{pdu_type:02X} of {length} bytes, more than the {cap} allowed",
                    reason=0x06,
                )
                return
            body = self._recv(sock, length, deadline, saved)
        except (OSError, ValueError) as exc:  # timeouts, resets, TLS failures
            self._dropped(
                f"{exc.__class__.__name__}: {exc}"
                + (
                    " (handshake_timeout)"
                    if deadline is not None and time.monotonic() >= deadline
                    else ""
                )
            )
            self.event_queue.put("Evt17")
            return
        finally:
            if self.socket is not None and self.socket.socket is sock:
                with contextlib.suppress(OSError):
                    sock.settimeout(saved)
        if len(body) != length:
            self._dropped(f"PDU of {length} bytes cut off after {len(body)}")
            self.event_queue.put("Evt17")
            return
        try:
            # annotated bytearray, but pynetdicom's _decode_pdu starts with bytes(bytestream)
            pdu, event = self._decode_pdu(cast(bytearray, header + body))
        except Exception as exc:  # noqa: BLE001 - whatever a hostile PDU makes pynetdicom raise
            self._dropped(f"undecodable PDU type 0x{pdu_type:02X}: {exc.__class__.__name__}: {exc}")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _pdu_cap(self, pdu_type: int) -> int:
        """Largest acceptable PDU length of this type (0: none)."""
        if pdu_type == 0x04:  # P-DATA-TF: the announced Maximum Length, else the message cap
            limit = self.assoc.acceptor.maximum_length or 0
            message = getattr(self.assoc.dimse, "max_message_size", 0)
            return limit or (message + ASSOCIATE_RQ_LIMIT if message else 0)
        return ASSOCIATE_RQ_LIMIT  # association and release PDUs are small

    @staticmethod
    def _settimeout(sock: socket.socket, deadline: float | None, default: float | None) -> None:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("handshake_timeout reached")
            sock.settimeout(remaining)
        else:
            sock.settimeout(default)

    def _recv(
        self, sock: socket.socket, size: int, deadline: float | None, default: float | None
    ) -> bytes:
        """``size`` bytes, fewer if the peer closes; each wait bounded by the socket's
        timeout, and all of them by ``deadline``."""
        chunks, got = [], 0
        while got < size:
            self._settimeout(sock, deadline, default)
            chunk = sock.recv(min(size - got, RECV_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _dropped(self, why: str) -> None:
        address = self.assoc.requestor.address
        DROPPED.warning("Connection from %s dropped: %s", address, why[:300])

    def _before_association(self) -> bool:
        """No A-ASSOCIATE-RQ received yet: Sta2 (PS3.8 9.2.1), or Sta1 before the state
        machine has taken the connection's Evt5."""
        return self.state_machine.current_state in ("Sta1", "Sta2")

    def _check_handshake_deadline(self) -> None:
        """A connection that has not sent a whole A-ASSOCIATE-RQ (TLS handshake included)
        within ``handshake_timeout`` of its accept is closed, so that idle or stalled
        connections cannot hold the server's resources (admission.py)."""
        if (
            self._before_association()
            and time.monotonic() >= self.handshake_deadline
            and self.socket is not None
            and self.socket.socket is not None
        ):
            self._dropped("no A-ASSOCIATE-RQ within the handshake_timeout")
            self.socket.close()  # Evt17: the state machine goes to Sta1

    def _abort(self, why: str, reason: int = 0x00) -> None:
        """A-ABORT (service-provider, reason not specified) bypassing the state machine, as
        pynetdicom's reactor does when it fails, and stop both threads."""
        req = self.assoc.requestor
        ABORTED.warning("Association from %s@%s aborted: %s", req.ae_title, req.address, why[:300])
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = reason
        if self.socket is not None and self.socket.socket is not None:
            self.socket.send(abort_pdu.encode())
            self.socket.close()
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def _is_transport_event(self) -> bool:
        """pynetdicom's, after the checks the event-driven loop makes each turn, so that
        pynetdicom's own loop (``fast_path`` off) makes them too."""
        if not self.fast_path:
            self._check_handshake_deadline()
            if self.state_machine.current_state != "Sta1":
                self._connected = True
            elif self._connected:
                self.to_user_queue.close()
        return super()._is_transport_event()

    def _stock_run_reactor(self) -> None:
        """pynetdicom's own polling loop; what it lets end the thread with a traceback (a
        message its state machine cannot take) aborts the association instead."""
        try:
            super().run_reactor()
        except Exception as exc:  # noqa: BLE001 - as in run_reactor below
            self._abort(f"{exc.__class__.__name__}: {exc}")
        finally:
            self.to_user_queue.close()
            self._wake_assoc()

    def run_reactor(self) -> None:
        """pynetdicom's ``DULServiceProvider.run_reactor`` with ``_wait`` for its sleep (the
        DUL's own thread: only with ``fast_path`` off, or when something starts it)."""
        if not self.fast_path:
            self._stock_run_reactor()
            return
        self.open()
        try:
            self.pump(_never)
        finally:
            self.close()

    def open(self) -> None:
        """Make the calling thread the one running this loop (``pump``)."""
        self.owner = threading.get_ident()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._idle_timer.start()
        if not self.assoc._dul_ready.is_set():
            self.assoc._dul_ready.set()

    def close(self) -> None:
        """The loop has ended: the user queue closed, the wake-up pipe too."""
        self.ended = True
        self.to_user_queue.close()
        with self._pipe_lock:
            pipe, self._pipe = self._pipe, None
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])
        self._wake_assoc()

    def pump(self, until: Callable[[], object], timeout: float | None = None) -> None:
        """Run the loop, on its owner thread, until ``until()`` is true, the loop ends or
        ``timeout`` seconds have passed; waiting (``_wait``) only after a turn that found
        nothing to do."""
        self._until = None if timeout is None else time.monotonic() + timeout
        idle = False
        try:
            while not self.ended and not until():
                if idle:
                    if self._until is not None and time.monotonic() >= self._until:
                        return
                    self._wait()
                idle = not self._turn()
        finally:
            self._until = None

    def _turn(self) -> bool:
        """One turn of pynetdicom's reactor loop; False when there was nothing to do."""
        if self._kill_thread:
            self.ended = True
            return True
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")
        self._check_handshake_deadline()
        try:
            if self._process_recv_primitive():
                pass
            elif self._is_transport_event():
                self._idle_timer.restart()
            event = self.event_queue.get(block=False)
        except queue.Empty:
            return False
        except Exception as exc:  # noqa: BLE001 - as pynetdicom's reactor
            self._abort(f"{exc.__class__.__name__} reading from the peer: {exc}")
            self.ended = True
            return True
        try:
            self.state_machine.do_action(event)
            if self.state_machine.current_state == "Sta1":  # connection closed
                self.to_user_queue.close()
        except Exception as exc:  # noqa: BLE001 - see below
            # pynetdicom's reactor lets this end the thread with a traceback; a
            # message its state machine or DIMSE decoder cannot take (an unknown
            # command, an event invalid in this state) aborts the association
            self._abort(f"{exc.__class__.__name__} on {event}: {exc}")
            self.ended = True
        return True

    def receive_pdu(self, wait: bool = False, timeout: float | None = None):  # noqa: ANN201
        """pynetdicom's, run on the loop's owner thread: a wait for a primitive turns
        the loop until the user queue has one."""
        if wait and self.owner is not None and threading.get_ident() == self.owner:
            queued = self.to_user_queue
            self.pump(lambda: queued.qsize() or queued.closed, timeout)
            wait = False
        return super().receive_pdu(wait, timeout)


def _never() -> bool:
    return False


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor waits for work instead of polling."""

    # SOP Class -> DIMSE operations served (set by the request handler); None: no check
    operations: Mapping[str, Collection[str]] | None = None
    dul: EventDrivenDUL  # created in __init__, in place of pynetdicom's
    dimse: wire.DIMSEProvider

    def __init__(self, ae, mode: str) -> None:  # noqa: ANN001
        super().__init__(ae, mode)
        _unlink(self.dul)  # pynetdicom's DUL, replaced below and never started
        self._wake = threading.Event()
        self.dul = EventDrivenDUL(self, self._wake.set)  # pynetdicom's one is never started
        self.dimse = wire.DIMSEProvider(self)
        self.dimse.msg_queue = WakingQueue(self._wake.set)
        # the setters copy these into the DUL's ARTIM and idle timers
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    ticket: Ticket | None = None  # admission.py: released when the association ends

    def kill(self) -> None:
        """pynetdicom's, for a DUL loop run by this association's thread (``run_reactor``):
        on that thread the loop turns until the DUL may stop (Sta1) instead of sleeping
        for a DUL thread to get there; from another thread, it waits for this one."""
        self._wake.set()
        if self.dul.owner is None:
            super().kill()
            return
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False
        self._is_paused = True
        self.dul._poke()
        if threading.get_ident() == self.dul.owner:
            self.dul.pump(self.dul.stop_dul)
            return
        while self.is_alive() and not self.dul.ended and not self.dul.stop_dul():
            time.sleep(0.01)

    def run_reactor(self) -> None:
        """pynetdicom's, with this thread running the DUL's loop too (``fast_path``): one
        thread per association instead of two, and no hand-off between them for each PDU.
        Wherever pynetdicom's association thread waits for its DUL thread, this one turns
        the DUL loop (``EventDrivenDUL.pump``)."""
        if not self.fast_path:
            super().run_reactor()
            return
        self.dul.open()
        self._started_dul = True  # pynetdicom's run_reactor starts no DUL thread
        try:
            super().run_reactor()
            self.dul.pump(self.dul.stop_dul)  # as the DUL thread went on until told to stop
        finally:
            self.dul.close()

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.ticket is not None:
                self.ticket.release()
            if not self.dul.is_alive():  # both threads done: nothing runs on these any more
                for part in (self.dul, self.acse, self.dimse, self.dul.socket):
                    _unlink(part)
                for user in (self.requestor, self.acceptor):
                    vars(user)["assoc"] = None  # annotated Association
                vars(self).pop("abort", None)  # ACSE sets it to a method of self

    def _serve_request(self, msg, context_id: int) -> None:  # noqa: ANN001
        """Dispatch a request, after the checks pynetdicom does not make.

        A request whose data set wire.DIMSEProvider discarded for max_message_size gets
        its resource-limitation status here, in turn with the other requests.

        A request lacking a required command element: pynetdicom drops it with a log
        line, leaving the peer to wait for its DIMSE timeout; abort instead, so the peer
        learns at once that the message was not acceptable (PS3.7 9.3, 10.3).

        A request naming another SOP Class than its presentation context's, or an
        operation that SOP Class does not serve (:func:`refusal`): pynetdicom hands it
        to the service class of the SOP Class it names, which answers with another
        message type (an N-CREATE naming a Storage class got a C-STORE-RSP), or raises
        and aborts, or never answers. Answer it with a response of its own type and the
        refusal's status instead; the association goes on.
        """
        oversize = wire.refusal_of(msg)
        if oversize is not None:
            response = wire.refusal_response(msg, oversize)
            if response is not None:  # None: a response or C-CANCEL, nothing to answer
                self.dimse.send_msg(response, context_id)
            return
        if self._sent_release:
            super()._serve_request(msg, context_id)  # logs and ignores it
            return
        if not msg.is_valid_request:
            missing = [k for k in msg.REQUEST_KEYWORDS if getattr(msg, k, None) is None]
            log.warning(
                "%s from %s@%s without %s: association aborted",
                msg.msg_type,
                self.requestor.ae_title,
                self.requestor.address,
                ", ".join(missing),
            )
            self.abort()
            return
        context = self._accepted_cx.get(context_id)
        if context is not None and self.operations is not None:
            refused = refusal(
                msg.msg_type,
                requested_sop_class(msg),
                str(context.abstract_syntax),
                self.operations,
            )
            if refused is not None:
                self._refuse(msg, context_id, *refused)
                return
        super()._serve_request(msg, context_id)

    def _refuse(self, msg, context_id: int, status: int, why: str) -> None:  # noqa: ANN001
        """Answer ``msg`` with a response of its own type carrying ``status``
        (common.refused_response, shared with echo_fast.py)."""
        rsp = refused_response(msg, context_id, status, why, self.requestor)
        self.dimse.send_msg(rsp, context_id)

    fast_path: bool = True  # False: pynetdicom's own reactors (config dimse_fast_path)

    def set_fast_path(self, on: bool) -> None:
        """Event-driven reactors and wire.py's shortcuts (True), or pynetdicom's own."""
        self.fast_path = self.dul.fast_path = self.dimse.fast_path = on

    def _run_reactor(self) -> None:
        """pynetdicom's ``Association._run_reactor``, waiting on ``_wake`` for its sleep."""
        if not self.fast_path:
            super()._run_reactor()
            return
        self._is_paused = False
        dul, messages, users = self.dul, self.dimse.msg_queue, self.dul.to_user_queue
        one_thread = dul.owner is not None
        held = 0  # primitives the user queue held when the wait began

        def wanted() -> bool:  # what this loop looks at has come (or the loop is to end)
            return bool(messages.qsize() or users.qsize() > held or self._kill)

        while not self._kill:
            if not messages.qsize():
                if one_thread:
                    held = users.qsize()
                    dul.pump(wanted, _due_in(dul._idle_timer))
                else:
                    self._wake.wait(max(_due_in(dul._idle_timer), MIN_WAIT))
            self._wake.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                assert context_id is not None  # queued as (None, None) or (context, msg)
                self._serve_request(msg, context_id)

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if dul.ended if one_thread else not dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("Network timeout reached: aborting the association")
                self.abort()
                self.kill()
                return


def _nothing() -> None:
    """The wake-up of a queue whose reader has ended."""


def _unlink(part: object) -> None:
    """Drop ``part``'s references back to its association (and a DUL's state machine's to
    the DUL): pynetdicom's association, DUL, ACSE, DIMSE provider, socket and service
    users all point at each other, so that without this every ended association waits
    for the cycle collector (pynetdicom's listener called ``gc.collect()`` every 60
    passes for it). With them dropped, reference counting frees it at once."""
    if part is None:
        return
    if hasattr(part, "_assoc"):
        part._assoc = None
    machine = getattr(part, "state_machine", None)
    if machine is not None:
        machine.dul = None
    for name in ("event_queue", "to_provider_queue"):  # WakingQueues calling part._poke
        waking = getattr(part, name, None)
        if isinstance(waking, WakingQueue):
            waking._wake = _nothing
    if isinstance(part, threading.Thread) and not part.is_alive():
        part._target = None  # type: ignore[attr-defined]  # an unstarted Thread keeps it


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's RequestHandler, creating :class:`EventDrivenAssociation`s."""

    # SOP Class -> DIMSE operations served, for EventDrivenAssociation._serve_request
    operations: ClassVar[Mapping[str, Collection[str]] | None] = None
    server: GatedAssociationServer

    def _create_association(self) -> Association:
        # as pynetdicom's RequestHandler._create_association, with the class above
        assoc = EventDrivenAssociation(self.ae, "acceptor")
        assoc.operations = self.operations
        assoc.set_fast_path(self.server.fast_path)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # pynetdicom deep-copies these for every association; its negotiation only reads
        # the acceptor's contexts (presentation.negotiate_as_acceptor), so a list will do
        assoc.acceptor.supported_contexts = (
            list(self.server.contexts)
            if self.server.fast_path
            else copy.deepcopy(self.server.contexts)
        )
        assoc.requestor.address_info = self.remote
        assoc.dimse.max_message_size = self.server.max_message_size
        assoc.dul.handshake_deadline = (
            self.server.deadline or time.monotonic() + self.server.handshake_timeout
        )
        assoc.ticket = self.server.admitting
        if assoc.ticket is not None:
            assoc.ticket.evict = functools.partial(_evict, self.request)
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                # a notification event has a list of (handler, args), an intervention
                # event one pair (AssociationServer.bind); the annotation is their union
                for handler, args in cast(
                    "list[tuple[Callable[..., Any], list[Any] | None]]", handlers
                ):
                    assoc.bind(event, handler, args)
        return assoc


def _evict(sock: socket.socket) -> None:
    """End a pending connection from another thread: its DUL sees the end of the stream
    (shutdown leaves the descriptor to the thread that owns it)."""
    DROPPED.warning(
        "Connection dropped before associating: max_pending_connections "
        "reached, the oldest pending connection makes room"
    )
    with contextlib.suppress(OSError):  # an SSLSocket's shutdown would drop its state
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class GatedAssociationServer(AssociationServer):
    """pynetdicom's AssociationServer with the admission rules of admission.py applied
    at accept, and TLS handshakes done in each connection's own thread (within its
    handshake_timeout) instead of blocking the listener."""

    gate: ConnectionGate | None = None
    request_queue_size = 256  # listen backlog; socketserver's 5 drops SYNs under a flood
    handshake_timeout = HANDSHAKE_TIMEOUT
    max_message_size = 0
    fast_path = True  # False: a thread per connection sets it up, as pynetdicom's servers
    echo_fast: EchoFast | None = None  # Verification-only associations (echo_fast.py)
    _setting_up = threading.local()

    @property
    def deadline(self) -> float | None:
        """The handshake deadline of the connection this thread sets up after the
        Verification fast path left it (None: from now)."""
        return getattr(self._setting_up, "deadline", None)

    @property
    def admitting(self) -> Ticket | None:
        """The ticket of the connection this thread is setting up."""
        return getattr(self._setting_up, "ticket", None)

    @admitting.setter
    def admitting(self, ticket: Ticket | None) -> None:
        self._setting_up.ticket = ticket

    def service_actions(self) -> None:
        """Nothing: pynetdicom's ran a full ``gc.collect()`` every 60 passes of the listener
        loop (a stop-the-world pause of tens of ms with a large heap, issue 18) because
        ended associations were only freed by the cycle collector; EventDrivenAssociation
        breaks those cycles when it ends (``_unlink``) and server.py freezes the start-up
        heap, so that the generational collector's own passes stay small."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None  # bound in __init__; serve_forever runs after that
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        ticket = None
        if self.gate is not None:
            ticket, why = self.gate.admit(client_address[0])
            if ticket is None:
                REFUSED.warning("Connection from %s refused: %s", client_address[0], why)
                self.shutdown_request(request)
                return
        if (
            self.fast_path
            and self.echo_fast is not None
            and not self.ssl_context
            and self.echo_fast.may_answer(request)
        ):
            threading.Thread(
                target=self._echo_first, args=(request, client_address, ticket), daemon=True
            ).start()
            return
        if self.fast_path:
            self._set_up(request, client_address, ticket)
            return
        threading.Thread(
            target=self._set_up_thread, args=(request, client_address, ticket), daemon=True
        ).start()

    def _set_up(self, request, client_address, ticket: Ticket | None) -> None:  # noqa: ANN001
        self.admitting = ticket
        try:
            self.finish_request(request, client_address)
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        finally:
            self.admitting = None

    def _echo_first(
        self, request: socket.socket, client_address: tuple[str, int], ticket: Ticket | None
    ) -> None:
        """A Verification-only association served by echo_fast.py, else the ordinary path
        from this thread, within the same handshake deadline."""
        assert self.echo_fast is not None  # set before the listener started
        deadline = time.monotonic() + self.handshake_timeout
        if ticket is not None:
            ticket.evict = functools.partial(_evict, request)
        try:
            if self.echo_fast.serve(request, client_address, ticket, deadline):
                return
        except Exception:  # noqa: BLE001 - as _set_up_thread: one connection's failure
            if ticket is not None:
                ticket.release()
            self.handle_error(request, client_address)
            self.shutdown_request(request)
            return
        self._setting_up.deadline = deadline
        try:
            self._set_up_thread(request, client_address, ticket)
        finally:
            self._setting_up.deadline = None

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001, ARG002
        """One log line for a connection whose set-up failed (socketserver's own prints a
        traceback to stderr); the listener goes on."""
        exc = sys.exc_info()[1]
        log.error(
            "Connection from %s failed: %s: %s",
            client_address[0] if client_address else "?",
            type(exc).__name__,
            str(exc)[:200],
        )

    def _set_up_thread(
        self,
        request: socket.socket,
        client_address: tuple[str, int],
        ticket: Ticket | None,
    ) -> None:
        """As ThreadingMixIn.process_request_thread."""
        try:
            self._set_up(request, client_address, ticket)
        except Exception:  # noqa: BLE001
            self.handle_error(request, client_address)
            self.shutdown_request(request)


# What this module relies on of pynetdicom's internals is listed in internals.py.
