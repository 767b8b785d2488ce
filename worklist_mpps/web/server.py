"""uvicorn serving the app from a thread of the ``serve`` process."""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from worklist_mpps.sockets import bind_tcp
from worklist_mpps.web.uvicorn_h11 import guarded_protocol

log = logging.getLogger("worklist_mpps.http")


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
    return soft


class HTTPServer:
    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        keep_alive_timeout: float = 60.0,
        header_timeout: float = 10.0,
        body_timeout: float = 60.0,
        max_connections: int = 1000,
    ) -> None:
        # HTTP may hold at most half of the process's descriptors: the rest stay for the
        # DICOM port, the database and the log, however many HTTP clients come
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files != resource.RLIM_INFINITY and max_connections > open_files // 2:
            log.warning(
                "http_max_connections %d lowered to %d: half the open files limit",
                max_connections,
                max(open_files // 2, 1),
            )
            max_connections = max(open_files // 2, 1)
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=int(keep_alive_timeout),
            http=guarded_protocol(header_timeout, max_connections, body_timeout),
        )
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Bind here, so that a port in use is an OSError for the caller (one line, its
        own exit code) instead of uvicorn's log lines and a thread that ends."""
        sock = bind_tcp(self.config.host, self.config.port)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"HTTP server did not start on {self.config.host}:{self.config.port}"
                )
            time.sleep(0.02)
        log.info("HTTP listener on %s:%d", self.config.host, self.port)

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    return sock.getsockname()[1]
        return self.config.port

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
