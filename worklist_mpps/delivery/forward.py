"""Forwarding target of the outbox: downstream MPPS peers get the same N-CREATE / N-SET.

IHE Scheduled Workflow: the Performed Procedure Step Manager forwards what it
receives to the configured systems (RIS, another PACS), in order, retrying
until they take it; a failed forward never fails the incoming MPPS. A retry
that finds its effect already applied downstream (0x0111 for an N-CREATE,
0x0110/0xA710 for a final N-SET) counts as delivered, so nothing is applied
twice.
"""

from __future__ import annotations

from worklist_mpps.client.scu import (
    Aborted,
    Association,
    DimseFailure,
    Peer,
    Rejected,
    SCUError,
    Timeout,
    Unreachable,
)
from worklist_mpps.config import ForwardPeer
from worklist_mpps.db.models import OutboxMessage
from worklist_mpps.delivery.worker import Failed, Retry
from worklist_mpps.services.dicom import BadValue, decode_dataset
from worklist_mpps.services.status import (
    DUPLICATE_SOP_INSTANCE,
    ERROR_ID_NO_LONGER_UPDATED,
    PROCESSING_FAILURE,
)


class ForwardTarget:
    supersede = False  # every N-CREATE and N-SET goes downstream, in order
    hold_after_failure = False  # a refused message does not stop the later ones

    def __init__(self, peer: ForwardPeer, calling_ae_title: str, timeout: float = 30.0) -> None:
        self.peer = peer
        self.name = f"forward:{peer.name}"
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout

    def deliver(self, message: OutboxMessage) -> str | None:
        peer = Peer(self.peer.host, self.peer.port, self.peer.ae_title)
        ds = decode_dataset(message.payload or b"")
        try:
            with Association(peer, self.calling_ae_title, self.timeout) as assoc:
                if message.event == "N-CREATE":
                    status, _ = assoc.n_create(ds, message.mpps_uid)
                else:
                    status = assoc.n_set(message.mpps_uid, ds)
        except DimseFailure as exc:
            code = exc.details.get("status")
            if message.event == "N-CREATE" and code == DUPLICATE_SOP_INSTANCE:
                return "already created downstream"
            if (
                message.event == "N-SET"
                and code == PROCESSING_FAILURE
                and exc.details.get("error_id") == ERROR_ID_NO_LONGER_UPDATED
            ):
                return "downstream step already final"
            raise Failed(f"{peer} answered {exc.message}") from None
        except (Unreachable, Timeout, Aborted, Rejected) as exc:
            raise Retry(exc.message) from None
        except (SCUError, BadValue) as exc:  # BadValue: a calling AE title not valid
            raise Failed(exc.message) from None
        return f"{peer} status 0x{status.Status:04X}"
