"""``dicom-mpps``: send MPPS N-CREATE / N-SET / N-GET from a modality or a script.

    dicom-mpps create pacs://server:11112 --aet CT01 --study-uid 1.2.3 --status "IN PROGRESS"
    dicom-mpps update pacs://server:11112 --aet CT01 --mpps-uid 1.2.3.4 --status COMPLETED \\
        --study-uid 1.2.3 --series-uid 1.2.3.5 --image-uid 1.2.3.5.1 --image-uid 1.2.3.5.2
    dicom-mpps get pacs://server:11112 --aet CT01 --mpps-uid 1.2.3.4 --json

Over 400 lines: the argument parser of four commands and their help texts; the DICOM work
is in client/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys

import pydicom.uid as uids
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from worklist_mpps.client import messages as msg
from worklist_mpps.client.acquisition import series_from_files
from worklist_mpps.client.scu import (
    EXIT_CODES,
    Association,
    Peer,
    SCUError,
    WorklistLookup,
    describe_status,
    parse_url,
)
from worklist_mpps.services.dicom import BadValue, check_ae_title, check_uid

log = logging.getLogger("dicom-mpps")

# Storage SOP Class of --image-uid when --sop-class-uid is not given, by Modality.
STORAGE_BY_MODALITY = {
    "CT": uids.CTImageStorage,
    "MR": uids.MRImageStorage,
    "US": uids.UltrasoundImageStorage,
    "CR": uids.ComputedRadiographyImageStorage,
    "DX": uids.DigitalXRayImageStorageForPresentation,
    "MG": uids.DigitalMammographyXRayImageStorageForPresentation,
    "XA": uids.XRayAngiographicImageStorage,
    "RF": uids.XRayRadiofluoroscopicImageStorage,
    "NM": uids.NuclearMedicineImageStorage,
    "PT": uids.PositronEmissionTomographyImageStorage,
}


# --- create -----------------------------------------------------------------------------------


def _worklist_identifier(args: argparse.Namespace, accession: str | None) -> Dataset:
    """C-FIND keys: everything RAD-6 copies into the N-CREATE (RAD TF-2x Table A.1-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in (
        "PatientName",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
    ):
        setattr(ds, keyword, "")
    ds.PatientID = args.patient_id or ""
    ds.AccessionNumber = accession or ""
    ds.StudyInstanceUID = args.study_uid or ""
    ds.RequestedProcedureCodeSequence = Sequence()
    item = Dataset()
    for keyword in (
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepDescription",
    ):
        setattr(item, keyword, "")
    item.ScheduledProcedureStepID = args.procedure_step_id or ""
    item.ScheduledProcedureStepStartDate = (
        "" if accession or args.study_uid else (args.date or dt.date.today().strftime("%Y%m%d"))
    )
    item.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def _codes(seq) -> list[msg.Code]:  # noqa: ANN001
    return [
        msg.Code(
            str(c.get("CodeValue", "")),
            str(c.get("CodingSchemeDesignator", "")),
            str(c.get("CodeMeaning", "")),
        )
        for c in seq or []
    ]


def lookup_worklist(args: argparse.Namespace, peer: Peer) -> list[Dataset]:
    """The worklist items named by --accession (each) or --patient-id [+ --date]."""
    if not (args.accession or args.patient_id or args.study_uid):
        raise BadValue("--from-worklist needs --accession, --patient-id or --study-uid")
    worklist_peer = parse_url(args.worklist, args.called_aet) if args.worklist else peer
    found: list[Dataset] = []
    with Association(worklist_peer, args.aet, args.timeout) as assoc:
        for accession in args.accession or [None]:
            matches = assoc.c_find_worklist(_worklist_identifier(args, accession))
            what = (
                f"accession {accession}"
                if accession
                else (
                    f"patient {args.patient_id}" if args.patient_id else f"study {args.study_uid}"
                )
            )
            if not matches:
                raise WorklistLookup(f"no scheduled worklist item for {what} on {worklist_peer}")
            if len(matches) > 1 and not (args.accession and len(args.accession) > 1):
                listing = "; ".join(
                    f"{m.get('AccessionNumber', '')}/"
                    f"{m.ScheduledProcedureStepSequence[0].get('ScheduledProcedureStepID', '')}"
                    for m in matches
                )
                raise WorklistLookup(
                    f"{len(matches)} worklist items for {what} ({listing}): "
                    "choose one with --procedure-step-id or --accession"
                )
            found.extend(matches)
    return found


def build_create(args: argparse.Namespace, peer: Peer) -> Dataset:
    """The N-CREATE attribute list from the worklist and/or the direct options."""
    patient: dict[str, str] = {
        "patient_name": args.patient_name or "",
        "patient_id": args.patient_id or "",
        "birth_date": "",
        "sex": "",
    }
    modality = args.modality
    procedure_codes: list[msg.Code] = []
    if args.from_worklist:
        steps = []
        for wl in lookup_worklist(args, peer):
            sps = wl.ScheduledProcedureStepSequence[0]
            steps.append(
                msg.ScheduledStep(
                    str(wl.StudyInstanceUID),
                    str(wl.get("AccessionNumber", "")),
                    str(wl.get("RequestedProcedureID", "")),
                    str(wl.get("RequestedProcedureDescription", "")),
                    str(sps.get("ScheduledProcedureStepID", "")),
                    str(sps.get("ScheduledProcedureStepDescription", "")),
                    _codes(sps.get("ScheduledProtocolCodeSequence")),
                )
            )
            procedure_codes += _codes(wl.get("RequestedProcedureCodeSequence"))
            patient = {
                "patient_name": args.patient_name or str(wl.get("PatientName", "")),
                "patient_id": str(wl.get("PatientID", "")),
                "birth_date": str(wl.get("PatientBirthDate", "")),
                "sex": str(wl.get("PatientSex", "")),
            }
            modality = modality or str(sps.get("Modality", "")) or None
    else:
        if not args.study_uid:
            raise BadValue("create needs --study-uid (or --from-worklist)")
        steps = [
            msg.ScheduledStep(
                args.study_uid, (args.accession or [""])[0], sps_id=args.procedure_step_id or ""
            )
        ]
    ds = msg.n_create(
        steps,
        modality=modality or "OT",
        station_ae_title=args.aet,
        pps_id=args.pps_id,
        description=args.description or "",
        status=args.status,
        patient_name=patient["patient_name"],
        patient_id=patient["patient_id"],
        birth_date=patient["birth_date"],
        sex=patient["sex"],
    )
    ds.ProcedureCodeSequence = Sequence([c.item() for c in procedure_codes])
    return ds


def cmd_create(args: argparse.Namespace, peer: Peer) -> dict:
    for uid in filter(None, [args.study_uid, args.mpps_uid]):
        check_uid(uid, "UID")
    uid = None if args.server_assigns_uid else (args.mpps_uid or uids.generate_uid(prefix=None))
    attributes = build_create(args, peer)
    with Association(peer, args.aet, args.timeout) as assoc:
        status, final_uid = assoc.n_create(attributes, uid)
    ssas = attributes.ScheduledStepAttributesSequence
    return {
        "mpps_uid": final_uid,
        "status": f"0x{status.Status:04X}",
        "warning": describe_status(status) if status.Status else None,
        "pps_status": args.status,
        "study_instance_uids": [str(s.StudyInstanceUID) for s in ssas],
        "accession_numbers": [str(s.AccessionNumber) for s in ssas if s.AccessionNumber],
    }


# --- update -----------------------------------------------------------------------------------


def _series(args: argparse.Namespace, assoc: Association) -> list[msg.Series] | None:
    """The Performed Series Sequence to send: from --images, --image-uid, or none."""
    if args.images:
        return series_from_files(args.images, args.study_uid)
    if not args.image_uid and not args.series_uid:
        return None  # the SCP keeps what it has
    if not args.series_uid:
        raise BadValue("--image-uid needs --series-uid")
    sop_class = args.sop_class_uid
    if sop_class is None and args.image_uid:
        sop_class = uids.SecondaryCaptureImageStorage
        try:
            _, current = assoc.n_get(args.mpps_uid, [int(Tag("Modality"))])
            sop_class = STORAGE_BY_MODALITY.get(str(current.get("Modality", "")), sop_class)
        except SCUError as exc:
            log.info("N-GET of Modality failed (%s): Secondary Capture assumed", exc.message)
    return [
        msg.Series(
            args.series_uid,
            [msg.Instance(sop_class, uid) for uid in args.image_uid or []],
            protocol_name=args.protocol_name or "",
        )
    ]


def cmd_update(args: argparse.Namespace, peer: Peer) -> dict:
    for uid in filter(
        None,
        [
            args.mpps_uid,
            args.study_uid,
            args.series_uid,
            args.sop_class_uid,
            *(args.image_uid or []),
        ],
    ):
        check_uid(uid, "UID")
    reason = None
    if args.discontinuation_reason:
        if args.status != "DISCONTINUED":
            raise BadValue("--discontinuation-reason goes with --status DISCONTINUED")
        try:
            reason = msg.discontinuation_reason(args.discontinuation_reason)
        except ValueError as exc:
            raise BadValue(str(exc)) from None
    with Association(peer, args.aet, args.timeout) as assoc:
        series = _series(args, assoc)
        mods = (
            msg.n_set_completed(series)
            if args.status == "COMPLETED"
            else msg.n_set_discontinued(series, reason)
        )
        status = assoc.n_set(args.mpps_uid, mods)
    return {
        "mpps_uid": args.mpps_uid,
        "pps_status": args.status,
        "status": f"0x{status.Status:04X}",
        "warning": describe_status(status) if status.Status else None,
        "series": len(series) if series is not None else None,
        "instances": sum(len(s.instances) for s in series) if series is not None else None,
    }


# --- get --------------------------------------------------------------------------------------


def _tag(text: str) -> int:
    if tag := tag_for_keyword(text):
        return tag
    try:
        group, element = text.strip("()").split(",")
        return int(Tag(int(group, 16), int(element, 16)))
    except ValueError:
        raise BadValue(f"unknown attribute {text!r}: a keyword or gggg,eeee") from None


def cmd_get(args: argparse.Namespace, peer: Peer) -> Dataset:
    check_uid(args.mpps_uid, "UID")
    tags = [_tag(t) for t in args.tag or []]
    with Association(peer, args.aet, args.timeout) as assoc:
        _, ds = assoc.n_get(args.mpps_uid, tags)
    return ds


# --- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {code:>2}  {text}" for code, text in EXIT_CODES)
    parser = argparse.ArgumentParser(
        prog="dicom-mpps",
        description="Send DICOM MPPS (PS3.4 Annex F) to a Performed Procedure Step Manager.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("url", help="pacs://host:port (pacs://CALLED_AE@host:port also works)")
        p.add_argument("--aet", required=True, help="calling AE title: the modality's own")
        p.add_argument("--called-aet", default="ANY-SCP", help="called AE title (ANY-SCP)")
        p.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="seconds for connect, association and each response (60)",
        )
        p.add_argument("--json", action="store_true", help="machine-readable result")
        p.add_argument("-v", "--verbose", action="store_true", help="log the exchange")

    p = sub.add_parser(
        "create",
        help="N-CREATE: the procedure step has started",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("--study-uid", help="Study Instance UID (required without --from-worklist)")
    p.add_argument(
        "--status", default="IN PROGRESS", help="Performed Procedure Step Status (IN PROGRESS)"
    )
    p.add_argument(
        "--from-worklist",
        action="store_true",
        help="copy patient and scheduled step from a worklist C-FIND",
    )
    p.add_argument("--worklist", metavar="URL", help="worklist server (default: the same URL)")
    p.add_argument(
        "--accession",
        action="append",
        help="accession number (repeat for several requested procedures)",
    )
    p.add_argument("--patient-id")
    p.add_argument("--date", help="with --patient-id: scheduled date YYYYMMDD (today)")
    p.add_argument("--patient-name", help="Family^Given")
    p.add_argument("--modality", help="Modality (from the worklist, else OT)")
    p.add_argument("--procedure-step-id", help="Scheduled Procedure Step ID")
    p.add_argument("--mpps-uid", help="SOP Instance UID to create (default: a new 2.25 UID)")
    p.add_argument(
        "--server-assigns-uid",
        action="store_true",
        help="send no SOP Instance UID and print the one the server assigns",
    )
    p.add_argument("--pps-id", help="Performed Procedure Step ID (default: from the time)")
    p.add_argument("--description", help="Performed Procedure Step Description")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser(
        "update",
        help="N-SET: the procedure step completed or was discontinued",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("--mpps-uid", required=True, help="SOP Instance UID of the step")
    p.add_argument("--status", required=True, choices=["COMPLETED", "DISCONTINUED"])
    p.add_argument("--study-uid", help="Study Instance UID (selects the files of --images)")
    p.add_argument("--series-uid", help="Series Instance UID of --image-uid")
    p.add_argument("--image-uid", action="append", help="SOP Instance UID (repeatable)")
    p.add_argument(
        "--sop-class-uid", help="SOP Class UID of --image-uid (default: by the step's Modality)"
    )
    p.add_argument("--images", metavar="DIR", help="read series and images from DICOM files")
    p.add_argument("--protocol-name", help="Protocol Name of the series")
    p.add_argument(
        "--discontinuation-reason",
        metavar="CODE",
        help="CID 9300 code, e.g. 110514 (Incorrect worklist entry selected)",
    )
    p.set_defaults(func=cmd_update)

    p = sub.add_parser(
        "get",
        help="N-GET: show a procedure step",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("--mpps-uid", required=True)
    p.add_argument(
        "--tag", action="append", help="attribute keyword or gggg,eeee (repeatable; default: all)"
    )
    p.set_defaults(func=cmd_get)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="dicom-mpps: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pynetdicom").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    try:
        check_ae_title(args.aet, "calling AE title (--aet)")
        peer = parse_url(args.url, args.called_aet)
        result = args.func(args, peer)
    except (SCUError, BadValue) as exc:  # BadValue: the value rules of services/dicom.py
        print(f"dicom-mpps: {exc.message}", file=sys.stderr)
        if args.json:
            print(
                json.dumps(
                    {
                        "error": exc.kind,
                        "message": exc.message,
                        "exit_code": exc.exit_code,
                        **{k: v for k, v in exc.details.items() if v is not None},
                    }
                )
            )
        return exc.exit_code
    if isinstance(result, Dataset):
        print(
            json.dumps(result.to_json_dict(), indent=2, ensure_ascii=False) if args.json else result
        )
    elif args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        if result.get("warning"):
            print(f"dicom-mpps: warning {result['warning']}", file=sys.stderr)
        if args.command == "create":
            print(result["mpps_uid"])
        else:
            print(f"{result['mpps_uid']} {result['pps_status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
