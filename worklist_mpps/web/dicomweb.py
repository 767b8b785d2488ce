"""DICOMweb: MPPS (PS3.18 chapter 15) and worklist search (PS3.18 chapter 14).

Same service layer as the DIMSE side (mpps.py, worklist.py): a rule is
written once. DIMSE status codes map to HTTP as PS3.18 15.4-15.6 specify.
"""

from __future__ import annotations

import json
import re
import uuid

from fastapi import APIRouter, Query, Request, Response
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from worklist_mpps.services import mpps, status, worklist
from worklist_mpps.services.dicom import BadValue, check_uid
from worklist_mpps.services.matching import MatchError
from worklist_mpps.services.status import MPPSError
from worklist_mpps.web.context import web_actor, web_context
from worklist_mpps.web.dicomjson import DicomJSONError, from_json
from worklist_mpps.web.dicomxml import XMLError, from_xml, to_xml
from worklist_mpps.web.errors import HTTPProblem

router = APIRouter(tags=["DICOMweb"])

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_XML = 'multipart/related; type="application/dicom+xml"'

# MPPS (DIMSE) status -> HTTP status (PS3.18 15.4.3, 15.5.3, 15.6.3)
HTTP_FOR_STATUS = {
    status.NO_SUCH_SOP_INSTANCE: 404,
    status.DUPLICATE_SOP_INSTANCE: 409,
    status.PROCESSING_FAILURE: 409,  # 0x0110/0xA710: the step is final
    status.ATTRIBUTE_LIST_ERROR: 409,  # changes incompatible with the target
    status.INVALID_ATTRIBUTE_VALUE: 400,
    status.MISSING_ATTRIBUTE: 400,
    status.MISSING_ATTRIBUTE_VALUE: 400,
}


def _problem_from(exc: MPPSError) -> HTTPProblem:
    return HTTPProblem(HTTP_FOR_STATUS.get(exc.status, 400), exc.comment, dimse_status=exc.status)


# --- media types ---------------------------------------------------------------------------------


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def _multipart_first_part(body: bytes, content_type: str) -> tuple[bytes, str]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise HTTPProblem(400, "multipart/related without a boundary")
    boundary = b"--" + match.group(1).encode()
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, payload = part.partition(b"\r\n\r\n")
        part_type = re.search(rb"content-type:\s*([^\r\n;]+)", head, re.I)
        return payload.rstrip(b"\r\n"), (
            part_type.group(1).decode("latin-1").lower() if part_type else DICOM_XML
        )
    raise HTTPProblem(400, "multipart/related body has no part")


def parse_body(body: bytes, content_type: str | None) -> Dataset:
    """A dataset from application/dicom+json or application/dicom+xml (PS3.18 8.7.3).

    Nothing is guessed: another or no Content-Type is a 415 (the middleware refuses
    it first, guard.media_refusal).
    """
    media = _media_type(content_type)
    if media == "multipart/related":
        body, media = _multipart_first_part(body, content_type or "")
    try:
        if media == DICOM_JSON:
            ds = from_json(body)
        elif media == DICOM_XML:
            ds = from_xml(body)
        else:
            raise HTTPProblem(
                415, f"unsupported Content-Type {media or None!r}: use {DICOM_JSON} or {DICOM_XML}"
            )
        # Both encodings are Unicode text (PS3.18 F.2, PS3.19 A.1)
        ds.SpecificCharacterSet = "ISO_IR 192"
        for _ in ds.iterall():  # convert every value now: a bad one is a 400, not a 500
            pass
    except HTTPProblem:
        raise
    except XMLError as exc:
        raise HTTPProblem(400, str(exc)) from None
    except (DicomJSONError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise HTTPProblem(400, f"invalid DICOM JSON: {exc}") from None
    return ds


def _accept(request: Request, allowed: tuple[str, ...]) -> str:
    """The response media type chosen from the Accept header (406 when none fits)."""
    header = request.headers.get("accept", "")
    if not header.strip():
        return allowed[0]
    for entry in sorted(header.split(","), key=_quality, reverse=True):  # stable: ties keep order
        media = _media_type(entry)
        if media in ("*/*", "application/*", "application/json"):
            return allowed[0]
        if media == "multipart/related" and "dicom+xml" in entry and MULTIPART_XML in allowed:
            return MULTIPART_XML
        if media in allowed:
            return media
    raise HTTPProblem(406, f"cannot answer in {header!r}: {', '.join(allowed)}")


def _quality(entry: str) -> float:
    """The q parameter of one Accept entry (RFC 9110 12.4.2), 1 when absent."""
    match = re.search(r";\s*q=([0-9.]+)", entry)
    try:
        return float(match.group(1)) if match else 1.0
    except ValueError:
        return 0.0


def _render(datasets: list[Dataset], media: str, single: bool) -> Response:
    if media == DICOM_XML:
        return Response(to_xml(datasets[0]), media_type=DICOM_XML)
    if media == MULTIPART_XML:
        boundary = uuid.uuid4().hex
        parts = b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Type: application/dicom+xml\r\n\r\n"
            + to_xml(ds)
            + b"\r\n"
            for ds in datasets
        )
        return Response(
            parts + b"--" + boundary.encode() + b"--\r\n",
            media_type=f'multipart/related; type="application/dicom+xml"; boundary={boundary}',
        )
    docs = [ds.to_json_dict() for ds in datasets]
    return Response(
        json.dumps(docs[0] if single else docs, ensure_ascii=False), media_type=DICOM_JSON
    )


def _uid(value: str) -> str:
    try:
        return check_uid(value, "MPPS UID")
    except BadValue as exc:
        raise HTTPProblem(400, exc.message) from None


# --- MPPS (chapter 15) ---------------------------------------------------------------------------


@router.post(
    "/modality-performed-procedure-steps/{mpps_uid}",
    summary="Create (update with ?update) a Modality Performed Procedure Step",
    responses={
        201: {"description": "Created"},
        200: {"description": "Updated"},
        400: {},
        404: {},
        409: {},
        415: {},
        503: {},
    },
)
async def create_or_update(
    mpps_uid: str,
    request: Request,
    update: str | None = Query(None, description="present: Update"),
) -> Response:
    """Create (PS3.18 15.4) or, with the ``update`` query parameter, Update (15.5).

    The body is the N-CREATE (or N-SET) attribute list as application/dicom+json
    or application/dicom+xml.
    """
    ctx = web_context(request)
    uid = _uid(mpps_uid)
    ds = parse_body(await request.body(), request.headers.get("content-type"))
    for keyword in ("SOPInstanceUID", "AffectedSOPInstanceUID"):
        if keyword in ds and ds[keyword].value and str(ds[keyword].value) != uid:
            raise HTTPProblem(400, f"{keyword} in the body differs from the URL's UID")
        if keyword in ds:
            del ds[keyword]
    actor = web_actor(request)
    caller = f"HTTP:{actor.name}"[:16]
    try:
        if update is None:
            mpps.create(ctx.db, ds, uid, caller, ctx.config.uid_prefix, ctx.targets, actor=actor)
        else:
            mpps.update(ctx.db, uid, ds, caller, ctx.targets, all_or_nothing=True, actor=actor)
    except MPPSError as exc:
        raise _problem_from(exc) from None
    ctx.notify()
    if update is None:
        return Response(
            status_code=201, headers={"Location": f"/modality-performed-procedure-steps/{uid}"}
        )
    return Response(status_code=200)


def _includefields(values: list[str]) -> list[int] | None:
    """includefield: 'all' or attribute keywords / tags, comma-separated or repeated."""
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if not names or names == ["all"]:
        return None
    if "all" in names:
        raise HTTPProblem(400, "includefield=all excludes other includefield values")
    return [_attribute_tag(name) for name in names]


def _attribute_tag(name: str) -> int:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise HTTPProblem(400, f"unknown attribute {name!r}: a keyword or 8 hex digits")
    return tag


@router.get(
    "/modality-performed-procedure-steps/{mpps_uid}",
    summary="Retrieve a Modality Performed Procedure Step (PS3.18 15.6)",
    responses={
        200: {"content": {DICOM_JSON: {}, DICOM_XML: {}}},
        400: {},
        404: {},
        406: {},
        503: {},
    },
)
def retrieve(
    mpps_uid: str,
    request: Request,
    includefield: list[str] = Query([], description="'all' or attribute ids"),
) -> Response:
    ctx = web_context(request)
    uid = _uid(mpps_uid)
    media = _accept(request, (DICOM_JSON, DICOM_XML, MULTIPART_XML))
    try:
        _, ds = mpps.get(ctx.db, uid, _includefields(includefield))
    except MPPSError as exc:
        raise _problem_from(exc) from None
    return _render([ds], media, single=True)


# --- worklist search (chapter 14) ----------------------------------------------------------------

SEARCH_CONTROL = {"includefield", "offset", "limit", "fuzzymatching"}
TIMEZONE_OFFSET = 0x00080201  # answered in its offset, as C-FIND (services/worklist.py)
MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # SQL BIGINT: beyond is a 400, not a driver overflow


def _set_key(ds: Dataset, tag: int, value: str) -> None:
    keyword = keyword_for_tag(tag)
    if not keyword:
        raise HTTPProblem(400, f"unknown attribute {tag:08X}")
    vr = dictionary_VR(tag)
    if vr == "SQ":
        raise HTTPProblem(
            400, f"{keyword} is a sequence: match on its attributes ({keyword}.Attribute=value)"
        )
    if ds.get(Tag(tag)) is not None and not ds[Tag(tag)].is_empty:
        raise HTTPProblem(
            400, f"{keyword} given twice: give one value (a list of UIDs is comma-separated)"
        )
    # PS3.18 8.3.4.1: a UID list is comma-separated (a backslash list is accepted too)
    values = re.split(r"[,\\]", value) if vr == "UI" else value.split("\\")
    ds.add_new(Tag(tag), vr, values if len(values) > 1 else value)


def search_identifier(params: list[tuple[str, str]]) -> Dataset:
    """A C-FIND identifier from DICOMweb query parameters (PS3.18 8.3.4).

    Every Table K.6-1 key is returned; ``Sequence.Attribute=value`` (keywords or
    tags) matches inside the Scheduled Procedure Step Sequence.
    """
    identifier = Dataset()
    item = Dataset()
    for key in worklist.TOP_KEYS.values():
        identifier.add_new(Tag(key.keyword), key.vr, Sequence() if key.vr == "SQ" else None)
    for key in worklist.SPS_KEYS.values():
        item.add_new(Tag(key.keyword), key.vr, Sequence() if key.vr == "SQ" else None)
    sps_tag = tag_for_keyword(worklist.SPS_SEQUENCE)
    for name, value in params:
        if name in SEARCH_CONTROL:
            continue
        path = [_attribute_tag(part) for part in name.split(".")]
        if path == [TIMEZONE_OFFSET] and value.startswith(" "):
            value = "+" + value[1:]  # a '+' left unencoded reads as a space (form encoding)
        if len(path) == 1:
            _set_key(identifier, path[0], value)
        elif len(path) == 2 and path[0] == sps_tag:
            _set_key(item, path[1], value)
        else:
            raise HTTPProblem(
                400,
                f"{name}: only Scheduled Procedure Step Sequence "
                "attributes can be matched inside a sequence",
            )
    identifier.ScheduledProcedureStepSequence = Sequence([item])
    return identifier


@router.get(
    "/modality-scheduled-procedure-steps",
    summary="Search the worklist (PS3.18 14, same matching as C-FIND)",
    responses={
        200: {"content": {DICOM_JSON: {}}},
        204: {"description": "No match"},
        400: {},
        406: {},
        503: {},
    },
)
def search(
    request: Request,
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    includefield: list[str] = Query([]),
) -> Response:
    ctx = web_context(request)
    media = _accept(request, (DICOM_JSON, MULTIPART_XML))
    params = list(request.query_params.multi_items())
    identifier = search_identifier(params)
    for name in (v.strip() for value in includefield for v in value.split(",")):
        if name and name != "all":
            tag = _attribute_tag(name)
            if tag not in identifier and keyword_for_tag(tag):
                identifier.add_new(Tag(tag), dictionary_VR(tag), None)
    try:
        query = worklist.parse_identifier(identifier)
    except MatchError as exc:
        raise HTTPProblem(400, str(exc)) from None
    rows = worklist.search(
        ctx.db, query, ctx.config.worklist_default_statuses, limit=limit, offset=offset
    )
    if not rows:
        return Response(status_code=204)
    return _render([worklist.response(row, query) for row in rows], media, single=False)
