"""What the DIMSE handlers share: log and access helpers, request decoding, and the rule
for requests a presentation context does not serve."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping

from pydicom import Dataset

from worklist_mpps.dimse.pynetdicom_ext.assoc import note, set_note
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.status import (
    NO_SUCH_SOP_CLASS,
    SOP_CLASS_NOT_SUPPORTED,
    UNRECOGNIZED_OPERATION,
)

_log = logging.getLogger("worklist_mpps.dimse")


def peer(assoc) -> str:  # noqa: ANN001
    """'CALLING_AE@address:port' for log lines."""
    req = assoc.requestor
    return f"{req.ae_title}@{req.address}:{req.port}"


def count_request(assoc) -> None:  # noqa: ANN001
    set_note(assoc, "requests", note(assoc, "requests", 0) + 1)


def allowed(assoc, service: str) -> bool:  # noqa: ANN001
    """May this association's device use ``service``? (Without a device list: yes.)"""
    device = note(assoc, "device")
    return device is None or service in device.services


def dimse_actor(assoc) -> Actor:  # noqa: ANN001
    """The audit actor of a DIMSE request: the calling AE title and the peer's address."""
    req = assoc.requestor
    return Actor(req.ae_title, f"{req.address}:{req.port}", "DIMSE")


class UndecodableRequest(Exception):
    """The request's data set cannot be decoded (wrong value lengths, unterminated or
    absurdly deep sequences, a deflate stream that is not one)."""


def decoded(get: Callable[[], Dataset], every_element: bool = True) -> Dataset:
    """The request's data set with every element decoded now: pydicom decodes lazily, so
    a malformed value would otherwise fail deep inside the service logic. (The MPPS
    service re-encodes what it gets first thing and reports failures itself:
    ``every_element=False`` leaves it that work.)"""

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)

    try:
        ds = get()
        if every_element:
            walk(ds)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on bad bytes
        raise UndecodableRequest(f"{exc.__class__.__name__}: {exc}"[:200]) from None
    return ds


# --- requests a presentation context does not serve (used by reactor.py) ----------------------

# Their statuses are defined in services/status.py.


def requested_sop_class(msg) -> str:  # noqa: ANN001
    """The SOP Class a request names: Affected SOP Class UID (DIMSE-C, N-EVENT-REPORT,
    N-CREATE) or Requested SOP Class UID (N-GET, N-SET, N-ACTION, N-DELETE)."""
    uid = getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", "")
    return str(uid or "")


def refusal(
    operation: str, sop_class: str, abstract_syntax: str, operations: Mapping[str, Collection[str]]
) -> tuple[int, str] | None:
    """Why a request (``operation`` such as "N-CREATE", naming ``sop_class``) on a
    presentation context of ``abstract_syntax`` is refused: (status, reason), or None.

    - Another SOP Class than the context's: 0x0122 Refused: SOP Class not supported for
      DIMSE-C (PS3.7 9.1.1.1.9, 9.1.2.1.6, 9.1.5.1.4 b), 0x0118 No such SOP Class for
      DIMSE-N, whose status lists have no 0x0122 (10.1.x). PS3.7 10.1 lets a DIMSE-N
      command name another SOP Class where PS3.4 defines the pair (meta SOP Classes);
      none of the classes served here does: MPPS F.7.1, MPPS Retrieve F.8.2.1 ("shall be
      the UID of the ... Retrieve SOP Class"), MWL K.4, Verification A.3.
    - An operation the context's SOP Class does not serve (``operations``: SOP Class ->
      the DIMSE operations served): 0x0211 Unrecognized operation, "not one of those
      agreed between the DIMSE Service Users" (PS3.7 C.5.23, 9.1.5.1.4 e, 10.1.x).
    """
    if sop_class != abstract_syntax:
        dimse_n = operation.startswith("N-")
        return (
            (NO_SUCH_SOP_CLASS, f"SOP Class {sop_class} on a {abstract_syntax} context")
            if dimse_n
            else (SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class} not supported here")
        )
    if operation not in operations.get(abstract_syntax, ()):
        return UNRECOGNIZED_OPERATION, f"{operation} is not an operation of {abstract_syntax}"
    return None


def refused_response(msg, context_id: int, status: int, why: str, requestor):  # noqa: ANN001, ANN201
    """The response to a request :func:`refusal` refuses, logged (reactor.py's dispatch and
    echo_fast.py's both send it): a message of the request's own type carrying ``status``,
    Message ID Being Responded To, Affected SOP Class / Instance UID as in the request
    (PS3.7 9.3, 10.3: U(=)), an Error Comment where Annex C has one for the status.
    ``requestor``: its ``ae_title`` and ``address``, for the log line."""
    rsp = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    rsp.AffectedSOPClassUID = requested_sop_class(msg)
    instance = getattr(msg, "AffectedSOPInstanceUID", None) or getattr(
        msg, "RequestedSOPInstanceUID", None
    )
    if instance and hasattr(rsp, "AffectedSOPInstanceUID"):
        rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    if status == SOP_CLASS_NOT_SUPPORTED:  # C.5.6 has an Error Comment, C.5.20/C.5.23 not
        rsp.ErrorComment = why[:64]
    _log.warning(
        "%s from %s@%s on context %d: 0x%04X %s",
        msg.msg_type,
        requestor.ae_title,
        requestor.address,
        context_id,
        status,
        why,
    )
    return rsp
