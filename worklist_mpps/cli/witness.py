"""``worklist-mpps unmatched`` (studies in Orthanc without an order) and ``worklist-mpps
link`` (a study or an unscheduled MPPS to the item it was made for), apart from
cli/main.py, which is long enough. The work is in services/witness.py and links.py."""

from __future__ import annotations

import argparse
import json
import sys

from worklist_mpps.cli.main import EXIT_FAILED, _table, open_database
from worklist_mpps.config import Config, add_cli_flags
from worklist_mpps.services.audit import Actor

UNMATCHED_COLUMNS = [
    ("stable_at", "STABLE (UTC)"),
    ("study_date", "DATE"),
    ("modalities", "MOD"),
    ("accession_number", "ACCESSION"),
    ("patient_id", "PATIENT ID"),
    ("patient_name", "PATIENT"),
    ("study_description", "DESCRIPTION"),
    ("series", "SERIES"),
    ("instances", "IMAGES"),
    ("orthanc_id", "ORTHANC ID"),
]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unmatched", help="stable studies in Orthanc that match no worklist item")
    p.add_argument("--limit", type=int, default=200, help="newest N (default 200)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_cli_flags(p)
    p.set_defaults(func=cmd_unmatched)

    p = sub.add_parser("link", help="link a study or an unscheduled MPPS to a worklist item")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="ORTHANC_ID", help="a study (worklist-mpps unmatched)")
    which.add_argument("--mpps", metavar="UID", help="an MPPS SOP Instance UID")
    p.add_argument("--item", type=int, required=True, help="the worklist item's ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_cli_flags(p)
    p.set_defaults(func=cmd_link)


def cmd_unmatched(cfg: Config, args: argparse.Namespace) -> int:
    from worklist_mpps.services import witness

    db = open_database(cfg)
    try:
        listing = witness.unmatched_studies(db, max(1, args.limit), candidates=args.json)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(listing.rows, indent=2, ensure_ascii=False))
    else:
        print(_table(listing.rows, UNMATCHED_COLUMNS))
        if listing.total > len(listing.rows):
            print(f"({listing.total} in all, newest {len(listing.rows)} shown)")
    return 0


def _targets(cfg: Config) -> list[str]:
    from worklist_mpps.services import outbox

    return outbox.target_names(cfg) + outbox.status_target_names(cfg)


def cmd_link(cfg: Config, args: argparse.Namespace) -> int:
    from worklist_mpps.services import links, witness

    db = open_database(cfg)
    actor = Actor.cli()
    try:
        if args.mpps:
            changes = links.link_mpps(db, actor, args.mpps, args.item, _targets(cfg))
            result = {
                "mpps": args.mpps,
                "item_id": args.item,
                "status_changes": [
                    {"item_id": c.item.id, "from": c.old, "to": c.new} for c in changes
                ],
            }
        else:
            content = None
            if cfg.orthanc_url:  # the item is completed from the study at once
                from worklist_mpps.delivery.orthanc import OrthancClient
                from worklist_mpps.delivery.orthanc_witness import fetch_study
                from worklist_mpps.delivery.worker import Retry

                try:
                    content = fetch_study(
                        OrthancClient(cfg.orthanc_url, cfg.orthanc_username, cfg.orthanc_password),
                        args.study,
                    )
                except Retry as exc:  # the server's follower completes it later
                    print(f"worklist-mpps: {exc}; the server completes the item", file=sys.stderr)
            result = witness.link_study(
                db, actor, args.study, args.item, _targets(cfg), content, cfg.uid_prefix
            )
    except links.LinkError as exc:
        print(f"worklist-mpps: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        db.dispose()
    print(
        json.dumps(result, indent=2, ensure_ascii=False)
        if args.json
        else " ".join(f"{k}={v}" for k, v in result.items())
    )
    return 0
