"""Modality Worklist C-FIND handler (PS3.4 K.4.1): thin, the logic is in worklist.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.context import AppContext
from worklist_mpps.dimse.common import (
    UndecodableRequest,
    allowed,
    count_request,
    decoded,
    peer,
)
from worklist_mpps.dimse.pynetdicom_ext import wire
from worklist_mpps.services import row_encoder, station_queries, worklist, worklist_find
from worklist_mpps.services.health import db_error_comment, describe_db_error
from worklist_mpps.services.matching import MatchError
from worklist_mpps.services.status import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    PENDING_WARNING,
    UNABLE_TO_PROCESS,
)

log = logging.getLogger("worklist_mpps.dimse.worklist")


def failure(status: int, comment: str, offending: list[str] | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]  # LO
    tags = [tag_for_keyword(k) for k in offending or [] if tag_for_keyword(k)]
    if tags:
        ds.OffendingElement = tags
    return ds


@dataclass
class Tally:
    """What one C-FIND answered: matches sent and the final status."""

    sent: int = 0
    status: int = 0x0000


def handle_find(event, ctx: AppContext) -> Iterator[tuple[object, Dataset | None]]:  # noqa: ANN001
    """Answer one worklist C-FIND, then count it for its calling AE title (the Problems
    view's "which stations queried when": services/station_queries.py, in memory)."""
    tally = Tally()
    try:
        for answer in _answer_find(event, ctx, tally):
            status = answer[0]  # pending, CANCEL, or a failure's data set (final)
            if isinstance(status, Dataset):
                tally.status = status.Status
            elif status == CANCEL:
                tally.status = CANCEL
            yield answer
    finally:  # never raises: a test's event may have no acceptor
        requestor = event.assoc.requestor
        acceptor = getattr(event.assoc, "acceptor", None)
        station_queries.record_find(
            requestor.ae_title,
            getattr(acceptor, "ae_title", None),
            requestor.address,
            tally.sent,
            tally.status,
        )


def _answer_find(event, ctx: AppContext, tally: Tally) -> Iterator[tuple[object, Dataset | None]]:  # noqa: ANN001
    """Answer one worklist C-FIND: pending responses, then success (sent by pynetdicom)."""
    started = time.perf_counter()
    who = peer(event.assoc)
    count_request(event.assoc)
    if not allowed(event.assoc, "worklist"):
        log.warning("C-FIND from %s: 0x0124 not authorized for worklist queries", who)
        yield failure(NOT_AUTHORIZED, "Not authorized for worklist queries"), None
        return
    try:
        found = worklist_find.find(
            ctx.db,
            ctx.config,
            lambda: decoded(lambda: event.identifier),
            event.assoc.requestor.ae_title,
            encoded=_encoded(event),
        )
        query, rows = found.query, found.rows
    except worklist_find.TooManyMatches as exc:
        log.warning(
            "C-FIND from %s: 0xA700 refused, more than %d matches (max_find_results)",
            who,
            exc.cap,
        )
        yield failure(OUT_OF_RESOURCES, str(exc)), None
        return
    except MatchError as exc:
        log.warning("C-FIND from %s: 0xA900 identifier does not match SOP class: %s", who, exc)
        yield failure(IDENTIFIER_DOES_NOT_MATCH, str(exc), [exc.keyword]), None
        return
    except UndecodableRequest as exc:
        log.warning("C-FIND from %s: 0xA900 identifier cannot be decoded: %s", who, exc)
        yield failure(IDENTIFIER_DOES_NOT_MATCH, f"Identifier cannot be decoded: {exc}"), None
        return
    except SQLAlchemyError as exc:
        log.error(
            "C-FIND from %s: 0xC001 database error: %s",
            who,
            describe_db_error(exc).reason,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        yield failure(UNABLE_TO_PROCESS, db_error_comment(exc)), None
        return
    except Exception as exc:  # a bad identifier pydicom cannot decode, for example
        log.exception("C-FIND from %s: 0xC001 unable to process", who)
        yield failure(UNABLE_TO_PROCESS, f"Unable to process: {exc.__class__.__name__}"), None
        return

    status = PENDING_WARNING if query.optional_keys_unsupported else PENDING
    # dimse_fast_path off: every response is pynetdicom's own encoding
    fast = (
        FastResponses(event, status)
        if ctx.config.dimse_fast_path and wire.usable(event.assoc, event.context.transfer_syntax)
        else None
    )
    for row in rows:
        # C-CANCEL is looked for between responses sent (PS3.4 C.4.1.2.3): the fast path
        # sends them a batch at a time, so before each batch; the other path, each one
        if (fast is None or not fast.pending) and event.is_cancelled:
            log.info("C-FIND from %s: cancelled after %d of %d matches", who, tally.sent, len(rows))
            yield CANCEL, None
            return
        if fast is not None and not fast.add(row, query):
            if not fast.ok:
                return  # the connection is gone
            fast = None  # a response this path cannot encode: pynetdicom's way from here on
        if fast is None:
            yield status, worklist.response(row, query)
        tally.sent += 1
    if fast is not None and not fast.flush(final=True):
        return
    log.info(
        "C-FIND from %s: %d matches in %.1f ms%s",
        who,
        tally.sent,
        (time.perf_counter() - started) * 1000,
        f" (unsupported keys: {', '.join(query.unsupported)})" if query.unsupported else "",
    )


def _encoded(event) -> tuple[bytes, str] | None:  # noqa: ANN001
    """The request identifier's bytes and transfer syntax (the key of a query parsed
    before, services/worklist.py ``cached_query``)."""
    raw = getattr(getattr(event, "request", None), "Identifier", None)
    if not isinstance(raw, BytesIO):
        return None
    return raw.getvalue(), str(event.context.transfer_syntax)


class FastResponses:
    """Pending responses written in batches by wire.py; pynetdicom then sends the final
    response itself, after them, when the handler returns."""

    BATCH = 32

    def __init__(self, event, status: int) -> None:  # noqa: ANN001
        self.assoc = event.assoc
        self.status = status
        self.message_id = event.request.MessageID
        self.context_id = event.context.context_id
        self.explicit = event.context.transfer_syntax == ExplicitVRLittleEndian
        self.max_pdu = wire.peer_max_pdu(event.assoc)
        self.pending: list[bytes] = []
        self.ok = True
        self.encoder: row_encoder.RowEncoder | None = None
        wire.drain(self.assoc)

    def add(self, row, query: worklist.WorklistQuery) -> bool:  # noqa: ANN001
        """Queue one response; False when it cannot be encoded here (after flushing what
        was queued) or the connection failed."""
        encoder = self.encoder
        if encoder is None or encoder.query is not query:
            encoder = self.encoder = row_encoder.prepared(query, self.explicit)
        identifier = encoder.identifier(row)
        if identifier is None:
            self.flush()
            return False
        self.pending.append(
            wire.find_response(
                self.message_id, self.status, identifier, self.context_id, self.max_pdu
            )
        )
        return len(self.pending) < self.BATCH or self.flush()

    def flush(self, final: bool = False) -> bool:
        """Send the responses queued; the last ones (``final``) go out with the final
        response pynetdicom sends after them (wire.send_with_final)."""
        if self.pending and self.ok:
            data = b"".join(self.pending)
            self.ok = (wire.send_with_final if final else wire.send)(self.assoc, data)
        self.pending.clear()
        return self.ok
