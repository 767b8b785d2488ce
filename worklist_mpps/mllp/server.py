"""The MLLP listener of the HL7 v2 order feed (issue 14): a thread running an asyncio loop
that accepts connections on ``hl7_bind:hl7_port`` and hands each message to the service
layer (:mod:`worklist_mpps.services.orders`).

MLLP (HL7 v2.5.1 Appendix C, Minimal Lower Layer Protocol Release 1) frames a message as
0x0B message 0x1C 0x0D; the framing is python-hl7's asyncio streams
(:mod:`hl7.mllp.streams`). Acknowledgment is original mode (HL7 v2.5.1 2.9.2): a sender
waits for the ACK of a message before it sends the next one, so each connection handles
one message at a time, and the ACK is written only once the service has committed
(AA) or recorded the refusal (AE/AR). The service calls block (SQLAlchemy): they run in a
bounded thread pool, never on the loop.

Input that is no message gets an AR built by ``orders.refuse`` and the connection is
closed, since the position in the stream is lost: bytes that do not start with 0x0B,
a message over ``hl7_max_message_size`` (the reader's limit bounds memory). A connection
with no complete message within ``hl7_idle_timeout`` is closed, as are connections
beyond ``hl7_max_connections``. Each connection logs one line when it opens and one when
it closes (address, messages, why); each message is logged once, by the service.

On SQLite the connections' messages wait in one queue that the single service thread
drains whole (up to BATCH) into ``orders.receive_many``: one commit for the messages that
arrived meanwhile (group commit); each ACK is still written only after that commit.

The reader that checks the framing (and the internals it relies on) is in framing.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from hl7.mllp import (  # type: ignore[import-untyped]  # python-hl7 ships no types
    HL7StreamProtocol,
    HL7StreamWriter,
    InvalidBlockError,
)
from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.context import AppContext
from worklist_mpps.mllp.framing import HEAD, FramedReader
from worklist_mpps.services import orders
from worklist_mpps.services.health import describe_db_error
from worklist_mpps.sockets import bind_tcp

log = logging.getLogger("worklist_mpps.mllp")

LINGER = 2.0  # seconds a refused sender's remaining bytes are read and dropped (see _close)
MAX_WORKERS = 8  # service calls at once on PostgreSQL (one message per connection)
BATCH = 32  # messages at most in one group commit (SQLite)


@dataclass(eq=False)
class _Connection:
    where: str  # host:port of the sender
    task: asyncio.Task | None
    busy: bool = False  # a message is being processed or its ACK written
    messages: int = 0
    opened: float = field(default_factory=time.monotonic)


class _Refused(Exception):
    """Input answered with an AR, after which the connection closes."""

    def __init__(self, raw: bytes, reason: str) -> None:
        super().__init__(reason)
        self.raw = raw
        self.reason = reason


class MLLPServer:
    """``start`` binds (an OSError for the caller: one line, its own exit code) and runs
    the loop in its thread; ``stop`` stops accepting, lets the messages in progress be
    committed and acknowledged, closes the connections and joins the thread."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.host, self.port = cfg.hl7_bind, cfg.hl7_port
        # SQLite takes one writer at a time, and a writer kept waiting sleeps in SQLite's
        # busy handler by steps of up to 100 ms: one thread queues the messages in order
        # instead (ACK p95 38 ms rather than 117 ms at the same rate, 4 senders).
        # PostgreSQL commits several at once.
        # That thread takes every message waiting at once (up to BATCH) and commits them
        # together (orders.receive_many: one COMMIT, one fsync, each message in a
        # SAVEPOINT), so messages arriving while it commits share the next commit.
        self._batching = ctx.db.is_sqlite
        workers = 1 if self._batching else min(cfg.hl7_max_connections, MAX_WORKERS)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mllp-db")
        self._waiting: list[tuple[bytes, str, asyncio.Future[orders.Received]]] = []
        self._drainer: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False

    # --- lifecycle (caller's thread) ---------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        sock = bind_tcp(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), name="mllp", daemon=True
        )
        self._thread.start()
        ready.result(timeout)
        cfg = self.ctx.config
        log.info(
            "MLLP listener on %s:%d (at most %d connections, %d bytes a message, idle %g s)",
            self.host,
            self.port,
            cfg.hl7_max_connections,
            cfg.hl7_max_message_size,
            cfg.hl7_idle_timeout,
        )

    def stop(self, grace: float | None = None) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        grace = self.ctx.config.shutdown_grace if grace is None else grace
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(grace), loop).result(grace + 5)
        except Exception as exc:  # noqa: BLE001 - stopping goes on whatever happened
            log.warning("MLLP listener did not stop cleanly: %s", exc or type(exc).__name__)
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(grace + 5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop = self._thread = None

    def _run(self, sock: socket.socket, ready: Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        cfg = self.ctx.config

        # hl7.mllp.start_hl7_server with our reader: its factory fixes HL7StreamReader
        def protocol() -> HL7StreamProtocol:
            # the reader's limit counts the 0x0B start block: one more than the message
            reader = FramedReader(limit=cfg.hl7_max_message_size + 1, loop=loop)
            return HL7StreamProtocol(reader, self._connected, loop=loop)

        try:
            self._server = loop.run_until_complete(loop.create_server(protocol, sock=sock))
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            sock.close()
            loop.close()
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self, grace: float) -> None:
        """Stop accepting; connections waiting for a message close now, those with a
        message in progress once it is committed and acknowledged (up to ``grace``)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning(
                    "MLLP: %d connection(s) still busy after %.0f s: closed", len(pending), grace
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1)
        if self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer], timeout=1)

    # --- connections (loop thread) -----------------------------------------------------

    async def _connected(self, reader: FramedReader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        address, where = str(peer[0]), f"{peer[0]}:{peer[1]}"
        limit = self.ctx.config.hl7_max_connections
        if self._stopping or len(self._connections) >= limit:
            log.warning(
                "MLLP connection from %s refused: %s",
                where,
                "stopping" if self._stopping else f"{limit} open (hl7_max_connections)",
            )
            writer.transport.close()
            return
        conn = _Connection(where, asyncio.current_task())
        self._connections.add(conn)
        log.info("MLLP connection from %s", where)
        why, linger = "closed by the sender", False
        try:
            why = await self._messages(conn, reader, writer, address)
        except _Refused as refused:
            why, linger, conn.busy = refused.reason, True, True
            received = await self._service(orders.refuse, refused.raw, address, refused.reason)
            if received is not None:
                await self._send(writer, received.ack)
        except asyncio.CancelledError:
            why = "server stopping"
        except ConnectionError as exc:
            why = f"connection lost: {exc.strerror or type(exc).__name__}"
        except Exception as exc:  # a bug of ours: its traceback, and the listener goes on
            why = f"internal error: {type(exc).__name__}"
            log.exception("MLLP connection from %s: %s", where, why)
        finally:
            self._connections.discard(conn)
            await self._close(reader, writer, linger)
            log.info(
                "MLLP connection from %s closed after %.1f s, %d message(s): %s",
                where,
                time.monotonic() - conn.opened,
                conn.messages,
                why,
            )

    async def _messages(
        self, conn: _Connection, reader: FramedReader, writer: HL7StreamWriter, address: str
    ) -> str:
        """Read, process and acknowledge messages one at a time; why the connection ends."""
        cfg = self.ctx.config
        while not self._stopping:
            conn.busy = False
            try:
                block = await asyncio.wait_for(reader.readblock(), cfg.hl7_idle_timeout)
            except TimeoutError:
                if reader.buffered:
                    return (
                        f"stalled mid-message after {reader.buffered} bytes "
                        f"(hl7_idle_timeout {cfg.hl7_idle_timeout:g} s)"
                    )
                return f"idle (hl7_idle_timeout {cfg.hl7_idle_timeout:g} s)"
            except asyncio.IncompleteReadError as exc:
                return f"closed by the sender mid-message after {len(exc.partial)} bytes"
            except InvalidBlockError:
                raise _Refused(reader.head(), "no MLLP start block (0x0B)") from None
            except ValueError:
                raise _Refused(
                    reader.overrun_head[1:],
                    f"message over hl7_max_message_size ({cfg.hl7_max_message_size} bytes)",
                ) from None
            if block is None:
                return "closed by the sender"
            conn.busy = True
            received = await self._receive(block, address)
            if received is None:
                return "no answer (the sender resends)"
            if not await self._send(writer, received.ack):
                return "the sender does not read its ACKs"
            conn.messages += 1
        return "server stopping"

    async def _receive(self, raw: bytes, address: str) -> orders.Received | None:
        """orders.receive for one message: on SQLite the message waits with the others for
        the service thread, which takes them all in one batch (see :meth:`_drain`)."""
        if not self._batching:
            return await self._service(orders.receive, raw, address)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[orders.Received] = loop.create_future()
        self._waiting.append((raw, address, answer))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        try:
            return await answer
        except Exception as exc:  # noqa: BLE001 - answered as _service answers it
            return await self._failed(orders.receive, raw, address, exc)

    async def _drain(self) -> None:
        """Hand what waits to orders.receive_many, up to BATCH at a time, until nothing
        waits: the messages arriving during a batch's commit make the next batch."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            messages = [(raw, address) for raw, address, _ in batch]
            try:
                results = await loop.run_in_executor(
                    self._executor, orders.receive_many, self.ctx, messages
                )
            except Exception as exc:  # noqa: BLE001 - each waiting connection answers it
                for _, _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (_, _, answer), result in zip(batch, results, strict=True):
                if not answer.done():
                    answer.set_result(result)

    async def _service(
        self, call: Callable[..., orders.Received], raw: bytes, address: str, *args: str
    ) -> orders.Received | None:
        """``call`` in the pool; its failure as :meth:`_failed` answers it."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, partial(call, self.ctx, raw, address, *args)
            )
        except Exception as exc:  # noqa: BLE001 - answered below
            return await self._failed(call, raw, address, exc)

    async def _failed(
        self, call: Callable[..., orders.Received], raw: bytes, address: str, exc: Exception
    ) -> orders.Received | None:
        """A failure of receive() is answered by refuse() (AR: processing failed for a
        reason unrelated to the content, HL7 v2.5.1 2.9.2); when that fails too (database
        down) nothing is answered, and the sender resends."""
        loop = asyncio.get_running_loop()
        if isinstance(exc, SQLAlchemyError):
            reason = f"database error: {describe_db_error(exc).reason}"
            log.error("MLLP message from %s not processed: %s", address, reason)
        else:  # a bug: receive/refuse answer bad input themselves
            reason = f"internal error: {type(exc).__name__}"
            log.error("MLLP message from %s not processed: %s", address, reason, exc_info=exc)
        if call is orders.refuse:
            return None
        try:
            return await loop.run_in_executor(
                self._executor, partial(orders.refuse, self.ctx, raw, address, reason)
            )
        except Exception as exc:  # noqa: BLE001 - one line, the connection closes
            log.error("MLLP message from %s not answered: %s", address, type(exc).__name__)
            return None

    async def _send(self, writer: HL7StreamWriter, ack: bytes) -> bool:
        """Write one framed ACK; False when the sender does not take it in time."""
        writer.writeblock(ack)
        try:
            await asyncio.wait_for(writer.drain(), self.ctx.config.hl7_idle_timeout)
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _close(self, reader: FramedReader, writer: HL7StreamWriter, linger: bool) -> None:
        """Close; after a refusal, first half-close and drop what the sender still sends
        (for up to LINGER s): closing a socket with unread bytes sends a TCP reset, which
        can destroy the AR before the sender has read it."""
        transport = writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()
            return
        if linger and writer.can_write_eof():
            writer.write_eof()
            deadline = time.monotonic() + LINGER
            try:
                while (left := deadline - time.monotonic()) > 0:
                    if not await asyncio.wait_for(reader.read(HEAD), left):
                        break
            except (TimeoutError, ConnectionError):
                pass
        transport.close()
