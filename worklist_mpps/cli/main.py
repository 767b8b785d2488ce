"""``worklist-mpps``: serve, manage the database, load worklists.

Over 400 lines: one small function per subcommand, and serve's start-up with its exit
codes; each calls the service layer for its work.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import json
import logging
import signal
import sys
import time

from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.config import (
    Config,
    ConfigError,
    add_cli_flags,
    config_from_args,
    describe_defaults,
    shown_value,
)
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.services.health import (
    DISK_FULL,
    READ_ONLY,
    SCHEMA,
    Health,
    describe_db_error,
    probe_write,
    sqlite_file,
    sqlite_file_problem,
)
from worklist_mpps.services.loader import LoadError, load_file, load_sample_once

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


def _bind_failure(what: str, address: str, port: int, exc: OSError) -> str:
    hint = " (another server running?)" if exc.errno == errno.EADDRINUSE else ""
    return f"{what} {address}:{port} cannot be bound: {exc.strerror or exc}{hint}"


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom logs every PDU at INFO, alembic every step: lines for debugging.
    debug = level.upper() == "DEBUG"
    for noisy in ("pynetdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    from worklist_mpps.dimse.pynetdicom_ext.assoc import quiet_logging

    quiet_logging(debug)
    # pydicom checks every value it reads or sets (a regular expression per UID, each
    # DIMSE command builds several) only to log a warning: about a fifth of an
    # association's CPU. The server checks what it relies on itself (PS3.4 Annex F
    # and K rules, answered with statuses); the warnings stay on when debugging.
    from pydicom import config as pydicom_config

    mode = pydicom_config.WARN if debug else pydicom_config.IGNORE
    pydicom_config.settings.reading_validation_mode = mode
    pydicom_config.settings.writing_validation_mode = mode


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


def cmd_serve(cfg: Config, _args: argparse.Namespace) -> int:
    from worklist_mpps.context import AppContext
    from worklist_mpps.dimse.server import DicomServer

    db = open_database(cfg)
    if cfg.load_sample_data:
        loaded = load_sample_once(db, cfg.sample_file, cfg.uid_prefix)
        if loaded:
            log.info("Sample worklist loaded from %s: %d items", cfg.sample_file, loaded[0])
    worker = build_outbox_worker(cfg, db)
    ctx = AppContext(
        cfg,
        db,
        list(worker.targets) if worker else [],
        worker.wake.set if worker else (lambda: None),
    )
    from worklist_mpps.web.server import raise_open_files_limit

    raise_open_files_limit()  # many clients must not starve the listeners of descriptors
    server = DicomServer(ctx)
    from worklist_mpps.services.station_queries import Flusher

    stations = Flusher(db)  # the worklist queries per station, to the database every 2 s
    from worklist_mpps.services.lifecycle import Lifecycle

    lifecycle = (
        Lifecycle(db, cfg) if cfg.worklist_expire_after or cfg.worklist_retention_days else None
    )
    # The handler only records the signal: a handler runs between two bytecodes of the
    # main thread and must take no lock that code may hold. SIGUSR1 writes every thread's
    # stack to stderr (the log), for a server that seems stuck.
    stop_signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop_signals.append(signum))
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # CPython hands the GIL to a waiting thread every 5 ms by default: a thread with a
    # peer to answer (the MLLP listener's ACK, a DIMSE thread) waited that long behind a
    # busy one. 1 ms: the order feed went from about 170 to about 200 orders/s (bench).
    sys.setswitchinterval(0.001)
    http, mllp, running = None, None, False
    follower = None
    try:
        try:
            server.start()
        except OSError as exc:
            port = cfg.tls_port if server.is_listening() else cfg.port
            raise StartupError(
                EXIT_DICOM_PORT, _bind_failure("DICOM port", cfg.bind, port, exc)
            ) from None
        if cfg.hl7_enabled:  # before HTTP: /healthz answering means orders are taken too
            from worklist_mpps.mllp.server import MLLPServer

            mllp = MLLPServer(ctx)
            try:
                mllp.start()
            except OSError as exc:
                mllp = None
                raise StartupError(
                    EXIT_HL7_PORT, _bind_failure("MLLP port", cfg.hl7_bind, cfg.hl7_port, exc)
                ) from None
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
                http = None
                raise StartupError(
                    EXIT_HTTP_PORT, _bind_failure("HTTP port", cfg.http_bind, cfg.http_port, exc)
                ) from None
        if worker:
            worker.start()
        if cfg.orthanc_url:  # Orthanc as witness: its change feed (delivery/orthanc_witness)
            from worklist_mpps.delivery.orthanc_witness import WitnessFollower

            follower = WitnessFollower(db, cfg, ctx.targets, ctx.notify)
            follower.start()
        stations.start()
        if lifecycle:  # expiry and purge (README "Stale items and retention")
            lifecycle.start()
        print(
            f"worklist-mpps: {cfg.ae_title} listening on {cfg.bind}:{server.port}"
            + (f", HTTP on {cfg.http_bind}:{http.port}" if http else "")
            + (f", MLLP (HL7) on {cfg.hl7_bind}:{mllp.port}" if mllp else ""),
            flush=True,
        )
        running = True
        while not stop_signals:
            time.sleep(0.2)
    finally:
        if running:
            log.info("Shutting down")
        if http:
            http.stop()
        if mllp:
            mllp.stop()  # the messages in progress are committed and acknowledged first
        server.stop()  # in-flight associations finish first
        stations.stop()  # after the listener: its last queries are written too
        if lifecycle:
            lifecycle.stop()
        if follower:
            follower.stop()
        if worker:
            worker.stop()
        db.dispose()
    return 0


def build_outbox_worker(cfg: Config, db: Database):  # noqa: ANN201
    """The outbox worker for the configured targets, or None without targets: Orthanc and
    the MPPS peers (MPPS events), the enabled HL7 destinations (order status, hl7:NAME)."""
    from worklist_mpps.delivery.forward import ForwardTarget
    from worklist_mpps.delivery.hl7_out import HL7StatusTarget
    from worklist_mpps.delivery.orthanc import OrthancTarget
    from worklist_mpps.delivery.worker import OutboxWorker, Target

    targets: dict[str, Target] = {}
    if cfg.orthanc_url:
        targets["orthanc"] = OrthancTarget(db, cfg)
    for peer in cfg.forward_peers:
        if peer.enabled:
            forward = ForwardTarget(peer, cfg.ae_title)
            targets[forward.name] = forward
    for destination in cfg.hl7_destinations:
        if destination.enabled:
            status = HL7StatusTarget(destination, cfg)
            targets[status.name] = status
    return OutboxWorker(db, cfg, targets) if targets else None


def cmd_outbox(cfg: Config, args: argparse.Namespace) -> int:
    from worklist_mpps.services import outbox

    db = open_database(cfg)
    try:
        if args.action == "list":
            rows = outbox.list_messages(db, args.state, args.limit)
            print(
                json.dumps(rows, indent=2, ensure_ascii=False)
                if args.json
                else _table(
                    rows,
                    [
                        ("id", "ID"),
                        ("target", "TARGET"),
                        ("event", "EVENT"),
                        ("pps_status", "STATUS"),
                        ("state", "STATE"),
                        ("attempts", "TRIES"),
                        ("next_attempt_at", "NEXT"),
                        ("mpps_uid", "MPPS UID / ITEM"),
                        ("last_error", "LAST ERROR / NOTE"),
                    ],
                )
            )
            return 0
        if not args.ids and not args.all_failed:
            raise ConfigError("outbox retry needs message ids or --all-failed")
        count = outbox.retry(db, args.ids, args.all_failed)
        print(f"{count} message(s) due again")
        return 0
    finally:
        db.dispose()


def cmd_db(cfg: Config, args: argparse.Namespace) -> int:
    db = Database(cfg.database_url, cfg.sqlite_synchronous)
    try:
        if args.action == "upgrade":
            migrate.upgrade(db.engine)
            print(f"database at revision {migrate.current_revision(db.engine)}")
        else:
            current = migrate.current_revision(db.engine)
            head = migrate.head_revision()
            print(f"current {current or '(empty)'}, head {head}")
            return 0 if current == head else 1
    finally:
        db.dispose()
    return 0


def cmd_load(cfg: Config, args: argparse.Namespace) -> int:
    db = open_database(cfg, migrate_now=cfg.migrate_on_start)
    try:
        created, updated = load_file(db, args.file, cfg.uid_prefix)
    finally:
        db.dispose()
    print(f"{args.file}: {created} created, {updated} updated")
    return 0


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain text table: columns are (key, heading)."""
    cells = [[h for _, h in columns]] + [
        ["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


MPPS_COLUMNS = [
    ("status", "STATUS"),
    ("start", "START"),
    ("end", "END"),
    ("modality", "MOD"),
    ("station_ae_title", "STATION"),
    ("accession_number", "ACCESSION"),
    ("patient_id", "PATIENT ID"),
    ("patient_name", "PATIENT"),
    ("series", "SERIES"),
    ("instances", "IMAGES"),
    ("sop_instance_uid", "MPPS UID"),
]


def cmd_mpps(cfg: Config, args: argparse.Namespace) -> int:
    from worklist_mpps.services import mpps

    db = open_database(cfg)
    try:
        if args.action == "list":
            rows = mpps.list_steps(db, args.status, args.limit)
            print(
                json.dumps(rows, indent=2, ensure_ascii=False)
                if args.json
                else _table(rows, MPPS_COLUMNS)
            )
            return 0
        if not args.uid:
            raise ConfigError("mpps show needs the MPPS SOP Instance UID")
        try:
            summary, ds = mpps.show_step(db, args.uid)
        except mpps.MPPSError as exc:
            print(f"worklist-mpps: {exc.comment}", file=sys.stderr)
            return 1
        if args.json:
            print(
                json.dumps({**summary, "dataset": ds.to_json_dict()}, indent=2, ensure_ascii=False)
            )
        else:
            width = max(len(k) for k in summary)
            for key, value in summary.items():
                if isinstance(value, list):
                    value = ", ".join(value) or "-"
                print(f"{key:<{width}}  {'-' if value is None else value}")
            print()
            print(ds)
        return 0
    finally:
        db.dispose()


def cmd_audit(cfg: Config, args: argparse.Namespace) -> int:
    import datetime as dt

    from worklist_mpps.services import audit

    since = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since)
        except ValueError:
            raise ConfigError(f"--since {args.since!r}: an ISO date or date-time") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    db = open_database(cfg)
    try:
        rows = audit.query(db, since, args.actor, args.action, args.target, args.limit)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            row["detail"] = json.dumps(row["detail"], ensure_ascii=False) if row["detail"] else ""
        print(
            _table(
                rows,
                [
                    ("at", "WHEN (UTC)"),
                    ("channel", "VIA"),
                    ("actor", "WHO"),
                    ("address", "FROM"),
                    ("action", "WHAT"),
                    ("target", "TARGET"),
                    ("detail", "DETAIL"),
                ],
            )
        )
    return 0


def cmd_ping(cfg: Config, args: argparse.Namespace) -> int:
    """C-ECHO the server (docker healthcheck): exit 0 when it answers."""
    from pynetdicom.sop_class import Verification

    from worklist_mpps.client.scu import Association, BadValue, Peer, SCUError

    host = args.host or ("127.0.0.1" if cfg.bind in ("0.0.0.0", "::", "") else cfg.bind)
    try:
        with Association(
            Peer(host, cfg.port, cfg.ae_title), "WM-PING", args.timeout, contexts=(Verification,)
        ) as assoc:
            status = assoc.established.send_c_echo()
    except (SCUError, BadValue) as exc:
        print(f"worklist-mpps ping: {exc.message}", file=sys.stderr)
        return 1
    ok = status.get("Status") == 0
    print(f"{cfg.ae_title}@{host}:{cfg.port} " + ("answers C-ECHO" if ok else "no C-ECHO"))
    if not ok:
        return EXIT_FAILED
    return ping_database(cfg) if args.deep else 0


def ping_database(cfg: Config) -> int:
    """``ping --deep``: commit one write to the configured database (the heartbeat row),
    as /healthz does: 0, or 3 (unreachable) / 6 (read-only, disk full) with the reason."""
    db = Database(cfg.database_url, cfg.sqlite_synchronous)
    try:
        path = sqlite_file(db)
        if path is not None and not path.is_file():  # connecting would create it
            raise StartupError(
                EXIT_DB_UNREACHABLE, f"database unreachable: no SQLite database file {path}"
            )
        health = probe_write(db, "worklist-mpps ping")
    finally:
        db.dispose()
    if not health.ok:
        raise database_failure(health)
    print("database takes a write")
    return 0


def cmd_config(cfg: Config, _args: argparse.Namespace) -> int:
    width = max(len(k) for k, _, _ in describe_defaults())
    for key, _default, help_text in describe_defaults():
        print(f"{key:<{width}}  {shown_value(key, getattr(cfg, key))}    # {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worklist-mpps",
        description="DICOM Modality Worklist and MPPS server for Orthanc sites.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the DICOM server")
    add_cli_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("db", help="database schema (Alembic migrations)")
    p.add_argument("action", choices=["upgrade", "current"])
    add_cli_flags(p)
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("load", help="load worklist items from a YAML file (idempotent)")
    p.add_argument("file")
    add_cli_flags(p)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("mpps", help="list or show performed procedure steps")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("uid", nargs="?", help="MPPS SOP Instance UID (show)")
    p.add_argument("--status", choices=["IN PROGRESS", "COMPLETED", "DISCONTINUED"])
    p.add_argument("--limit", type=int, default=50, help="newest N (list; default 50)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_cli_flags(p)
    p.set_defaults(func=cmd_mpps)

    p = sub.add_parser("outbox", help="notifications to Orthanc, MPPS peers and HL7 order placers")
    p.add_argument("action", choices=["list", "retry"])
    p.add_argument("ids", nargs="*", type=int, help="message ids (retry)")
    p.add_argument("--state", choices=["pending", "delivered", "failed", "superseded"])
    p.add_argument("--all-failed", action="store_true", help="retry every failed message")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    add_cli_flags(p)
    p.set_defaults(func=cmd_outbox)

    from worklist_mpps.cli import hl7  # late: it uses this module's helpers

    hl7.add_parser(sub)
    from worklist_mpps.cli import witness  # unmatched, link

    witness.add_parsers(sub)

    p = sub.add_parser("audit", help="who changed what, and when")
    p.add_argument("--since", help="ISO date or date-time (UTC unless a zone is given)")
    p.add_argument("--actor", help="calling AE title, HTTP user or CLI user")
    p.add_argument("--action", help="e.g. mpps.create, mpps.update, item.create, item.cancel")
    p.add_argument("--target", help="MPPS UID, item:ID or patient:ID")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    add_cli_flags(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("ping", help="C-ECHO the server (healthcheck)")
    p.add_argument("--host", help="address to call (default: the bind address or 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument(
        "--deep",
        action="store_true",
        help="also commit a write to the database (exit 3 unreachable, 6 read-only or disk full)",
    )
    add_cli_flags(p)
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("config", help="print the effective configuration")
    add_cli_flags(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        setup_logging(cfg.log_level)
        return args.func(cfg, args)
    except (ConfigError, LoadError) as exc:
        print(f"worklist-mpps: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SQLAlchemyError as exc:  # one line, no traceback (README "Exit codes")
        failure = database_failure(describe_db_error(exc))
        print(f"worklist-mpps: {failure}", file=sys.stderr)
        return failure.code
    except StartupError as exc:
        print(f"worklist-mpps: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
