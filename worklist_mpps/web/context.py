"""Access to the server context (configuration, database, outbox) from a request."""

from __future__ import annotations

from fastapi import Request

from ..dimse.context import ServerContext


def web_context(request: Request) -> ServerContext:
    return request.app.state.ctx
