"""Operator page logins: a random token in an HttpOnly, SameSite=Strict cookie, its SHA-256
in the database (``web_sessions``), and a CSRF token per session that every form post
carries (OWASP CSRF Prevention: synchronizer token pattern).

Sessions live in the database so that several instances on one database accept each
other's logins, and a logout ends a login everywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import WebSession, as_utc, utcnow

TOKEN_BYTES = 32
# Bounded: a page reached without a cookie (basic auth, or no authentication on loopback)
# makes a session, so a client that never keeps cookies could otherwise fill the table.
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Login:
    user: str
    csrf: str
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def create(db: Database, user: str, address: str | None, hours: float) -> tuple[str, Login]:
    """A new session for ``user``: the cookie token (shown once) and the login. Expired
    sessions are deleted on the way, and beyond ``MAX_SESSIONS`` the oldest ones."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    login = Login(user, secrets.token_urlsafe(TOKEN_BYTES), now + timedelta(hours=hours))
    with db.write() as session:
        session.execute(delete(WebSession).where(WebSession.expires_at < now))
        session.add(
            WebSession(
                token_hash=_hash(token),
                user=user[:128],
                csrf=login.csrf,
                address=(address or "")[:128] or None,
                created_at=now,
                expires_at=login.expires_at,
            )
        )
        excess = (session.scalar(select(func.count()).select_from(WebSession)) or 0) - MAX_SESSIONS
        if excess > 0:
            oldest = select(WebSession.token_hash).order_by(WebSession.expires_at).limit(excess)
            session.execute(delete(WebSession).where(WebSession.token_hash.in_(oldest)))
    return token, login


def lookup(db: Database, token: str | None) -> Login | None:
    """The login of a cookie token, or None (unknown, malformed or expired)."""
    if not token or len(token) > 128:
        return None
    with db.read() as session:
        row = session.scalar(select(WebSession).where(WebSession.token_hash == _hash(token)))
        if row is None or as_utc(row.expires_at) <= utcnow():
            return None
        return Login(row.user, row.csrf, as_utc(row.expires_at))


def end(db: Database, token: str | None) -> None:
    """Logout: the session is deleted (on every instance at once)."""
    if token and len(token) <= 128:
        with db.write() as session:
            session.execute(delete(WebSession).where(WebSession.token_hash == _hash(token)))


def csrf_ok(login: Login | None, given: str | None) -> bool:
    """The form's CSRF token is the session's (compared in constant time)."""
    if login is None or not given:
        return False
    return hmac.compare_digest(login.csrf.encode(), given.encode("utf-8", "replace"))
