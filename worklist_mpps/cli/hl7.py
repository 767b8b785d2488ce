"""``worklist-mpps hl7 list|show``: the messages of the HL7 order feed and their ACKs
(apart from cli/main.py, which is long enough)."""

from __future__ import annotations

import argparse
import json
import sys

from worklist_mpps.cli.main import _table, open_database
from worklist_mpps.config import Config, ConfigError, add_cli_flags

LIST_COLUMNS = [
    ("id", "ID"),
    ("received_at", "RECEIVED (UTC)"),
    ("sender", "SENDER"),
    ("address", "FROM"),
    ("control_id", "CONTROL ID"),
    ("message_type", "TYPE"),
    ("order_control", "ORC"),
    ("patient_id", "PATIENT ID"),
    ("ack_code", "ACK"),
    ("items", "ITEMS"),
    ("error", "ERROR"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hl7", help="messages received on the HL7 order feed, with their ACKs")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("id", nargs="?", type=int, help="message id (show)")
    p.add_argument("--ack", type=str.upper, choices=["AA", "AE", "AR"], help="list: only these")
    p.add_argument("--limit", type=int, default=100, help="newest N (list; default 100)")
    p.add_argument("--raw", action="store_true", help="show: the message bytes as received")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_cli_flags(p)
    p.set_defaults(func=cmd_hl7)


def _sender(row: dict) -> str:
    """MSH-3/MSH-4, first components (HD.1)."""
    application = (row["sending_application"] or "").split("^")[0]
    facility = (row["sending_facility"] or "").split("^")[0]
    return f"{application}/{facility}" if facility else application


def cmd_hl7(cfg: Config, args: argparse.Namespace) -> int:
    from worklist_mpps.services import hl7_log, hl7_messages

    if args.action == "show" and args.id is None:
        raise ConfigError("hl7 show needs the message id (hl7 list shows them)")
    db = open_database(cfg)
    try:
        if args.action == "list":
            rows = hl7_log.list_messages(db, ack_code=args.ack, limit=args.limit)
            if args.json:
                print(json.dumps(rows, indent=2, ensure_ascii=False))
            else:
                for row in rows:
                    row["sender"] = _sender(row)
                    row["items"] = ",".join(str(i) for i in row["item_ids"])
                print(_table(rows, LIST_COLUMNS))
            return 0
        if args.raw:  # as received: resendable with mllp_send --loose --file
            raw = hl7_messages.raw_message(db, args.id)
            if raw is not None:
                sys.stdout.buffer.write(raw)
                sys.stdout.buffer.flush()
                return 0
            message = None
        else:
            message = hl7_log.show_message(db, args.id)
            if message is not None:
                message["items"] = hl7_messages.touched_items(db, message.pop("item_ids"))
    finally:
        db.dispose()
    if message is None:
        print(f"worklist-mpps: no HL7 message {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(message, indent=2, ensure_ascii=False))
        return 0
    text, ack, size = message.pop("message"), message.pop("ack"), message.pop("raw_size")
    message["items"] = (
        ", ".join(
            f"{i['id']}"
            + (
                f" (accession {i['accession_number']}, {i['sps_status']})"
                if "sps_status" in i
                else ""
            )
            for i in message["items"]
        )
        or None
    )
    width = max(len(k) for k in message)
    for key, value in message.items():
        print(f"{key:<{width}}  {'-' if value in (None, '') else value}")
    print(f"\nmessage ({size} bytes):\n{text}\n\nACK:\n{ack}")
    return 0
