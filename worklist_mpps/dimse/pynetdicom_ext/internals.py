"""What pynetdicom_ext relies on of pynetdicom's internals, in one list, and the check of
it (``problems``), run by tests/test_pynetdicom_ext.py so that a pynetdicom release that
changes one fails there, naming it, instead of on the wire.

No pynetdicom import at module level: a changed internal must be reported, not break the
import of this list. The private names are the ones reactor.py, wire.py, command_sets.py,
echo_fast.py and assoc.py use; the public methods listed are ones they override or call
from an override.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The pynetdicom releases pynetdicom_ext was tested with (pyproject.toml pins the same)
TESTED_PYNETDICOM = ">=3.0.4,<3.1"


@dataclass(frozen=True)
class Internal:
    """One thing relied on: ``name`` (Class.attribute in module ``module``, or a module
    attribute), the leading parameters used (None: not called with arguments), code its
    source must still contain (what pynetdicom_ext relies on it doing), or instance
    attributes an object of that class must have (``attributes``, with ``name`` a
    class)."""

    user: str  # the pynetdicom_ext module relying on it
    module: str
    name: str
    params: tuple[str, ...] | None = None
    source: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()


DUL, ASSOC, TRANSPORT = "pynetdicom.dul", "pynetdicom.association", "pynetdicom.transport"
DIMSE, MESSAGES = "pynetdicom.dimse", "pynetdicom.dimse_messages"

PYNETDICOM_INTERNALS: tuple[Internal, ...] = (
    # reactor.py: the event-driven DUL and association, the gated listener
    Internal("reactor.py", DUL, "DULServiceProvider.run_reactor", ("self",)),
    Internal("reactor.py", DUL, "DULServiceProvider._read_pdu_data", ("self",)),
    Internal("reactor.py", DUL, "DULServiceProvider._process_recv_primitive", ("self",)),
    Internal(
        "reactor.py",
        DUL,
        "DULServiceProvider._is_transport_event",
        ("self",),
        source=("_read_pdu_data()",),
    ),
    Internal("reactor.py", DUL, "DULServiceProvider._decode_pdu", ("self", "bytestream")),
    Internal("reactor.py", DUL, "DULServiceProvider.kill_dul", ("self",)),
    Internal("reactor.py", DUL, "DULServiceProvider.idle_timer_expired", ("self",)),
    Internal(
        "reactor.py",
        DUL,
        "DULServiceProvider",
        attributes=(
            "_recv_pdu",
            "event_queue",
            "state_machine",
            "socket",
            "to_provider_queue",
            "to_user_queue",
            "_idle_timer",
            "artim_timer",
            "_kill_thread",
        ),
    ),
    # reactor.py _due_in: a Timer runs while started and not stopped
    Internal(
        "reactor.py",
        "pynetdicom.timer",
        "Timer",
        source=("if self._end_time is None:",),
        attributes=("_start_time", "_end_time"),
    ),
    # ... and it replaces dimse.cancel_req with a plain dict around each request, which
    # wire.DIMSEProvider's cancel_req setter turns back into a CancelRequests
    Internal(
        "reactor.py",
        ASSOC,
        "Association._serve_request",
        ("self", "msg", "context_id"),
        source=("self.dimse.cancel_req = {}",),
    ),
    Internal("reactor.py", ASSOC, "Association._run_reactor", ("self",)),
    # one thread per association: the association thread runs the DUL loop, so that
    # pynetdicom's must not start a DUL thread (_started_dul), its waits for the DUL
    # (receive_pdu, kill) turn that loop, and a service class's look for a C-CANCEL
    # (cancel_req.keys()) lets it take what has arrived
    Internal(
        "reactor.py",
        ASSOC,
        "Association.run_reactor",
        ("self",),
        source=(
            "receive_pdu(wait=True, timeout=self.acse_timeout)",
            "if not self._started_dul:",
        ),
    ),
    Internal("reactor.py", ASSOC, "Association.abort", ("self",)),
    Internal(
        "reactor.py",
        ASSOC,
        "Association.kill",
        ("self",),
        source=("while self.dul.is_alive() and not self.dul.stop_dul():",),
    ),
    Internal("reactor.py", DUL, "DULServiceProvider.receive_pdu", ("self", "wait", "timeout")),
    Internal("reactor.py", DUL, "DULServiceProvider.stop_dul", ("self",)),
    Internal(
        "wire.py",
        "pynetdicom.service_class",
        "ServiceClass.is_cancelled",
        ("self", "msg_id"),
        source=("self.dimse.cancel_req.keys()",),
    ),
    Internal(
        "reactor.py",
        ASSOC,
        "Association",
        attributes=(
            "_accepted_cx",
            "dimse",
            "dul",
            "acse",
            "_kill",
            "_is_paused",
            "_reactor_checkpoint",
            "_dul_ready",
            "_sent_release",
            "_server",
            "_started_dul",
        ),
    ),
    Internal(
        "reactor.py",
        "pynetdicom.dimse_primitives",
        "C_FIND",
        attributes=("REQUEST_KEYWORDS", "is_valid_request", "msg_type"),
    ),
    Internal("reactor.py", TRANSPORT, "RequestHandler._create_association", ("self",)),
    Internal(
        "reactor.py", TRANSPORT, "RequestHandler.handle", ("self",), source=("assoc.start()",)
    ),
    Internal("reactor.py", TRANSPORT, "AssociationServer.__init__", source=("self._handlers",)),
    Internal(
        "reactor.py",
        TRANSPORT,
        "AssociationServer.process_request",
        ("self", "request", "client_address"),
        source=("self.finish_request(request, client_address)",),
    ),
    Internal(
        "reactor.py", TRANSPORT, "AssociationServer.get_request", ("self",), source=("wrap_socket",)
    ),
    Internal(
        "reactor.py",
        "pynetdicom.acse",
        "ACSE._negotiate_as_acceptor",
        source=("maximum_associations",),
    ),
    # reactor.py: the reference cycles of an association, broken when it ends (_unlink),
    # and the listener's periodic gc.collect() it replaces (service_actions)
    Internal("reactor.py", "pynetdicom.acse", "ACSE.__init__", source=("self._assoc = assoc",)),
    Internal("reactor.py", "pynetdicom.acse", "ACSE", source=('setattr(self.assoc, "abort"',)),
    Internal("reactor.py", DIMSE, "DIMSEServiceProvider.__init__", source=("self._assoc = assoc",)),
    Internal("reactor.py", DUL, "DULServiceProvider.__init__", source=("self._assoc = assoc",)),
    Internal(
        "reactor.py", TRANSPORT, "AssociationSocket.__init__", source=("self._assoc = assoc",)
    ),
    Internal(
        "reactor.py", ASSOC, "ServiceUser.__init__", source=("self.assoc: Association = assoc",)
    ),
    Internal("reactor.py", "pynetdicom.fsm", "StateMachine.__init__", source=("self.dul = dul",)),
    Internal(
        "reactor.py",
        TRANSPORT,
        "AssociationServer.service_actions",
        ("self",),
        source=("gc.collect()",),
    ),
    # wire.py: C-FIND responses, status-only responses, the bound on received messages,
    # the N-CREATE Attribute Identifier List
    Internal(
        "wire.py", DIMSE, "DIMSEServiceProvider.send_msg", ("self", "primitive", "context_id")
    ),
    Internal("wire.py", DIMSE, "DIMSEServiceProvider.maximum_pdu_size"),
    Internal(
        "wire.py",
        DIMSE,
        "DIMSEServiceProvider.receive_primitive",
        ("self", "primitive"),
        source=("self.message = DIMSEMessage()", "self.msg_queue.put"),
    ),
    Internal(
        "wire.py",
        DIMSE,
        "DIMSEServiceProvider",
        attributes=("message", "msg_queue", "dul", "assoc", "cancel_req"),
    ),
    Internal(
        "wire.py",
        "pynetdicom.service_class",
        "ServiceClass.validate_status",
        ("self", "status", "rsp"),
    ),
    # echo_fast.py: wire.DIMSEProvider on a stand-in association (_Host/_Dul) after the
    # fast path's A-ASSOCIATE-AC; what the provider reads of it
    Internal(
        "echo_fast.py",
        DIMSE,
        "DIMSEServiceProvider",
        source=(
            "self.assoc.dul",
            "self.assoc.dimse_timeout",
            "self.assoc.is_requestor",
            "self.assoc.requestor.maximum_length",
            "self.assoc._serve_request",
            "evt.trigger(self.assoc",
            'self.dul.event_queue.put("Evt19")',
        ),
    ),
    Internal("echo_fast.py", "pynetdicom.events", "trigger", source=("assoc.get_handlers(",)),
    Internal("wire.py", MESSAGES, "_COMMAND_SET_KEYWORDS"),
    Internal("wire.py", MESSAGES, "DIMSEMessage.primitive_to_message", ("self", "primitive")),
    Internal("wire.py", MESSAGES, "DIMSEMessage.message_to_primitive", ("self",)),
    Internal(
        "wire.py",
        MESSAGES,
        "DIMSEMessage",
        attributes=(
            "encoded_command_set",
            "data_set",
            "context_id",
            "_data_set_path",
            "_data_set_file",
        ),
    ),
    # command_sets.ReadRequest: a C-FIND-RQ, N-CREATE-RQ or N-SET-RQ message made without
    # DIMSEMessage.__init__, whose data set fragments decode_msg writes, and whose primitive
    # is built as message_to_primitive builds it (the command set's fields in tag order
    # through the primitive's setters, the data set, the private fields it sets last)
    Internal(
        "command_sets.py",
        MESSAGES,
        "DIMSEMessage.decode_msg",
        ("self", "primitive"),
        source=("cast(BytesIO, self.data_set).write(data[1:])",),
    ),
    Internal(
        "command_sets.py",
        MESSAGES,
        "DIMSEMessage.message_to_primitive",
        source=(
            "for elem in self.command_set:",
            "setattr(primitive, elem.keyword, value)",
            "setattr(primitive, dataset_keyword, self.data_set)",
            "primitive._context_id = self.context_id",
            "primitive._dataset_path = self._data_set_path",
            "primitive._dataset_file = self._data_set_file",
        ),
    ),
    # assoc.py: per-association notes, A-ASSOCIATE-RJ, listeners started by server.py
    Internal(
        "assoc.py",
        "pynetdicom.acse",
        "ACSE.send_reject",
        ("self", "result", "source", "diagnostic"),
    ),
    Internal("assoc.py", "pynetdicom.ae", "ApplicationEntity", attributes=("_servers",)),
)


def _instance(module: str, name: str) -> Any:
    """An object of the class ``name``, for its instance attributes."""
    from pynetdicom import AE
    from pynetdicom.association import Association

    makers: dict[str, Callable[[], Any]] = {
        "Association": lambda: Association(AE(), "acceptor"),
        "DULServiceProvider": lambda: Association(AE(), "acceptor").dul,
        "DIMSEServiceProvider": lambda: Association(AE(), "acceptor").dimse,
        "ApplicationEntity": AE,
        "Timer": lambda: cls(1),
    }
    cls = getattr(importlib.import_module(module), name)
    return makers[name]() if name in makers else cls()


def problems(internals: tuple[Internal, ...] = PYNETDICOM_INTERNALS) -> list[str]:
    """One message per internal that is missing or changed, naming it."""
    found = []
    for item in internals:
        what = (
            f"pynetdicom internal {item.name} ({item.module}, used by pynetdicom_ext/{item.user})"
        )
        try:
            obj: Any = importlib.import_module(item.module)
            for part in item.name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            found.append(f"{what} is missing: {exc}")
            continue
        if item.params is not None:
            try:
                got = tuple(inspect.signature(obj).parameters)
            except (TypeError, ValueError) as exc:
                found.append(f"{what} changed: no longer a function ({exc})")
                continue
            if got[: len(item.params)] != item.params:
                found.append(f"{what} changed: expected parameters {item.params}, got {got}")
        if item.source:
            try:
                text = inspect.getsource(obj)
            except (OSError, TypeError) as exc:
                found.append(f"{what}: source not readable ({exc})")
                continue
            for code in item.source:
                if code not in text:
                    found.append(f"{what} changed: its code no longer contains {code!r}")
        if item.attributes:
            try:
                instance = _instance(item.module, item.name)
            except Exception as exc:  # noqa: BLE001 - report, whatever the change
                found.append(f"{what} changed: cannot be created ({exc})")
                continue
            for attribute in item.attributes:
                if not hasattr(instance, attribute):
                    found.append(f"{what} changed: instance attribute {attribute} is missing")
    return found


def version_problem() -> str | None:
    """A message when the installed pynetdicom is outside TESTED_PYNETDICOM."""
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    installed = version("pynetdicom")
    if installed not in SpecifierSet(TESTED_PYNETDICOM):
        return (
            f"pynetdicom {installed} is installed; pynetdicom_ext was tested with "
            f"{TESTED_PYNETDICOM}: check tests/test_pynetdicom_ext.py and the internals "
            "in pynetdicom_ext/internals.py before widening the pin"
        )
    return None
