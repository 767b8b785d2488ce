"""The MLLP reader (worklist_mpps/mllp/framing.py) on its own, and the internals of
asyncio and python-hl7 it relies on: these tests fail loudly when either library changes
what the listener's answers to garbage, unframed and oversize input depend on."""

from __future__ import annotations

import asyncio
import inspect

from hl7.mllp import HL7StreamReader, InvalidBlockError
from hl7.mllp.streams import MLLPStreamReader

from worklist_mpps.mllp.framing import HEAD, FramedReader

MESSAGE = b"MSH|^~\\&|RIS|HOSP|WL||20261201||ORM^O01|C1|P|2.3.1\rPID|1||P1\r"


def read(*chunks: bytes, limit: int = 4096, eof: bool = True):
    """Feed ``chunks`` to a FramedReader and read blocks until it raises or ends."""

    async def run():
        reader = FramedReader(limit=limit)
        for chunk in chunks:
            reader.feed_data(chunk)
        if eof:
            reader.feed_eof()
        blocks = []
        try:
            while (block := await asyncio.wait_for(reader.readblock(), 2)) is not None:
                blocks.append(block)
        except (InvalidBlockError, ValueError, asyncio.IncompleteReadError) as exc:
            return blocks, exc, reader
        return blocks, None, reader

    return asyncio.run(run())


def test_the_asyncio_internals_it_reads_are_there():
    reader = asyncio.StreamReader()
    assert isinstance(reader._buffer, bytearray)
    assert reader._eof is False
    assert inspect.iscoroutinefunction(reader._wait_for_data)
    assert reader.exception() is None


def test_python_hl7_readblock_is_the_one_the_reader_builds_on():
    assert issubclass(FramedReader, HL7StreamReader)
    source = inspect.getsource(MLLPStreamReader.readblock)
    # a limit overrun clears the buffer and becomes ValueError; a block without 0x0B is
    # InvalidBlockError; the separator is 0x1C 0x0D
    assert "LimitOverrunError" in source and "raise ValueError" in source
    assert "InvalidBlockError" in source and "END_BLOCK + CARRIAGE_RETURN" in source


def test_framed_messages_come_out_without_their_framing():
    blocks, error, _ = read(b"\x0b" + MESSAGE + b"\x1c\x0d", b"\r\n\x0b" + MESSAGE + b"\x1c\x0d")
    assert error is None and blocks == [MESSAGE, MESSAGE]


def test_unframed_input_is_refused_without_waiting_for_an_end_block():
    # no 0x1C 0x0D ever comes and the stream stays open: python-hl7's readblock alone
    # would wait (for the idle timeout); the reader answers at the first byte
    blocks, error, _ = read(MESSAGE, eof=False)
    assert blocks == [] and isinstance(error, InvalidBlockError)


def test_a_block_over_the_limit_is_refused_and_its_head_kept():
    big = b"\x0b" + MESSAGE + b"Z" * 10_000
    blocks, error, reader = read(big, limit=1000, eof=False)
    assert blocks == [] and isinstance(error, ValueError)
    assert reader.overrun_head.startswith(b"\x0bMSH|") and len(reader.overrun_head) <= HEAD


def test_end_of_stream_between_blocks_is_none_inside_a_block_incomplete():
    blocks, error, _ = read(b"\x0b" + MESSAGE + b"\x1c\x0d")
    assert blocks == [MESSAGE] and error is None
    blocks, error, _ = read(b"\x0b" + MESSAGE + b"\x1c\x0d", b"\x0b" + MESSAGE[:20])
    assert blocks == [MESSAGE] and isinstance(error, asyncio.IncompleteReadError)
