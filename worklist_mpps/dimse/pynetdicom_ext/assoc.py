"""Small operations on pynetdicom's association and AE objects for the rest of dimse/:
per-association state, the connection's socket, A-ASSOCIATE-RJ, registering a listener.
They reach into pynetdicom's objects, so they live here (internals.py lists what they
rely on)."""

from __future__ import annotations

import socket
from typing import Any

_NOTES = "wm_notes"  # the one attribute this project adds to pynetdicom's Association


def note(assoc, key: str, default: Any = None) -> Any:  # noqa: ANN001
    """What :func:`set_note` kept for this association under ``key``."""
    return vars(assoc).get(_NOTES, {}).get(key, default)


def set_note(assoc, key: str, value: Any) -> None:  # noqa: ANN001
    """Keep ``value`` with the association (its requests, opening time, device...)."""
    vars(assoc).setdefault(_NOTES, {})[key] = value


def socket_of(assoc) -> socket.socket | None:  # noqa: ANN001
    """The association's TCP (or TLS) socket, None once it is closed."""
    return getattr(getattr(assoc.dul, "socket", None), "socket", None)


def reject(assoc, result: int, source: int, reason: int) -> None:  # noqa: ANN001
    """A-ASSOCIATE-RJ with ``result``, ``source`` and ``reason`` (PS3.8 9.3.4, Table 9-21)
    from an EVT_REQUESTED handler, then end the association as pynetdicom does after
    its own rejections."""
    assoc.acse.send_reject(result, source, reason)
    assoc.kill()


def register_server(ae, server) -> None:  # noqa: ANN001
    """Let ``ae`` know a listener started outside ``AE.start_server``, so that
    ``ae.active_associations`` and ``ae.shutdown()`` include it."""
    ae._servers.append(server)


def quiet_logging(debug: bool) -> None:
    """pynetdicom's own DIMSE log handlers and identifier dumps (its private ``_config``):
    on only when debugging. Its standard handlers fail on some valid N-GET requests (an
    empty or one-tag Attribute Identifier List) with a traceback, and it formats every
    C-FIND identifier as text before the logger drops it: a large share of a response."""
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "standard" if debug else "none"
    _config.LOG_REQUEST_IDENTIFIERS = debug
    _config.LOG_RESPONSE_IDENTIFIERS = debug
