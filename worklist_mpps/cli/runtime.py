"""What ``worklist-mpps serve`` runs, started and stopped as one (issue 17).

:class:`Runtime` opens the database (schema upgraded or checked, sample data on first
start), then starts the DICOM listener, the MLLP order feed and the HTTP side where
configured, the outbox worker, the Orthanc witness follower, the station-query flusher and
the expiry/purge pass; :meth:`Runtime.stop` stops them in the reverse order of their
dependencies (in-flight associations and messages are finished and committed first) and
disposes of the database. ``serve`` (cli/main.py) wraps it in its signal handling and exit
codes; the Orthanc plugin (orthanc_plugin/) runs the same object inside Orthanc, with an
in-process Orthanc client instead of one over HTTP.

A cause that must stop the start-up is a :class:`StartupError` with the exit code of
README "Exit codes".
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.config import Config, ConfigError
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.services.health import (
    DISK_FULL,
    READ_ONLY,
    SCHEMA,
    Health,
    describe_db_error,
    sqlite_file_problem,
)
from worklist_mpps.services.loader import load_sample_once

if TYPE_CHECKING:
    from worklist_mpps.context import AppContext
    from worklist_mpps.delivery.orthanc import OrthancClient
    from worklist_mpps.delivery.orthanc_witness import WitnessFollower
    from worklist_mpps.delivery.worker import OutboxWorker
    from worklist_mpps.dimse.server import DicomServer
    from worklist_mpps.mllp.server import MLLPServer
    from worklist_mpps.services.lifecycle import Lifecycle
    from worklist_mpps.services.station_queries import Flusher
    from worklist_mpps.web.server import HTTPServer

log = logging.getLogger("worklist_mpps")

# Exit codes of worklist-mpps (README "Exit codes"): one per cause, so that a supervisor
# or an operator tells them apart without reading a traceback
EXIT_FAILED = 1  # the command's own failure (ping: no C-ECHO answer; db current: behind)
EXIT_CONFIG = 2  # a configuration key or value, an unreadable secret file, schema behind
EXIT_DB_UNREACHABLE = 3  # no connection: host, port, database name, credentials
EXIT_DICOM_PORT = 4  # the DICOM port (or the TLS port) cannot be bound: in use, no right
EXIT_HTTP_PORT = 5  # the HTTP port cannot be bound
EXIT_DB_NOT_WRITABLE = 6  # connected, but a write fails: read-only database, disk full
EXIT_HL7_PORT = 7  # the MLLP port of the HL7 order feed cannot be bound

# builds the Orthanc client of a thread (the outbox's Orthanc target, the witness
# follower); None: a client over HTTP from orthanc_url and its credentials
OrthancClientFactory = Callable[[], "OrthancClient"]


class StartupError(Exception):
    """A cause that ends the command with one line and its own exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def database_failure(health: Health) -> StartupError:
    """The one line and exit code of a database that fails a command."""
    code = (
        EXIT_DB_NOT_WRITABLE
        if health.problem in (READ_ONLY, DISK_FULL)
        else EXIT_CONFIG
        if health.problem == SCHEMA
        else EXIT_DB_UNREACHABLE
    )
    return StartupError(code, health.reason)


def bind_failure(what: str, address: str, port: int, exc: OSError) -> str:
    hint = " (another server running?)" if exc.errno == errno.EADDRINUSE else ""
    return f"{what} {address}:{port} cannot be bound: {exc.strerror or exc}{hint}"


def open_database(cfg: Config, migrate_now: bool | None = None) -> Database:
    """The process's Database, its schema upgraded or checked; a database that cannot be
    used ends the command with one line and its exit code (StartupError)."""
    db = Database(cfg.database_url, cfg.sqlite_synchronous)
    try:
        if cfg.migrate_on_start if migrate_now is None else migrate_now:
            migrate.upgrade(db.engine)
        up_to_date = migrate.is_up_to_date(db.engine)
    except SQLAlchemyError as exc:
        db.dispose()
        # a read-only filesystem under a SQLite file says more than "unable to open"
        raise database_failure(sqlite_file_problem(db) or describe_db_error(exc)) from None
    if not up_to_date:
        raise ConfigError(
            "database schema is not up to date: run 'worklist-mpps db upgrade' "
            "(or set auto_migrate: true)"
        )
    return db


def build_outbox_worker(
    cfg: Config, db: Database, orthanc_client: OrthancClientFactory | None = None
) -> OutboxWorker | None:
    """The outbox worker for the configured targets, or None without targets: Orthanc and
    the MPPS peers (MPPS events), the enabled HL7 destinations (order status, hl7:NAME)."""
    from worklist_mpps.delivery.forward import ForwardTarget
    from worklist_mpps.delivery.hl7_out import HL7StatusTarget
    from worklist_mpps.delivery.orthanc import OrthancTarget
    from worklist_mpps.delivery.worker import OutboxWorker, Target

    targets: dict[str, Target] = {}
    if cfg.orthanc_url:
        client = orthanc_client() if orthanc_client else None
        targets["orthanc"] = OrthancTarget(db, cfg, client)
    for peer in cfg.forward_peers:
        if peer.enabled:
            forward = ForwardTarget(peer, cfg.ae_title)
            targets[forward.name] = forward
    for destination in cfg.hl7_destinations:
        if destination.enabled:
            status = HL7StatusTarget(destination, cfg)
            targets[status.name] = status
    return OutboxWorker(db, cfg, targets) if targets else None


class Runtime:
    """The server's parts, started by :meth:`start` and stopped by :meth:`stop`.

    :meth:`prepare` (the database, sample data, the objects) and :meth:`start` (the
    listeners and threads) are apart so that ``serve`` installs its signal handlers
    between them, as it always did; ``start`` prepares first when that was not done.
    """

    def __init__(self, cfg: Config, orthanc_client: OrthancClientFactory | None = None) -> None:
        self.cfg = cfg
        self.orthanc_client = orthanc_client
        self.db: Database | None = None
        self.ctx: AppContext | None = None
        self.server: DicomServer | None = None
        self.worker: OutboxWorker | None = None
        self.stations: Flusher | None = None
        self.lifecycle: Lifecycle | None = None
        self.http: HTTPServer | None = None
        self.mllp: MLLPServer | None = None
        self.follower: WitnessFollower | None = None
        self.running = False

    def prepare(self) -> None:
        """Open the database (StartupError / ConfigError when it cannot be used), load the
        sample worklist on first start, build the parts; nothing listens yet."""
        from worklist_mpps.context import AppContext
        from worklist_mpps.dimse.server import DicomServer
        from worklist_mpps.services.lifecycle import Lifecycle
        from worklist_mpps.services.station_queries import Flusher
        from worklist_mpps.web.server import raise_open_files_limit

        cfg = self.cfg
        self.db = db = open_database(cfg)
        if cfg.load_sample_data:
            loaded = load_sample_once(db, cfg.sample_file, cfg.uid_prefix)
            if loaded:
                log.info("Sample worklist loaded from %s: %d items", cfg.sample_file, loaded[0])
        self.worker = worker = build_outbox_worker(cfg, db, self.orthanc_client)
        self.ctx = AppContext(
            cfg,
            db,
            list(worker.targets) if worker else [],
            worker.wake.set if worker else (lambda: None),
        )
        raise_open_files_limit()  # many clients must not starve the listeners of descriptors
        self.server = DicomServer(self.ctx)
        self.stations = Flusher(db)  # the worklist queries per station, to the database every 2 s
        if cfg.worklist_expire_after or cfg.worklist_retention_days:
            self.lifecycle = Lifecycle(db, cfg)

    def start(self) -> None:
        """Start every part; a port that cannot be bound is a StartupError with its exit
        code. On any failure what was started is stopped again (``stop`` is safe then)."""
        try:
            if self.db is None:
                self.prepare()
            self._start()
        except BaseException:
            self.stop()
            raise
        self.running = True

    def _start(self) -> None:
        cfg, server, ctx, stations = self.cfg, self.server, self.ctx, self.stations
        assert server is not None and ctx is not None and stations is not None  # prepared
        try:
            server.start()
        except OSError as exc:
            port = cfg.tls_port if server.is_listening() else cfg.port
            raise StartupError(
                EXIT_DICOM_PORT, bind_failure("DICOM port", cfg.bind, port, exc)
            ) from None
        if cfg.hl7_enabled:  # before HTTP: /healthz answering means orders are taken too
            from worklist_mpps.mllp.server import MLLPServer

            mllp = MLLPServer(ctx)
            try:
                mllp.start()
            except OSError as exc:
                raise StartupError(
                    EXIT_HL7_PORT, bind_failure("MLLP port", cfg.hl7_bind, cfg.hl7_port, exc)
                ) from None
            self.mllp = mllp
        if cfg.http_enabled:
            from worklist_mpps.web.app import create_app
            from worklist_mpps.web.server import HTTPServer

            http = HTTPServer(
                create_app(ctx, server.is_listening),
                cfg.http_bind,
                cfg.http_port,
                keep_alive_timeout=cfg.network_timeout,
                header_timeout=cfg.http_header_timeout,
                body_timeout=cfg.http_body_timeout,
                max_connections=cfg.http_max_connections,
            )
            try:
                http.start()
            except OSError as exc:
                raise StartupError(
                    EXIT_HTTP_PORT, bind_failure("HTTP port", cfg.http_bind, cfg.http_port, exc)
                ) from None
            self.http = http
        if self.worker:
            self.worker.start()
        if cfg.orthanc_url:  # Orthanc as witness: its change feed (delivery/orthanc_witness)
            from worklist_mpps.delivery.orthanc_witness import WitnessFollower

            client = self.orthanc_client() if self.orthanc_client else None
            self.follower = WitnessFollower(ctx.db, cfg, ctx.targets, ctx.notify, client)
            self.follower.start()
        stations.start()
        if self.lifecycle:  # expiry and purge (README "Stale items and retention")
            self.lifecycle.start()

    def banner(self) -> str:
        """The line ``serve`` prints once everything listens."""
        cfg = self.cfg
        assert self.server is not None  # started
        return (
            f"worklist-mpps: {cfg.ae_title} listening on {cfg.bind}:{self.server.port}"
            + (f", HTTP on {cfg.http_bind}:{self.http.port}" if self.http else "")
            + (f", MLLP (HL7) on {cfg.hl7_bind}:{self.mllp.port}" if self.mllp else "")
        )

    def stop(self) -> None:
        """Stop what runs, in-flight work finished and committed first; then dispose of
        the database. Safe to call twice, and after a start-up that failed half-way."""
        if self.running:
            log.info("Shutting down")
        self.running = False
        http, self.http = self.http, None
        if http:
            http.stop()
        mllp, self.mllp = self.mllp, None
        if mllp:
            mllp.stop()  # the messages in progress are committed and acknowledged first
        server, self.server = self.server, None
        if server:
            server.stop()  # in-flight associations finish first
        stations, self.stations = self.stations, None
        if stations:
            stations.stop()  # after the listener: its last queries are written too
        lifecycle, self.lifecycle = self.lifecycle, None
        if lifecycle:
            lifecycle.stop()
        follower, self.follower = self.follower, None
        if follower:
            follower.stop()
        worker, self.worker = self.worker, None
        if worker:
            worker.stop()
        db, self.db = self.db, None
        if db:
            db.dispose()
