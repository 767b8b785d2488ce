"""``worklist-mpps``: serve, manage the database, load worklists.

Over 400 lines: one small function per subcommand, and serve's start-up with its exit
codes; each calls the service layer for its work.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import time

from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.cli.runtime import (
    EXIT_CONFIG,
    EXIT_DB_UNREACHABLE,
    EXIT_FAILED,
    Runtime,
    StartupError,
    database_failure,
    open_database,
)
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
    describe_db_error,
    probe_write,
    sqlite_file,
)
from worklist_mpps.services.loader import LoadError, load_file

log = logging.getLogger("worklist_mpps")


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


def cmd_serve(cfg: Config, _args: argparse.Namespace) -> int:
    runtime = Runtime(cfg)  # cli/runtime.py: what runs, its start-up and its stop
    runtime.prepare()
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
    try:
        runtime.start()
        print(runtime.banner(), flush=True)
        while not stop_signals:
            time.sleep(0.2)
    finally:
        runtime.stop()
    return 0


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
