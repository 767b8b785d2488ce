"""Who may hold a connection to the DICOM port: association slots, connections still in
their handshake, and connections per source address, counted apart.

A connection is *pending* from TCP accept until its A-ASSOCIATE-RQ has arrived whole
(PS3.8 9.1.1, state Sta2), and *associated* from then on. Pending connections do not
take association slots; they are dropped after ``handshake_timeout`` (reactor.py) and
bounded by ``max_pending_connections``: when that many are pending, a new connection
evicts the oldest pending one, so that a flood of idle connections from many addresses
holds the handshake table only until newer connections push it out, and a modality that
sends its A-ASSOCIATE-RQ at once still gets through. Association slots
(``max_associations``) are handed out when the A-ASSOCIATE-RQ arrives; a request with no
slot free is rejected with "local-limit-exceeded" (PS3.8 9.3.4, Table 9-21). Every
connection of one source address, pending or associated, counts against
``max_connections_per_address``.

Plain logic, no pynetdicom: reactor.py and server.py call it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable


class Ticket:
    """One admitted connection; ``promote`` when its A-ASSOCIATE-RQ arrived, ``release``
    when it ends (both idempotent)."""

    def __init__(self, gate: ConnectionGate, address: str) -> None:
        self.gate = gate
        self.address = address
        self.associated = False
        self.released = False
        self.evicted = False
        self.evict: Callable[[], None] | None = None  # ends the connection (set by reactor)

    def promote(self) -> bool:
        return self.gate._promote(self)

    def release(self) -> None:
        self.gate._release(self)


class ConnectionGate:
    """Counts connections and association slots of one DICOM server (all its listeners)."""

    def __init__(self, max_associations: int, max_pending: int, per_address: int) -> None:
        self.max_associations = max_associations
        self.max_pending = max_pending  # 0: no cap
        self.per_address = per_address  # 0: no cap
        self.pending = 0
        self.associated = 0
        self.by_address: Counter[str] = Counter()
        self._waiting: OrderedDict[Ticket, None] = OrderedDict()  # pending, oldest first
        self._lock = threading.Lock()

    def admit(self, address: str) -> tuple[Ticket | None, str]:
        """A ticket for a new connection from ``address``, or None and the reason; when
        ``max_pending`` connections are pending, the oldest of them is evicted."""
        evicted = None
        with self._lock:
            if self.per_address and self.by_address[address] >= self.per_address:
                return None, (
                    f"{self.by_address[address]} connections from this address "
                    f"already (max_connections_per_address)"
                )
            if self.max_pending and self.pending >= self.max_pending:
                if not self._waiting:
                    return None, (
                        f"{self.pending} connections not yet associated already "
                        f"(max_pending_connections)"
                    )
                evicted, _ = self._waiting.popitem(last=False)
                evicted.evicted = True
                self.pending -= 1  # no longer waits for a slot; its thread ends it
            self.pending += 1
            self.by_address[address] += 1
            ticket = Ticket(self, address)
            self._waiting[ticket] = None
        if evicted is not None and evicted.evict is not None:
            evicted.evict()
        return ticket, ""

    def _promote(self, ticket: Ticket) -> bool:
        with self._lock:
            if ticket.associated or ticket.released or ticket.evicted:
                return ticket.associated
            if self.associated >= self.max_associations:
                return False
            self.pending -= 1
            self._waiting.pop(ticket, None)
            self.associated += 1
            ticket.associated = True
            return True

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            if ticket.associated:
                self.associated -= 1
            elif not ticket.evicted:
                self.pending -= 1
                self._waiting.pop(ticket, None)
            self.by_address[ticket.address] -= 1
            if self.by_address[ticket.address] <= 0:
                del self.by_address[ticket.address]


class RateLimitedLog:
    """Warnings of one kind: at most ``burst`` lines per ``window`` seconds; what is left
    out is counted and reported with the next line that gets through, so a flood of
    refused connections cannot fill the log."""

    def __init__(self, logger: logging.Logger, burst: int = 10, window: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._start = 0.0
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window:
                self._start, self._count = now, 0
            self._count += 1
            if self._count > self.burst:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg += " (and %d more like it not logged)"
            args = (*args, suppressed)
        self.logger.warning(msg, *args)
