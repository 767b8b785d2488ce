"""The SCU side: one association to an MPPS / worklist SCP, with clear errors.

Each way a request can fail has its own exception class and exit code, so
``dicom-mpps`` (and scripts around it) can tell a closed port from a rejected
association, a timeout or a failure status.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydicom import Dataset
from pydicom.tag import Tag
from pynetdicom import evt
from pynetdicom.association import Association as PynetdicomAssociation
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepRetrieve,
    ModalityWorklistInformationFind,
)
from pynetdicom.status import (
    MODALITY_WORKLIST_SERVICE_CLASS_STATUS,
    PROCEDURE_STEP_STATUS,
    code_to_category,
)

from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.services.dicom import BadValue, check_ae_title
from worklist_mpps.services.status import PENDING, PENDING_WARNING

log = logging.getLogger("dicom-mpps")

URL_SCHEMES = ("pacs", "dicom", "dimse")
DEFAULT_PORT = 104


class SCUError(Exception):
    """A failure of the client, with the exit code of its class."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class DimseFailure(SCUError):
    exit_code, kind = 1, "dimse-failure"


class BadURL(SCUError):
    exit_code, kind = 3, "bad-url"


class Unreachable(SCUError):
    exit_code, kind = 5, "unreachable"


class Rejected(SCUError):
    exit_code, kind = 6, "rejected"


class Timeout(SCUError):
    exit_code, kind = 7, "timeout"


class Aborted(SCUError):
    exit_code, kind = 8, "aborted"


class WorklistLookup(SCUError):
    exit_code, kind = 9, "worklist"


class ImagesError(SCUError):
    exit_code, kind = 10, "images"


EXIT_CODES = [
    (0, "success (a warning status is printed on stderr)"),
    (DimseFailure.exit_code, "the peer answered with a failure status (code, meaning, comment)"),
    (2, "bad command line"),
    (BadURL.exit_code, "bad URL"),
    (BadValue.exit_code, "bad value: a UID, an AE title or another option"),
    (Unreachable.exit_code, "server unreachable: host unknown or port closed"),
    (Rejected.exit_code, "association rejected (with the peer's reason)"),
    (Timeout.exit_code, "timeout: connect, association or response"),
    (Aborted.exit_code, "association aborted by the peer, or an invalid response"),
    (WorklistLookup.exit_code, "--from-worklist found no item, or several"),
    (ImagesError.exit_code, "--images: no readable DICOM files"),
]


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_ae_title: str

    def __str__(self) -> str:
        return f"{self.called_ae_title}@{self.host}:{self.port}"


def parse_url(url: str, called_ae_title: str = "ANY-SCP") -> Peer:
    """pacs://host:port (also dicom://, dimse://; [v6]:port; port 104 by default).

    An AE title before '@' (pacs://ORTHANC@host:4242) sets the Called AE Title.
    """
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise BadURL(f"bad URL {url!r}: expected pacs://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadURL(f"bad URL {url!r}: only pacs://[AE@]host:port")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise BadURL(f"bad URL {url!r}: invalid port") from None
    if not parts.hostname:
        raise BadURL(f"bad URL {url!r}: no host")
    called = parts.username or called_ae_title
    check_ae_title(called, "called AE title")
    return Peer(parts.hostname, port, called)


def status_meaning(code: int) -> str:
    return PROCEDURE_STEP_STATUS.get(code, (None, "unknown status"))[1]


def describe_status(status: Dataset) -> str:
    code = status.Status
    text = f"0x{code:04X} {status_meaning(code)}"
    if status.get("ErrorComment"):
        text += f": {status.ErrorComment}"
    if status.get("ErrorID") is not None:
        text += f" (Error ID 0x{status.ErrorID:04X})"
    if status.get("AttributeIdentifierList") is not None:
        tags = status.AttributeIdentifierList
        tags = tags if isinstance(tags, list) else [tags]
        text += " [" + ", ".join(str(t) for t in tags) + "]"
    return text


class Association:
    """``with Association(peer, "CT01") as a: a.n_create(...)``."""

    CONTEXTS = (
        ModalityPerformedProcedureStep,
        ModalityPerformedProcedureStepRetrieve,
        ModalityWorklistInformationFind,
    )

    def __init__(
        self, peer: Peer, calling_ae_title: str, timeout: float = 60.0, contexts: tuple = CONTEXTS
    ) -> None:
        check_ae_title(calling_ae_title, "calling AE title (--aet)")
        self.peer = peer
        self.timeout = timeout
        # pynetdicom's AE, with its requestor race fixed (client/pynetdicom_race.py)
        self.ae = RequestorAE(ae_title=calling_ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.connection_timeout = timeout
        for context in contexts:
            self.ae.add_requested_context(context)
        self.assoc: PynetdicomAssociation | None = None
        self._acse_response = None
        self._last_rsp_command: Dataset | None = None

    def __enter__(self) -> Association:
        self._resolve()
        handlers: list[EventHandlerType] = [
            (evt.EVT_ACSE_RECV, self._on_acse),
            (evt.EVT_DIMSE_RECV, self._on_dimse),
            (evt.EVT_CONN_OPEN, self._on_connected),
        ]
        started = time.monotonic()
        self._connected = False
        self.assoc = assoc = self.ae.associate(
            self.peer.host,
            self.peer.port,
            ae_title=self.peer.called_ae_title,
            evt_handlers=handlers,
        )
        if assoc.is_established:
            log.info("Association with %s established", self.peer)
            return self
        if not self._connected:
            self._diagnose_connection()
        rsp = self._acse_response
        if assoc.is_rejected and rsp is not None:
            raise Rejected(
                f"association rejected by {self.peer}: {rsp.reason_str} "
                f"({rsp.result_str}, source: {rsp.source_str})",
                result=rsp.result,
                source=rsp.result_source,
                reason=rsp.diagnostic,
            )
        if rsp is None and time.monotonic() - started >= self.timeout * 0.9:
            raise Timeout(
                f"no answer to the association request from {self.peer} within {self.timeout:g} s"
            )
        raise Aborted(
            f"association with {self.peer} aborted "
            "(no acceptable presentation context, or the peer aborted)"
        )

    def __exit__(self, *exc: object) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()

    @property
    def established(self) -> PynetdicomAssociation:
        """pynetdicom's association, inside the ``with`` block that opened it."""
        if self.assoc is None:
            raise RuntimeError("no association: use Association as a context manager")
        return self.assoc

    def _resolve(self) -> None:
        try:
            socket.getaddrinfo(self.peer.host, self.peer.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Unreachable(f"cannot resolve host {self.peer.host!r}: {exc.strerror}") from None

    def _diagnose_connection(self) -> None:
        """Why the TCP connection failed (only asked when it did, so a healthy
        server never sees a bare connection that holds one of its association slots)."""
        try:
            with socket.create_connection((self.peer.host, self.peer.port), timeout=self.timeout):
                pass
        except TimeoutError:
            raise Timeout(
                f"no TCP connection to {self.peer.host}:{self.peer.port} within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise Unreachable(
                f"cannot connect to {self.peer.host}:{self.peer.port}: {exc.strerror or exc}"
            ) from None

    def _on_connected(self, event: evt.Event) -> None:
        """TCP_NODELAY on the connection: pynetdicom writes a message's command set and
        data set as separate P-DATA-TF PDUs, and with Nagle's algorithm the second waits
        for the peer's delayed acknowledgement of the first (up to 40 ms on Linux) before
        it leaves: every N-CREATE, N-SET and C-FIND would wait that long."""
        self._connected = True
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_acse(self, event) -> None:  # noqa: ANN001
        if hasattr(event.primitive, "result"):  # the A-ASSOCIATE response (AC or RJ)
            self._acse_response = event.primitive

    def _on_dimse(self, event) -> None:  # noqa: ANN001
        self._last_rsp_command = event.message.command_set

    def _checked(self, status: Dataset, what: str, started: float) -> Dataset:
        """The status if success or warning; otherwise the matching SCUError."""
        if "Status" not in status:
            if time.monotonic() - started >= self.timeout * 0.9:
                raise Timeout(f"no {what} response from {self.peer} within {self.timeout:g} s")
            raise Aborted(f"no valid {what} response from {self.peer}: association aborted")
        if code_to_category(status.Status) == "Failure":
            raise DimseFailure(
                f"{what} failed: {describe_status(status)}",
                status=status.Status,
                comment=status.get("ErrorComment"),
                error_id=status.get("ErrorID"),
            )
        if status.Status != 0:
            log.warning("%s: warning %s", what, describe_status(status))
        return status

    def n_create(self, attributes: Dataset, uid: str | None) -> tuple[Dataset, str]:
        """N-CREATE; (status, the instance UID: ours, or the one the SCP assigned)."""
        started = time.monotonic()
        status, _ = self.established.send_n_create(attributes, ModalityPerformedProcedureStep, uid)
        self._checked(status, "N-CREATE", started)
        returned = (self._last_rsp_command or Dataset()).get("AffectedSOPInstanceUID")
        final = str(returned or uid or "")
        if not final:
            raise Aborted("N-CREATE succeeded but the SCP returned no SOP Instance UID")
        return status, final

    def n_set(self, uid: str, modifications: Dataset) -> Dataset:
        started = time.monotonic()
        status, _ = self.established.send_n_set(modifications, ModalityPerformedProcedureStep, uid)
        return self._checked(status, "N-SET", started)

    def n_get(self, uid: str, tags: list[int] | None = None) -> tuple[Dataset, Dataset]:
        started = time.monotonic()
        status, ds = self.established.send_n_get(
            [Tag(t) for t in tags or []], ModalityPerformedProcedureStep, uid
        )
        self._checked(status, "N-GET", started)
        return status, ds if ds is not None else Dataset()

    def c_find_worklist(self, identifier: Dataset) -> list[Dataset]:
        started = time.monotonic()
        found, last = [], Dataset()
        for status, ds in self.established.send_c_find(identifier, ModalityWorklistInformationFind):
            last = status
            if ds is not None and status.get("Status") in (PENDING, PENDING_WARNING):
                found.append(ds)
        if "Status" not in last:
            self._checked(last, "C-FIND", started)  # raises Timeout or Aborted
        if code_to_category(last.Status) == "Failure":
            meaning = MODALITY_WORKLIST_SERVICE_CLASS_STATUS.get(last.Status, (None, ""))[1]
            raise DimseFailure(
                f"worklist C-FIND failed: 0x{last.Status:04X} {meaning}"
                + (f": {last.ErrorComment}" if "ErrorComment" in last else ""),
                status=last.Status,
            )
        return found
