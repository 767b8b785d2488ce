"""HL7 v2 peers for the tests: python-hl7's ``mllp_send`` command (a real sender that is
not our code), a small socket client for what it cannot do (several messages on one
connection, unframed bytes, a stall, answers read precisely), and python-hl7's asyncio
MLLP server as the order placer's receiver of status messages."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from pathlib import Path

import hl7
import hl7.mllp

from conftest import VENV_BIN, free_port, wait_for  # noqa: F401 - re-exported

MLLP_SEND = VENV_BIN / "mllp_send"  # python-hl7's command (the venv's bin is off PATH)
SB, EB, CR = b"\x0b", b"\x1c", b"\r"


def mllp_send(port: int, path: Path, host: str = "127.0.0.1", timeout: float = 30) -> bytes:
    """``mllp_send --loose --file path``: its output, the ACK of each message (framed)."""
    proc = subprocess.run(
        [str(MLLP_SEND), "--loose", "--file", str(path), "--port", str(port), host],
        capture_output=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def order(
    n: int | str,
    *,
    control: str | None = None,
    application: str = "RIS",
    orc1: str = "NW",
    patient_id: str | None = None,
    start: str = "20261201093000",
    version: str = "2.5.1",
    extra: str = "",
) -> bytes:
    """An ORM^O01 order number ``n``: placer PLC<n>, filler FIL<n>, accession ACC<n>,
    patient PAT<n>, CT at ``start`` (ORC-7.4 and TQ1-7), MSH-10 ``control`` or MSG<n>."""
    pid = f"PAT{n}" if patient_id is None else patient_id
    segments = [
        f"MSH|^~\\&|{application}|HOSPITAL|WORKLIST-MPPS|RADIOLOGY|20261201120000||ORM^O01|"
        f"{control or f'MSG{n}'}|P|{version}",
        f"PID|1||{pid}^^^HOSP^MR||Doe^John{n}||19700101|M",
        f"ORC|{orc1}|PLC{n}^RIS|FIL{n}^DSS||SC||^^^{start}",
        f"TQ1|1||||||{start}",
        f"OBR|1|PLC{n}^RIS|FIL{n}^DSS|CTHEAD^CT head^L" + "|" * 14 + f"ACC{n}|RP{n}|SPS{n}||||CT",
    ]
    if extra:
        segments.append(extra)
    return "\r".join(segments).encode("ascii") + CR


def fields(ack: bytes, segment: str) -> list[str]:
    """The fields of the first ``segment`` of a message (fields[1] is SEG-1)."""
    for line in ack.strip(SB + EB + CR).split(CR):
        if line.startswith(segment.encode() + b"|"):
            return line.decode("latin-1").split("|")
    return []


def ack_code(ack: bytes) -> str:
    """MSA-1: AA, AE or AR ('' when there is no MSA)."""
    msa = fields(ack, "MSA")
    return msa[1] if len(msa) > 1 else ""


def acked_control(ack: bytes) -> str:
    """MSA-2: the MSH-10 acknowledged."""
    msa = fields(ack, "MSA")
    return msa[2] if len(msa) > 2 else ""


def error_code(ack: bytes) -> str:
    """The HL7 Table 0357 code of the ERR segment: ERR-3.1 (v2.5), else ERR-1.4.1 (the
    v2.3/v2.4 form); '' without ERR."""
    err = fields(ack, "ERR")
    if len(err) > 3 and err[3]:
        return err[3].split("^")[0]
    if len(err) > 1:
        parts = err[1].split("^")
        return parts[3].split("&")[0] if len(parts) > 3 else ""
    return ""


class MLLPClient:
    """One connection to the listener; ``send`` writes a framed message and reads its
    ACK (original mode: one at a time)."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(SB + message + EB + CR)
        return self.read_block()

    def read_block(self) -> bytes:
        """The next framed answer, without its framing; b'' when the server closed."""
        while EB + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.buffer += chunk
        block, _, self.buffer = self.buffer.partition(EB + CR)
        assert block.startswith(SB), block[:40]
        return block[1:]

    def closed_by_server(self) -> bool:
        """True when the server has closed the connection (EOF or reset) within the
        socket timeout, discarding any answer still unread."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True


# --- a real MLLP receiver -------------------------------------------------------------


class Receiver:
    """python-hl7's MLLP server on 127.0.0.1 in a thread of its own: records each message
    and answers ``create_ack(code)`` (AE/AR with MSA-3 and an ERR segment)."""

    def __init__(self, port: int | None = None, code: str = "AA") -> None:
        self.port = port or free_port()
        self.code = code
        self.messages: list[hl7.Message] = []
        self.raw: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._thread: threading.Thread | None = None

    async def _handle(self, reader, writer) -> None:
        try:
            while True:
                try:
                    message = await reader.readmessage()
                except asyncio.IncompleteReadError:
                    break
                self.messages.append(message)
                self.raw.append(str(message))
                ack = message.create_ack(self.code, application="RIS", facility="RAD")
                if self.code != "AA":
                    ack.segment("MSA").assign_field("Unknown placer order", 3)
                    ack = hl7.parse(
                        str(ack) + "ERR|^^^204&Unknown key identifier&HL70357\r",
                        encoding="utf-8",
                    )
                writer.writemessage(ack)
                await writer.drain()
        finally:
            writer.close()

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                hl7.mllp.start_hl7_server(
                    self._handle, host="127.0.0.1", port=self.port, encoding="utf-8"
                )
            )
            ready.set()
            self._loop.run_forever()
            self._server.close()
            # connections still open: their handlers end here, not in the garbage collector
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"mllp-{self.port}", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the MLLP receiver did not start"
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
