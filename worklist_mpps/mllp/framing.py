"""MLLP framing on python-hl7's asyncio streams, answering unframed input at once.

The only code of the order feed that touches internals of other libraries, named here so
that tests/test_mllp_framing.py fails loudly when they change:

- asyncio.StreamReader (CPython 3.11-3.13): ``_buffer`` (the bytearray of received bytes),
  ``_eof``, ``_wait_for_data()`` and ``exception()``; python-hl7 itself subclasses
  StreamReader and reads ``_buffer`` in ``readblock``;
- python-hl7 0.4.5 ``MLLPStreamReader.readblock``: ``readuntil(0x1C 0x0D)`` with the
  reader's limit, clearing the buffer and raising ValueError on a LimitOverrunError, and
  InvalidBlockError for a block that does not start with 0x0B.

Should either change, the listener's answers to garbage, unframed and oversize input
(AR at once, the head of the input kept) are what breaks.
"""

from __future__ import annotations

import asyncio

from hl7.mllp import (  # type: ignore[import-untyped]  # python-hl7 ships no types
    HL7StreamReader,
    InvalidBlockError,
)

START_BLOCK = b"\x0b"
HEAD = 65536  # bytes of refused input handed to refuse() (and kept with its AR)


class FramedReader(HL7StreamReader):
    """python-hl7's reader, answering unframed input at once.

    ``HL7StreamReader.readblock`` checks the start block only once it has found the end
    block (0x1C 0x0D): garbage, or a message sent without MLLP framing, would wait for
    the idle timeout or the size limit before being answered, and the sender would
    wait with it. Here the first byte of each block is checked as soon as it arrives.
    """

    overrun_head: bytes = b""  # the start of a block over the limit (its MSH-10, if any)

    @property
    def buffered(self) -> int:
        """Bytes received of a block not yet complete."""
        return len(self._buffer)

    def head(self, size: int = HEAD) -> bytes:
        return bytes(self._buffer[:size])

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        try:
            result: bytes = await super().readuntil(separator)
        except asyncio.LimitOverrunError:
            # python-hl7 clears the buffer before raising ValueError: keep its start
            self.overrun_head = bytes(self._buffer[:HEAD])
            raise
        return result

    async def readblock(self) -> bytes | None:
        """The next message without its framing; None when the sender closed between two
        messages. Raises InvalidBlockError when a block does not start with 0x0B, and
        ValueError when it is over the limit (python-hl7's readblock)."""
        while True:
            # stray CR/LF between blocks: some senders end a block with 0x1C 0x0D 0x0A
            while self._buffer[:1] in (b"\r", b"\n"):
                del self._buffer[:1]
            if self._buffer:
                break
            exc = self.exception()
            if exc is not None:
                raise exc
            if self._eof:
                return None
            await self._wait_for_data("readblock")
        if self._buffer[:1] != START_BLOCK:
            raise InvalidBlockError("Block does not begin with Start Block character <VT>")
        block: bytes = await super().readblock()
        return block
