"""uvicorn internals, in this module only: a request-head timeout and a connection cap.

uvicorn's h11 protocol has no timeout for reading a request head: a client that
sends its headers a byte at a time ("slowloris"), or nothing at all, holds its
connection and a file descriptor for ever, and enough of them exhaust the process's
descriptors, the DICOM port's included. ``guarded_protocol`` returns a subclass of
uvicorn's ``H11Protocol`` that

- closes a connection whose request head is not complete ``header_timeout`` seconds
  after the connection, or the head's first byte on a kept-alive connection
  (408 Request Timeout when part of a head came, RFC 9110 15.5.9; else just closed);
- keeps at most ``max_connections``: one more makes room by closing the connection
  that has waited longest for a request head (slow, silent or idle keep-alive);
  when every connection is busy with a request, the new one is closed.

What it relies on (tests/test_i12_http.py::test_uvicorn_internals_we_rely_on checks
each): ``H11Protocol.connection_made / data_received / on_response_complete /
connection_lost``, the attributes ``conn`` (an ``h11.Connection``), ``transport``,
``loop``, ``client``, ``cycle`` (``response_complete``) and ``connections`` (the
server's set of protocols), and ``uvicorn.Config(http=<class>)``.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("worklist_mpps.http")


def _request_timeout(what: str) -> bytes:
    """A 408 Request Timeout (RFC 9110 15.5.9) that closes the connection."""
    body = f"request {what} not complete in time".encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )


REQUEST_TIMEOUT = _request_timeout("head")
BODY_TIMEOUT = _request_timeout("body")


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with request-head and request-body deadlines and a cap on connections."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        self._waiting_since = self.loop.time()
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._head_started = True
            if self._head_timer is None:
                self._arm()
        super().data_received(data)
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._disarm()
        self._watch_body()

    def on_response_complete(self) -> None:
        self._stop_body_timer()
        super().on_response_complete()
        self._waiting_since = self.loop.time()
        self._head_started = bool(self.conn.trailing_data[0])
        if self._head_started and self.conn.their_state is h11.IDLE:
            self._arm()  # a pipelined head arrived in part: its clock runs now

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_body_timer()
        super().connection_lost(exc)

    # --- the deadline ------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        answer = self._head_started and self.conn.our_state is h11.IDLE  # part of a head came
        self._drop("head", "http_header_timeout", self.header_timeout, answer, REQUEST_TIMEOUT)

    # --- the body deadline -------------------------------------------------------------
    # A client that sends its head at once and then trickles its body holds a connection
    # (and a request in the application) as a slow head would: its body must be complete
    # ``body_timeout`` seconds after its head.

    def _watch_body(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)
        else:
            self._stop_body_timer()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        answer = self.conn.our_state is h11.SEND_RESPONSE  # no response begun: say why
        self._drop("body", "http_body_timeout", self.body_timeout, answer, BODY_TIMEOUT)

    def _drop(self, part: str, setting: str, seconds: float, answer: bool, rsp: bytes) -> None:
        """Close a connection whose request ``part`` missed its deadline, with ``rsp``
        (a 408) first when ``answer``; one log line."""
        log.warning(
            "HTTP client %s: no complete request %s within %g s (%s): connection closed",
            self._peer(),
            part,
            seconds,
            setting,
        )
        if answer:
            self.transport.write(rsp)
        self.transport.close()

    # --- the cap -----------------------------------------------------------------------

    def _waiting(self) -> bool:
        """Waiting for a request head: nothing of ours in flight on this connection."""
        return (
            self.conn.their_state is h11.IDLE
            and not self.transport.is_closing()
            and (self.cycle is None or self.cycle.response_complete)
        )

    def _make_room(self) -> None:
        others = [
            c
            for c in self.connections
            if c is not self and isinstance(c, GuardedH11Protocol) and c._waiting()
        ]
        victim = min(others, key=lambda c: c._waiting_since) if others else self
        log.warning(
            "HTTP: %d connections (http_max_connections %d): closing %s, %s",
            len(self.connections),
            self.max_connections,
            victim._peer(),
            "the longest waiting for a request" if others else "the new one",
        )
        victim._disarm()
        victim.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"


def guarded_protocol(
    header_timeout: float, max_connections: int, body_timeout: float = 60.0
) -> type[GuardedH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
        },
    )
