"""Listening sockets for the server's own listeners (HTTP, MLLP), bound by the caller's
thread so that a port in use is an OSError there: one line and its own exit code."""

from __future__ import annotations

import socket


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (SO_REUSEADDR, not yet listening); closed again
    when the bind fails."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
