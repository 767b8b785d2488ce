"""The order feed's reference peer for the benchmark: python-hl7's own asyncio MLLP server
answering every message with AA at once, storing nothing. Our listener's figures are
printed as a ratio of this one's, measured in the same run.

    python bench/reference_mllp.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import hl7
from hl7.mllp import start_hl7_server


async def _connection(reader, writer) -> None:
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack("AA", application="REFERENCE"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    async with await start_hl7_server(_connection, "127.0.0.1", port, encoding="iso-8859-1"):
        await asyncio.Event().wait()


if __name__ == "__main__":
    assert hl7.__version__
    asyncio.run(main(int(sys.argv[1])))
