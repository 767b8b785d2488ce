"""Is this Orthanc open to anyone? The probe behind ``OrthancClient.check_access``.

Orthanc 1.10 with ``RemoteAccessAllowed`` true and ``AuthenticationEnabled`` false, or
with an empty user in ``RegisteredUsers`` (``"${ORTHANC_USER}": "${ORTHANC_PASSWORD}"``
with both unset), answers ``Authorization: Basic Og==`` (empty user and password, RFC
7617) from anywhere. ``GET /system`` does not tell: its ``IsHttpServerSecure`` is true
for an empty user. So the probe asks ``GET /system`` with empty credentials from an
address Orthanc does not count as local: Orthanc 1.10 treats only 127.0.0.1 as local
(HttpServer.cpp: ``remote_addr == "127.0.0.1"``, else 401 when remote access is not
allowed), so for a loopback URL the probe comes from 127.0.0.2, otherwise the ordinary
route is already remote. 200: open; 401: remote access refused or credentials required.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

PROBE_SOURCE = "127.0.0.2"
OPEN_ORTHANC = "refused: Orthanc answers other hosts with empty credentials (an open PACS)"


class SourceAddress(HTTPAdapter):
    """Connections from one local address."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def loopback_host(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def can_bind(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def open_to_anyone(url: str, verify: Any = True, timeout: float = 10.0) -> bool | None:
    """True when Orthanc at ``url`` answers other hosts with empty credentials; None when
    this machine cannot probe from a non-local address (no 127.0.0.2: not Linux).
    requests.RequestException when Orthanc cannot be reached."""
    probe = requests.Session()
    if loopback_host(url):
        if not can_bind(PROBE_SOURCE):
            return None
        probe.mount("http://", SourceAddress(PROBE_SOURCE))
        probe.mount("https://", SourceAddress(PROBE_SOURCE))
    probe.verify = verify
    try:
        # explicit empty credentials: neither the URL's userinfo nor ~/.netrc replace them
        response = probe.get(url.rstrip("/") + "/system", auth=("", ""), timeout=timeout)
    finally:
        probe.close()
    return response.status_code == 200
