"""Access to the server context (configuration, database, outbox) from a request."""

from __future__ import annotations

from fastapi import Request

from worklist_mpps.context import AppContext
from worklist_mpps.services.audit import Actor


def web_context(request: Request) -> AppContext:
    return request.app.state.ctx


def web_actor(request: Request) -> Actor:
    """The audit actor of a request: the authenticated user (or anonymous) and address."""
    client = request.client
    return Actor(
        request.state.user or "anonymous",
        f"{client.host}:{client.port}" if client else None,
        "HTTP",
    )
