"""MPPS N-CREATE / N-SET / N-GET handlers (PS3.4 F.7, F.8): thin, logic in mpps.py."""

from __future__ import annotations

import logging
import time

from pydicom import Dataset
from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.context import AppContext
from worklist_mpps.dimse.common import (
    UndecodableRequest,
    allowed,
    count_request,
    decoded,
    dimse_actor,
    peer,
)
from worklist_mpps.services import mpps
from worklist_mpps.services.health import db_error_comment, describe_db_error
from worklist_mpps.services.status import (
    INVALID_ATTRIBUTE_VALUE,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
    MPPSError,
)

log = logging.getLogger("worklist_mpps.dimse.mpps")


def _status(
    code: int,
    comment: str | None = None,
    error_id: int | None = None,
    attributes: list[int] | None = None,
) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    if error_id is not None:
        ds.ErrorID = error_id
    if attributes:
        ds.AttributeIdentifierList = attributes
    return ds


def _refused(event, op: str) -> Dataset | None:  # noqa: ANN001
    """0x0124 for a device the configuration does not allow MPPS."""
    if allowed(event.assoc, "mpps"):
        return None
    log.warning("%s from %s: 0x0124 not authorized for MPPS", op, peer(event.assoc))
    return _status(NOT_AUTHORIZED, "Not authorized for MPPS")


def _failure(exc: Exception, op: str, who: str, uid: str | None, started: float) -> Dataset:
    ms = (time.perf_counter() - started) * 1000
    if isinstance(exc, MPPSError):
        log.warning(
            "%s from %s for %s: 0x%04X %s (%.1f ms)", op, who, uid, exc.status, exc.comment, ms
        )
        # the Attribute Identifier List (0000,1005) names the attributes on N-CREATE and
        # N-SET alike: their responses carry the status fields of PS3.7 Annex C (10.3.3,
        # 10.3.5); wire.py adds it to pynetdicom's N-CREATE-RSP
        return _status(exc.status, exc.comment, exc.error_id, exc.attributes)
    if isinstance(exc, UndecodableRequest):
        log.warning("%s from %s for %s: 0x0106 data set cannot be decoded: %s", op, who, uid, exc)
        return _status(INVALID_ATTRIBUTE_VALUE, f"Data set cannot be decoded: {exc}")
    if isinstance(exc, SQLAlchemyError):
        log.error(
            "%s from %s for %s: 0x0110 database error: %s (%.1f ms)",
            op,
            who,
            uid,
            describe_db_error(exc).reason,
            ms,
        )
        return _status(PROCESSING_FAILURE, db_error_comment(exc))
    log.exception("%s from %s for %s: 0x0110 processing failure", op, who, uid)
    return _status(PROCESSING_FAILURE, f"Processing failure: {exc.__class__.__name__}")


def handle_n_create(event, ctx: AppContext):  # noqa: ANN001, ANN201
    started, who = time.perf_counter(), peer(event.assoc)
    count_request(event.assoc)
    if (refusal := _refused(event, "N-CREATE")) is not None:
        return refusal, None
    uid = event.request.AffectedSOPInstanceUID
    try:
        attributes = decoded(lambda: event.attribute_list, every_element=False)
        outcome = mpps.create(
            ctx.db,
            attributes,
            uid,
            event.assoc.requestor.ae_title,
            ctx.config.uid_prefix,
            ctx.targets,
            actor=dimse_actor(event.assoc),
        )
    except Exception as exc:  # noqa: BLE001 - every failure gets a status
        return _failure(exc, "N-CREATE", who, uid, started), None
    ctx.notify()
    log.info(
        "N-CREATE from %s: %s IN PROGRESS%s, linked %s (%.1f ms)",
        who,
        outcome.uid,
        " (UID assigned)" if outcome.generated_uid else "",
        ", ".join(outcome.linked) or "nothing (unscheduled)",
        (time.perf_counter() - started) * 1000,
    )
    reply = None
    if outcome.generated_uid:  # pynetdicom moves it into the response's Affected SOP Instance UID
        reply = Dataset()
        reply.AffectedSOPInstanceUID = outcome.uid
    return _status(SUCCESS), reply


def handle_n_set(event, ctx: AppContext):  # noqa: ANN001, ANN201
    started, who = time.perf_counter(), peer(event.assoc)
    count_request(event.assoc)
    if (refusal := _refused(event, "N-SET")) is not None:
        return refusal, None
    uid = event.request.RequestedSOPInstanceUID
    try:
        modifications = decoded(lambda: event.modification_list, every_element=False)
        outcome = mpps.update(
            ctx.db,
            uid,
            modifications,
            event.assoc.requestor.ae_title,
            ctx.targets,
            actor=dimse_actor(event.assoc),
        )
    except Exception as exc:  # noqa: BLE001
        return _failure(exc, "N-SET", who, uid, started), None
    ctx.notify()
    log.info(
        "N-SET from %s: %s %s%s (%.1f ms)",
        who,
        uid,
        outcome.pps_status,
        f", warning 0x{outcome.status:04X} {outcome.comment}" if outcome.status else "",
        (time.perf_counter() - started) * 1000,
    )
    return _status(outcome.status, outcome.comment, attributes=outcome.attributes), None


def handle_n_get(event, ctx: AppContext):  # noqa: ANN001, ANN201
    started, who = time.perf_counter(), peer(event.assoc)
    count_request(event.assoc)
    if (refusal := _refused(event, "N-GET")) is not None:
        return refusal, None
    uid = event.request.RequestedSOPInstanceUID
    try:
        status, ds = mpps.get(ctx.db, uid, event.request.AttributeIdentifierList)
    except Exception as exc:  # noqa: BLE001
        return _failure(exc, "N-GET", who, uid, started), None
    log.info(
        "N-GET from %s: %s, %d attributes (%.1f ms)",
        who,
        uid,
        len(ds),
        (time.perf_counter() - started) * 1000,
    )
    return _status(status), ds
