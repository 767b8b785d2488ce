"""What every DIMSE handler needs: configuration and database, plus logging helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pydicom import Dataset

from ..config import Config
from ..db.engine import Database


@dataclass
class ServerContext:
    config: Config
    db: Database
    targets: list[str] = field(default_factory=list)  # outbox targets of MPPS changes
    notify: Callable[[], None] = lambda: None  # wakes the outbox worker after a commit


def peer(assoc) -> str:  # noqa: ANN001
    """'CALLING_AE@address:port' for log lines."""
    req = assoc.requestor
    return f"{req.ae_title}@{req.address}:{req.port}"


def count_request(assoc) -> None:  # noqa: ANN001
    assoc.wm_requests = getattr(assoc, "wm_requests", 0) + 1


def allowed(assoc, service: str) -> bool:  # noqa: ANN001
    """May this association's device use ``service``? (Without a device list: yes.)"""
    device = getattr(assoc, "wm_device", None)
    return device is None or service in device.services


NOT_AUTHORIZED = 0x0124  # Refused: Not authorized (PS3.7 C.5)


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
