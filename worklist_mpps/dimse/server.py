"""The one pynetdicom AE: Verification, Modality Worklist FIND and MPPS.

Handlers are bound here with the server context; their logic lives in the
handler modules and in the service layer.
"""

from __future__ import annotations

import functools
import gc
import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import ClassVar

from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepRetrieve,
    ModalityWorklistInformationFind,
    Verification,
)

from worklist_mpps.context import AppContext
from worklist_mpps.dimse.admission import ConnectionGate, Ticket
from worklist_mpps.dimse.common import count_request, peer
from worklist_mpps.dimse.mpps import handle_n_create, handle_n_get, handle_n_set
from worklist_mpps.dimse.pynetdicom_ext.assoc import (
    note,
    register_server,
    reject,
    set_note,
    socket_of,
)
from worklist_mpps.dimse.pynetdicom_ext.echo_fast import EchoAssociation, EchoFast
from worklist_mpps.dimse.pynetdicom_ext.reactor import (
    ASSOCIATE_RQ_LIMIT,
    EventDrivenRequestHandler,
    GatedAssociationServer,
)
from worklist_mpps.dimse.worklist import handle_find
from worklist_mpps.services.status import SUCCESS

log = logging.getLogger("worklist_mpps.dimse")

# The SOP Classes this AE serves and the DIMSE operations of each (PS3.4 A.3 Verification,
# K.4 Modality Worklist, F.7.1 MPPS (N-GET there too, as pynetdicom serves it), F.8.1 MPPS
# Retrieve): the presentation contexts it accepts, and what a request on each may be.
# Anything else on a context is answered 0x0211 (context.refusal, in reactor.py's dispatch).
OPERATIONS = {
    Verification: ("C-ECHO",),
    ModalityWorklistInformationFind: ("C-FIND",),
    ModalityPerformedProcedureStep: ("N-CREATE", "N-SET", "N-GET"),
    ModalityPerformedProcedureStepRetrieve: ("N-GET",),
}


class RequestHandler(EventDrivenRequestHandler):
    operations: ClassVar[Mapping[str, frozenset[str]]] = {
        str(uid): frozenset(ops) for uid, ops in OPERATIONS.items()
    }


def _on_conn_open(event, ctx: AppContext) -> None:  # noqa: ANN001
    """Tune each accepted connection.

    Nagle off: small DIMSE responses must not wait for a delayed ACK. A socket
    timeout: pynetdicom reads a PDU to its end in a blocking recv, so a peer that
    sends half a PDU and stalls would hold its thread and association slot forever;
    with the timeout the read fails and pynetdicom aborts that association only.
    """
    sock = socket_of(event.assoc)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(ctx.config.network_timeout)
        except OSError:
            pass
    set_note(event.assoc, "opened", time.monotonic())


def _on_accepted(event) -> None:  # noqa: ANN001
    set_note(event.assoc, "opened", note(event.assoc, "opened", time.monotonic()))


def _on_closed(how: str, event) -> None:  # noqa: ANN001
    assoc = event.assoc
    if not note(assoc, "logged", False):
        set_note(assoc, "logged", True)
        log.info(
            "Association %s from %s to %s: %d requests, %.1f ms",
            how,
            peer(assoc),
            assoc.acceptor.ae_title,
            note(assoc, "requests", 0),
            (time.monotonic() - note(assoc, "opened", time.monotonic())) * 1000,
        )


def _on_requested(event, ctx: AppContext) -> None:  # noqa: ANN001
    """An association slot for the request (admission.py), else A-ASSOCIATE-RJ
    rejected-transient, local-limit-exceeded (PS3.8 9.3.4); then access control
    (A-ASSOCIATE-RJ, calling AE title not recognized) for an unknown calling AE title or
    a known one from another address."""
    assoc = event.assoc
    ticket = getattr(assoc, "ticket", None)
    if ticket is not None and not ticket.promote():
        log.warning(
            "Association rejected from %s: all %d association slots in use",
            peer(assoc),
            ctx.config.max_associations,
        )
        set_note(assoc, "logged", True)
        reject(assoc, 0x02, 0x03, 0x02)  # transient, provider (presentation), 2
        return
    calling = assoc.requestor.primitive.calling_ae_title.strip()
    address = assoc.requestor.address
    device, why = _device(ctx, calling, address)
    if why:
        log.warning("Association rejected from %s@%s: %s", calling, address, why)
        set_note(assoc, "logged", True)
        reject(assoc, 0x01, 0x01, 0x03)  # rejected-permanent, service-user, reason 3
        return
    if device is not None:
        set_note(assoc, "device", device)


def _device(ctx: AppContext, calling: str, address: str) -> tuple[object, str]:
    """The device list's entry for ``calling`` at ``address`` (None without a device
    list), or why the association is refused."""
    devices = ctx.config.devices
    if not devices:
        return None, ""
    device = next((d for d in devices if d.ae_title == calling), None)
    if device is None:
        return None, "unknown calling AE title"
    if not device.allows_address(address):
        return None, "not allowed from here"
    return device, ""


def _admits(ctx: AppContext, calling: str, address: str, ticket: Ticket | None) -> bool:
    """Would _on_requested accept this association? The Verification fast path asks
    before it answers; a refusal is left to the ordinary path, which logs and sends it.
    (A slot taken here is the one _on_requested's ``promote`` then finds taken.)"""
    if ticket is not None and not ticket.promote():
        return False
    return not _device(ctx, calling, address)[1]


def _echo_fast(ae: AE, ctx: AppContext) -> EchoFast | None:
    """echo_fast.py's Verification path with this module's handlers, when
    ``dimse_fast_path`` is on and pynetdicom's own log lines (debug) are off."""
    cfg = ctx.config
    if not cfg.dimse_fast_path or logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return None
    context = next(cx for cx in ae.supported_contexts if cx.abstract_syntax == Verification)

    def echo(state: EchoAssociation) -> int:
        return _on_echo(_Event(state))

    def closed(how: str, state: EchoAssociation) -> None:
        set_note(state, "opened", state.opened)
        _on_closed(how, _Event(state))

    return EchoFast(
        ae_title=cfg.ae_title,
        require_called=ae.require_called_aet,
        maximum_length=ae.maximum_pdu_size,
        implementation_uid=ae.implementation_class_uid,
        implementation_version=ae.implementation_version_name,
        transfer_syntaxes=[str(ts) for ts in context.transfer_syntax],
        network_timeout=ae.network_timeout,
        acse_timeout=ae.acse_timeout,
        pdata_cap=ae.maximum_pdu_size
        or (cfg.max_message_size + ASSOCIATE_RQ_LIMIT if cfg.max_message_size else 0),
        admit=functools.partial(_admits, ctx),
        echo=echo,
        closed=closed,
        operations=RequestHandler.operations,
        max_message_size=cfg.max_message_size,
    )


class _Event:
    """What the handlers read of a pynetdicom Event: its association."""

    def __init__(self, assoc: object) -> None:
        self.assoc = assoc


def _on_rejected(event) -> None:  # noqa: ANN001
    log.warning("Association rejected from %s", peer(event.assoc))


def _on_echo(event) -> int:  # noqa: ANN001
    count_request(event.assoc)
    return SUCCESS


def build_ae(ctx: AppContext) -> AE:
    cfg = ctx.config
    ae = AE(ae_title=cfg.ae_title)
    # the slots are handed out by admission.py; pynetdicom's own count includes the
    # connections still in their handshake, so it only backs that up
    ae.maximum_associations = cfg.max_associations + (cfg.max_pending_connections or 4096)
    ae.require_called_aet = cfg.checks_called_ae_title
    ae.network_timeout = cfg.network_timeout
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.maximum_pdu_size = cfg.max_pdu_size
    for sop_class in OPERATIONS:
        ae.add_supported_context(sop_class)
    return ae


def handlers(ctx: AppContext) -> list:
    return [
        (evt.EVT_CONN_OPEN, _on_conn_open, [ctx]),
        (evt.EVT_REQUESTED, _on_requested, [ctx]),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_REJECTED, _on_rejected),
        (evt.EVT_RELEASED, functools.partial(_on_closed, "released")),
        (evt.EVT_ABORTED, functools.partial(_on_closed, "aborted")),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_C_FIND, handle_find, [ctx]),
        (evt.EVT_N_CREATE, handle_n_create, [ctx]),
        (evt.EVT_N_SET, handle_n_set, [ctx]),
        (evt.EVT_N_GET, handle_n_get, [ctx]),
    ]


def tls_context(cfg) -> ssl.SSLContext:  # noqa: ANN001
    """Server TLS per PS3.15 BCP 195: TLS 1.2 or later, certificate and key from the
    configuration, client certificates checked against the configured CAs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cfg.tls_certificate, cfg.tls_private_key)
    if cfg.tls_ca_certificates:
        context.load_verify_locations(cfg.tls_ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if cfg.tls_require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


_frozen = threading.Lock()  # held for good once the heap is frozen


def freeze_start_up_heap() -> None:
    """Once per process: collect, then move every object alive (modules, classes,
    configuration, pools: what lives as long as the server) out of the collector's sight
    (``gc.freeze``, CPython >= 3.7), so that no later collection, full ones included,
    scans them again. With ended associations freed by reference counting (reactor.py
    ``_unlink``) and pynetdicom's periodic ``gc.collect()`` gone, what the collector
    still sees is the few objects of the requests in flight (issue 18: no pause over
    10 ms)."""
    if _frozen.acquire(blocking=False):
        gc.collect()
        gc.freeze()


class DicomServer:
    """Starts and stops the AE's listeners: plain, and TLS when configured."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.ae = build_ae(ctx)
        self._server: GatedAssociationServer | None = None
        self._tls_server: GatedAssociationServer | None = None
        self.echo_fast = _echo_fast(self.ae, ctx)
        cfg = ctx.config
        self.gate = ConnectionGate(
            cfg.max_associations, cfg.max_pending_connections, cfg.max_connections_per_address
        )

    def _listen(
        self, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> GatedAssociationServer:
        """As ``AE.start_server(block=False)``, with the event-driven associations of
        reactor.py. With ``dimse_fast_path`` the listener thread itself creates and starts
        each association (it only sets objects up and starts the association's thread),
        saving pynetdicom's extra thread per connection; without it, a thread per
        connection does that, as in pynetdicom's ThreadedAssociationServer."""
        server = self.ae.make_server(
            (self.ctx.config.bind, port),
            ssl_context=ssl_context,
            evt_handlers=handlers(self.ctx),
            server_class=GatedAssociationServer,
            request_handler=RequestHandler,
        )
        # make_server returns an object of server_class; annotated with pynetdicom's default
        assert isinstance(server, GatedAssociationServer)
        server.gate = self.gate
        server.handshake_timeout = self.ctx.config.handshake_timeout
        server.max_message_size = self.ctx.config.max_message_size
        server.fast_path = self.ctx.config.dimse_fast_path
        server.echo_fast = self.echo_fast
        threading.Thread(
            target=server.serve_forever, name=f"DicomListener@{port}", daemon=True
        ).start()
        register_server(self.ae, server)
        return server

    def start(self) -> None:
        cfg = self.ctx.config
        freeze_start_up_heap()
        self._server = self._listen(cfg.port)
        log.info("DICOM listener %s on %s:%d", cfg.ae_title, cfg.bind, self.port)
        if cfg.tls_port:
            self._tls_server = self._listen(cfg.tls_port, tls_context(cfg))
            log.info(
                "DICOM TLS listener %s on %s:%d%s",
                cfg.ae_title,
                cfg.bind,
                cfg.tls_port,
                " (client certificate required)" if cfg.tls_require_client_certificate else "",
            )

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.ctx.config.port

    def is_listening(self) -> bool:
        server = self._server
        return server is not None and server.socket is not None and server.socket.fileno() != -1

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let associations in flight finish (up to ``grace`` s), then
        abort what is left."""
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
        grace = self.ctx.config.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        fast = self.echo_fast.active if self.echo_fast is not None else ()
        while (self.ae.active_associations or fast) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.echo_fast is not None:
            self.echo_fast.stop()
        if self.ae.active_associations:
            log.warning(
                "Aborting %d association(s) still open after %.0f s",
                len(self.ae.active_associations),
                grace,
            )
        self.ae.shutdown()
