"""The HL7 v2 order feed as the service layer offers it (IHE RAD TF-2 RAD-2/RAD-3/RAD-4/
RAD-13: the Department System Scheduler receives orders and schedules worklist items).

INTERFACE STUB (issue 14 foundation): the listener (``worklist_mpps/mllp``) calls
:func:`receive` for each message it unframes and :func:`refuse` for input that is not a
message it can hand over (no MLLP framing, over the size limit); both answer the bytes
of the ACK to send back (without MLLP framing) and keep the message with its outcome in
the ``hl7_messages`` table.
"""

from __future__ import annotations

from dataclasses import dataclass

from worklist_mpps.context import AppContext


@dataclass
class Received:
    """What became of one message: the ACK to send and how it was decided."""

    ack: bytes  # the ACK (MSA-1 ``code``), encoded in the message's character set
    code: str  # AA | AE | AR (HL7 Table 0008, original mode)
    error: str | None  # why AE/AR: one line, also in MSA-3/ERR and the log
    message_id: int | None  # the hl7_messages row
    duplicate: bool = False  # a resent MSH-10: the stored ACK again, nothing applied


def receive(ctx: AppContext, raw: bytes, address: str) -> Received:
    """Process one message (the bytes between MLLP's 0x0B and 0x1C 0x0D) from ``address``:
    AA only after its change is committed, AE (with ERR) when its content is wrong and
    nothing is applied, AR when it cannot be processed at all. Never raises for bad input."""
    raise NotImplementedError


def refuse(ctx: AppContext, raw: bytes, address: str, reason: str) -> Received:
    """An AR for input the listener cannot hand over as a message (``reason``: e.g. no MLLP
    start block, over hl7_max_message_size); ``raw`` is what was read (kept truncated).
    The ACK echoes MSH-10 when the bytes start with a readable MSH segment."""
    raise NotImplementedError
