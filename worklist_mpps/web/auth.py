"""Who a request is: the Authorization header (token or basic auth, for the API and
scripts) or the operator page's session cookie (browsers).

The cookie is accepted on the page's own paths only (:func:`cookie_path`): the API and
DICOMweb keep needing the Authorization header, so a browser holding a session cannot be
made to call them by another site.
"""

from __future__ import annotations

import base64
import hmac
import threading
import time
from collections import deque

from worklist_mpps.config import Config

COOKIE = "wm_session"
# API and DICOMweb (PS3.18 ch. 14/15) paths: Authorization header only
HEADER_ONLY_PREFIXES = ("/api/", "/modality-")


def cookie_path(path: str) -> bool:
    """Paths where the session cookie authenticates: the page, /docs and its OpenAPI."""
    return not path.startswith(HEADER_ONLY_PREFIXES)


def _same(given: bytes, secret: str) -> bool:
    return hmac.compare_digest(given, secret.encode())


def authenticated_user(header: str, cfg: Config) -> str | bool | None:
    """The user name, None when no authentication is configured, False when refused.

    Header values arrive as latin-1 text (RFC 9110 5.5: octets); they are compared as
    bytes with the UTF-8 encoded secrets (RFC 7617 2.1 charset), so a non-ASCII header
    or secret is a match or a 401, never an error.
    """
    if not cfg.http_auth_configured:
        return None
    scheme, _, credentials = header.partition(" ")
    given = credentials.strip().encode("latin-1", "replace")
    if cfg.http_token and scheme.lower() == "bearer":
        return "token" if _same(given, cfg.http_token) else False
    if cfg.http_username and scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(given, validate=True).partition(b":")
        except ValueError:
            return False
        return cfg.http_username if check_password(cfg, user, password) else False
    return False


def check_password(cfg: Config, user: bytes, password: bytes) -> bool:
    """Basic-auth credentials, both compared in constant time."""
    if not cfg.http_username:
        return False
    return _same(user, cfg.http_username) & _same(password, cfg.http_password)


def login_user(cfg: Config, username: str, password: str, token: str) -> str | None:
    """The login form's check, with the same secrets as the header: a user name and
    password (``http_username``) or the API token (``http_token``; the user is "token")."""
    if cfg.http_username and username and check_password(cfg, username.encode(), password.encode()):
        return cfg.http_username
    if cfg.http_token and token and _same(token.encode(), cfg.http_token):
        return "token"
    return None


class LoginThrottle:
    """At most ``limit`` failed logins per client address in ``window`` seconds (then 429),
    so the form is no faster a password oracle than the header. Bounded: the oldest
    addresses are forgotten beyond ``max_addresses``."""

    def __init__(self, limit: int = 10, window: float = 60.0, max_addresses: int = 1024) -> None:
        self.limit, self.window, self.max_addresses = limit, window, max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address, time.monotonic())) >= self.limit

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(address, now)
            times.append(now)
            self._failures.pop(address, None)
            self._failures[address] = times
            while len(self._failures) > self.max_addresses:
                self._failures.pop(next(iter(self._failures)))
