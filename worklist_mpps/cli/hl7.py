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


def cmd_hl7(cfg: Config, args: argparse.Namespace) -> int:
    from worklist_mpps.services import hl7_messages

    db = open_database(cfg)
    try:
        if args.action == "list":
            rows = hl7_messages.list_messages(db, args.ack, args.limit)
            if args.json:
                print(json.dumps(rows, indent=2, ensure_ascii=False))
            else:
                for row in rows:
                    row["items"] = ",".join(str(i) for i in row["item_ids"])
                print(_table(rows, LIST_COLUMNS))
            return 0
        if args.id is None:
            raise ConfigError("hl7 show needs the message id (hl7 list shows them)")
        message = hl7_messages.show_message(db, args.id)
    finally:
        db.dispose()
    if message is None:
        print(f"worklist-mpps: no HL7 message {args.id}", file=sys.stderr)
        return 1
    if args.raw:  # as received: resendable with mllp_send --loose --file
        sys.stdout.buffer.write(message["raw"])
        sys.stdout.buffer.flush()
        return 0
    raw = message.pop("raw")
    message.pop("ack_raw")
    if args.json:  # the bytes as segments (decoded with MSH-18)
        print(json.dumps(message, indent=2, ensure_ascii=False))
        return 0
    lines, ack_lines = message.pop("segments"), message.pop("ack_segments")
    items = message.pop("items")
    message.pop("item_ids")
    message["items"] = (
        ", ".join(
            f"{i['id']}"
            + (f" (accession {i['accession_number']}, {i['sps_status']})" if len(i) > 1 else "")
            for i in items
        )
        or None
    )
    width = max(len(k) for k in message)
    for key, value in message.items():
        print(f"{key:<{width}}  {'-' if value in (None, '') else value}")
    print(f"\nmessage ({len(raw)} bytes):")
    print("\n".join(lines))
    print("\nACK:")
    print("\n".join(ack_lines))
    return 0
