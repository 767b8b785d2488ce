"""The HL7 v2 order feed as the service layer offers it (IHE RAD TF-2 RAD-2/RAD-3/RAD-4/
RAD-13: the Department System Scheduler receives orders and schedules worklist items).

The listener (``worklist_mpps/mllp``) calls :func:`receive` for each message it unframes
and :func:`refuse` for input that is not a message it can hand over (no MLLP framing, over
the size limit); both answer the bytes of the ACK to send back (without MLLP framing) and
keep the message with its outcome in the ``hl7_messages`` table.

Original-mode acknowledgement (HL7 v2.5.1 2.9.2): AA only once the change and the message's
row are committed together; AE (with ERR) when the content is wrong, AR when the message
cannot be processed at all (undecodable, sender not allowed, unsupported processing ID,
version, type or event); after AE/AR nothing is applied and the row is written alone.
A message whose sender and MSH-10 were seen before gets the stored ACK again and has no
second effect (2.10.2 duplicate detection by Message Control ID).

:func:`receive_many` is the group commit the SQLite listener uses: the messages waiting
for its one service thread in one write transaction (one COMMIT, one fsync), each in its
own SAVEPOINT so that a refused one applies nothing while the others keep their changes;
:func:`receive` is a batch of one.

Over 400 lines: the whole life of a message (gatekeeping, batch and savepoints, duplicate
answers, refusal rows, log lines) kept in one place, as the ACK semantics depend on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worklist_mpps.config import HL7_VERSIONS
from worklist_mpps.context import AppContext
from worklist_mpps.db.models import HL7Message
from worklist_mpps.services import audit
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.hl7_actions import Outcome, handle_order
from worklist_mpps.services.hl7_adt import handle_adt
from worklist_mpps.services.hl7_parse import (
    HL7Error,
    Inbound,
    Location,
    build_ack,
    header_value,
    parse,
)

log = logging.getLogger(__name__)

ORDER_TYPES = ("ORM^O01", "OMI^O23")
ADT_TYPES = ("ADT^A08", "ADT^A31", "ADT^A40")
SUPPORTED_TYPES = ORDER_TYPES + ADT_TYPES
# MSH-11 Processing ID (HL7 Table 0103): production and training are processed; D
# (debugging) is refused, it must not schedule real exams
PROCESSING_IDS = ("P", "T")
RAW_LIMIT = 65_536  # refuse(): what is kept of input that is not a message
ATTEMPTS = 3  # transactions tried when a concurrent one takes a key first (PostgreSQL)


@dataclass
class Received:
    """What became of one message: the ACK to send and how it was decided."""

    ack: bytes  # the ACK (MSA-1 ``code``), encoded in the message's character set
    code: str  # AA | AE | AR (HL7 Table 0008, original mode)
    error: str | None  # why AE/AR: one line, also in MSA-3/ERR and the log
    message_id: int | None  # the hl7_messages row
    duplicate: bool = False  # a resent MSH-10: the stored ACK again, nothing applied


@dataclass
class _Header:
    application: str = ""
    facility: str = ""
    control_id: str | None = None
    message_type: str | None = None
    version: str | None = None

    @classmethod
    def of(cls, msg: Inbound | None, raw: bytes) -> _Header:
        if msg is not None:
            return cls(
                msg.msh(3)[:180],
                msg.msh(4)[:180],
                msg.msh(10)[:199] or None,
                msg.message_type[:40] or None,
                msg.version[:20] or None,
            )
        mtype = "^".join(p for p in header_value(raw, 9).split("^")[:2] if p)
        return cls(
            header_value(raw, 3)[:180],
            header_value(raw, 4)[:180],
            header_value(raw, 10)[:199] or None,
            mtype[:40] or None,
            header_value(raw, 12).split("^")[0][:20] or None,
        )

    @property
    def sender(self) -> str:
        return f"{self.application}^{self.facility}"


def receive(ctx: AppContext, raw: bytes, address: str) -> Received:
    """Process one message (the bytes between MLLP's 0x0B and 0x1C 0x0D) from ``address``:
    AA only after its change is committed, AE (with ERR) when its content is wrong and
    nothing is applied, AR when it cannot be processed at all. Never raises for bad input;
    a fault of ours (or an unreachable database) is AR 207, which the sender may resend.
    A batch of one (:func:`receive_many`)."""
    return receive_many(ctx, [(raw, address)])[0]


def receive_many(ctx: AppContext, batch: Sequence[tuple[bytes, str]]) -> list[Received]:
    """Process messages ``(raw, address)`` as :func:`receive` does, in one write transaction
    (group commit: one COMMIT, one fsync on SQLite), each message in its own SAVEPOINT: one
    refused (AE/AR) or losing a key to a concurrent transaction is rolled back to its
    savepoint alone and gets its AE/AR row, the others keep their changes. The answers,
    in order, are returned only once the transaction is committed (AA means stored). A
    message repeating the MSH-10 of an earlier one, in this batch or before, gets that
    one's ACK. When the batch transaction itself fails, the messages are processed one by
    one, each in its own transaction."""
    works = [_Work(raw, address) for raw, address in batch]
    if len(works) > 1:
        try:
            return _batch(ctx, works)
        except Exception as exc:  # noqa: BLE001 - each message again, alone
            log.warning(
                "hl7 batch of %d messages failed (%s: %s): processed one by one",
                len(works),
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            works = [_Work(raw, address) for raw, address in batch]
    return [_one(ctx, work) for work in works]


@dataclass
class _Work:
    """One message of a batch: what was read of it and, once decided, its answer."""

    raw: bytes
    address: str
    started: float = field(default_factory=time.monotonic)
    msg: Inbound | None = None
    head: _Header = field(default_factory=_Header)
    err: HL7Error | None = None  # refused by parse() or _gatekeep()
    out: Outcome | None = None
    result: Received | None = None
    text: str | None = None  # the log line's reason (AE/AR)


def _one(ctx: AppContext, work: _Work) -> Received:
    """One message in its own transaction; a fault of ours (or the database's) is AR 207,
    its row written alone."""
    try:
        return _batch(ctx, [work])[0]
    except Exception as exc:
        log.exception("hl7 message from %s: internal error", work.address)
        fault = HL7Error("AR", 207, f"application internal error: {type(exc).__name__}")
        return _refused(
            ctx, work.raw, work.address, work.msg, fault, work.started, work.out, keep_id=False
        )


def _batch(ctx: AppContext, works: list[_Work]) -> list[Received]:
    for work in works:
        _read(ctx, work)
    with ctx.db.write() as session:
        for work in works:
            _process(ctx, session, work)
    # committed: now the answers may go out, and their log lines
    results = []
    for work in works:
        result = work.result
        assert result is not None
        if result.duplicate:
            _log_duplicate(work.head, result, work.started)
        else:
            _log_line(work.head, work.out or Outcome(), result.code, work.text, work.started)
        results.append(result)
    return results


def _read(ctx: AppContext, work: _Work) -> None:
    """Parse and gatekeep (no database): ``work.msg``/``head``, or ``work.err``."""
    try:
        work.msg = parse(work.raw, ctx.config.hl7_default_charset)
        _gatekeep(ctx, work.msg, work.address)
    except HL7Error as err:
        work.err = err
    work.head = _Header.of(work.msg, work.raw)


def _process(ctx: AppContext, session: Session, work: _Work) -> None:
    """One message inside the batch transaction: its stored answer when it is a repeat,
    else its changes and AA row in a savepoint, else (refused) its AE/AR row alone."""
    msg, head = work.msg, work.head
    if work.err is not None or msg is None:
        assert work.err is not None
        _record_refusal(ctx, session, work, work.err)
        return
    stored = _lookup(session, head)
    if stored is not None:
        work.result = stored
        return
    actor = Actor(head.sender, work.address, "HL7")
    for attempt in range(1, ATTEMPTS + 1):
        work.out = Outcome()
        try:
            with session.begin_nested():
                ack, row_id = _apply(ctx, session, msg, work, actor, work.out)
        except HL7Error as refusal:
            _record_refusal(ctx, session, work, refusal)
            return
        except IntegrityError:
            # a copy of this message committed first (its stored ACK is the answer), or a
            # concurrent message took a key this one creates (a patient): try again
            stored = _lookup(session, head)
            if stored is not None:
                work.result = stored
                return
            if attempt < ATTEMPTS:
                continue
            taken = HL7Error(
                "AE", 205, "a key of this order (accession number and step ID) is in use"
            )
            _record_refusal(ctx, session, work, taken)
            return
        work.result = Received(ack, "AA", None, row_id)
        return


def _apply(
    ctx: AppContext,
    session: Session,
    msg: Inbound,
    work: _Work,
    actor: Actor,
    out: Outcome,
) -> tuple[bytes, int]:
    """The message's changes and its AA row, in the caller's savepoint; (ACK, row id). The
    ACK is sent only once the enclosing transaction is committed (AA means stored)."""
    if msg.message_type in ORDER_TYPES:
        handle_order(session, ctx.config, msg, actor, out)
    else:
        handle_adt(session, ctx.config, msg, actor, out)
    ack, _ = build_ack(msg, work.raw, "AA", ctx.config.hl7_application, ctx.config.hl7_facility)
    # the message's last changes and its row together
    return ack, _store(session, work.head, work.address, work.raw, ack, "AA", out.note, out)


def _record_refusal(ctx: AppContext, session: Session, work: _Work, err: HL7Error) -> None:
    """The AE/AR answer and its row, in a savepoint of the batch (nothing else of the
    message is applied); a copy of the message stored first answers instead."""
    cfg = ctx.config
    head = work.head
    text = f"{err.location}: {err.text}" if err.location else err.text
    ack, _ = build_ack(work.msg, work.raw, err.ack_code, cfg.hl7_application, cfg.hl7_facility, err)
    out = work.out
    if out is not None:  # keep what was read, none of what was done
        out = work.out = Outcome(out.order_control, out.placer, out.filler, out.patient_id)
    row_id = None
    try:
        with session.begin_nested():
            row_id = _store(session, head, work.address, work.raw, ack, err.ack_code, text, out)
    except IntegrityError:
        stored = _lookup(session, head)
        if stored is not None:
            work.result = stored
            return
    work.text = text
    work.result = Received(ack, err.ack_code, text, row_id)


def refuse(ctx: AppContext, raw: bytes, address: str, reason: str) -> Received:
    """An AR for input the listener cannot hand over as a message (``reason``: e.g. no MLLP
    start block, over hl7_max_message_size); ``raw`` is what was read (kept truncated).
    The ACK echoes MSH-10 when the bytes start with a readable MSH segment."""
    started = time.monotonic()
    err = HL7Error("AR", 100, reason)
    # never a duplicate: the same MSH-10 may come again, complete, and must be processed
    return _refused(ctx, raw[:RAW_LIMIT], address, None, err, started, keep_id=False)


def _gatekeep(ctx: AppContext, msg: Inbound, address: str) -> None:
    """What makes a message unprocessable (AR): HL7 v2.5.1 2.9.2 / Table 0357 2xx codes."""
    cfg = ctx.config
    app, fac = msg.msh(3), msg.msh(4)
    if cfg.hl7_senders and not any(s.allows(app, fac, address) for s in cfg.hl7_senders):
        # Table 0357 has no code for an unknown sender; 207 with the reason in ERR-8/MSA-3
        raise HL7Error(
            "AR",
            207,
            f"sender {app}^{fac} from {address} is not in hl7_senders",
            Location("MSH", 1, 3),
        )
    if not msg.msh(10):
        raise HL7Error("AR", 101, "MSH-10 Message Control ID is required", Location("MSH", 1, 10))
    processing = msg.msh(11).split("^")[0]
    if processing not in PROCESSING_IDS:
        raise HL7Error(
            "AR",
            202,
            f"MSH-11 processing ID {processing!r} is not supported (P or T)",
            Location("MSH", 1, 11),
        )
    if msg.version not in HL7_VERSIONS:
        raise HL7Error(
            "AR",
            203,
            f"MSH-12 version {msg.version!r} is not supported (one of {', '.join(HL7_VERSIONS)})",
            Location("MSH", 1, 12),
        )
    mtype = msg.message_type
    if mtype not in SUPPORTED_TYPES:
        kind = mtype.split("^")[0]
        if kind in {t.split("^")[0] for t in SUPPORTED_TYPES}:
            raise HL7Error(
                "AR",
                201,
                f"event {mtype} is not supported (one of {', '.join(SUPPORTED_TYPES)})",
                Location("MSH", 1, 9, 2),
            )
        raise HL7Error(
            "AR",
            200,
            f"message type {mtype or '(empty)'} is not supported "
            f"(one of {', '.join(SUPPORTED_TYPES)})",
            Location("MSH", 1, 9, 1),
        )


# built once (a statement per message costs more than its execution on SQLite)
_STORED = select(HL7Message.ack, HL7Message.ack_code, HL7Message.error, HL7Message.id).where(
    HL7Message.sending_application == bindparam("app"),
    HL7Message.sending_facility == bindparam("fac"),
    HL7Message.control_id == bindparam("cid"),
)


def _lookup(session: Session, head: _Header) -> Received | None:
    """The row of an earlier message with this sender and MSH-10, as a duplicate answer."""
    if head.control_id is None:
        return None
    params = {"app": head.application, "fac": head.facility, "cid": head.control_id}
    row = session.execute(_STORED, params).first()
    if row is None:
        return None
    return Received(row.ack, row.ack_code, row.error, row.id, duplicate=True)


def _stored(ctx: AppContext, head: _Header, started: float) -> Received | None:
    """:func:`_lookup` in its own read transaction, logged."""
    if head.control_id is None:
        return None
    with ctx.db.read() as session:
        found = _lookup(session, head)
    if found is not None:
        _log_duplicate(head, found, started)
    return found


def _log_duplicate(head: _Header, found: Received, started: float) -> None:
    log.info(
        "hl7 %s control=%s type=%s: duplicate of message %s, %s again, nothing applied (%.0f ms)",
        head.sender,
        head.control_id,
        head.message_type,
        found.message_id,
        found.code,
        (time.monotonic() - started) * 1000,
    )


def _store(
    session: Session,
    head: _Header,
    address: str,
    raw: bytes,
    ack: bytes,
    code: str,
    error: str | None,
    out: Outcome | None,
    keep_id: bool = True,
) -> int:
    """The message's row in the log, and its audit record (action ``hl7.message``, target
    ``hl7:<row id>``): every message received is in both, whatever its ACK; the row id."""
    row = _row(head, address, raw, ack, code, error, out, keep_id)
    session.add(row)
    session.flush()
    audit.record(
        session,
        Actor(head.sender, address, "HL7"),
        "hl7.message",
        f"hl7:{row.id}",
        {
            "type": head.message_type,
            "control_id": head.control_id,
            "ack": code,
            "error": error,
            "items": row.item_ids,
        },
    )
    return row.id


def _row(
    head: _Header,
    address: str,
    raw: bytes,
    ack: bytes,
    code: str,
    error: str | None,
    out: Outcome | None,
    keep_id: bool = True,
) -> HL7Message:
    out = out or Outcome()
    return HL7Message(
        address=address[:128] if address else None,
        sending_application=head.application,
        sending_facility=head.facility,
        control_id=head.control_id if keep_id else None,
        message_type=head.message_type,
        version=head.version,
        order_control=",".join(out.order_control)[:40] or None,
        placer_order_number=(out.placer or "")[:64] or None,
        filler_order_number=(out.filler or "")[:64] or None,
        patient_id=(out.patient_id or "")[:64] or None,
        ack_code=code,
        error=error[:500] if error else None,
        item_ids=(out.item_ids or None) if code == "AA" else None,
        raw=raw,
        ack=ack,
    )


def _refused(
    ctx: AppContext,
    raw: bytes,
    address: str,
    msg: Inbound | None,
    err: HL7Error,
    started: float,
    out: Outcome | None = None,
    keep_id: bool = True,
) -> Received:
    """The AE/AR answer, its row written alone (nothing else is applied)."""
    cfg = ctx.config
    head = _Header.of(msg, raw)
    text = f"{err.location}: {err.text}" if err.location else err.text
    ack, _ = build_ack(msg, raw, err.ack_code, cfg.hl7_application, cfg.hl7_facility, err)
    if out is not None:  # keep what was read, none of what was done
        out = Outcome(out.order_control, out.placer, out.filler, out.patient_id)
    row_id = None
    try:
        with ctx.db.write() as session:
            row_id = _store(session, head, address, raw, ack, err.ack_code, text, out, keep_id)
    except IntegrityError:
        stored = _stored(ctx, head, started)
        if stored is not None:
            return stored
    except Exception as exc:  # noqa: BLE001 - the database is down: answer anyway
        log.error(
            "hl7 %s control=%s: the message log row failed: %s: %s",
            head.sender,
            head.control_id,
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
    _log_line(head, out or Outcome(), err.ack_code, text, started)
    return Received(ack, err.ack_code, text, row_id)


def _log_line(head: _Header, out: Outcome, code: str, error: str | None, started: float) -> None:
    log.info(
        "hl7 %s control=%s type=%s orc1=%s -> %s%s items=%s (%.0f ms)",
        head.sender,
        head.control_id,
        head.message_type,
        ",".join(out.order_control) or "-",
        code,
        f" ({error})" if error else (f" ({out.note})" if out.note else ""),
        ",".join(str(i) for i in out.item_ids) or "-",
        (time.monotonic() - started) * 1000,
    )
