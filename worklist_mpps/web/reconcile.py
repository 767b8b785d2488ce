"""Reconciliation API (issue 16): studies in Orthanc without an order, and linking a study
or an unscheduled MPPS to the item it was made for. Thin: services/witness.py and
services/links.py do the work, audited (``study.link``, ``mpps.link``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from worklist_mpps.services import links, witness
from worklist_mpps.web.context import web_actor, web_context
from worklist_mpps.web.errors import HTTPProblem
from worklist_mpps.web.schemas import MAX_ID

router = APIRouter(tags=["reconciliation"])
OrthancId = Annotated[
    str, Path(pattern=witness.ORTHANC_ID_PATTERN, max_length=44, description="Orthanc study ID")
]
MppsUid = Annotated[
    str, Path(pattern=witness.UID_PATTERN, max_length=64, description="MPPS SOP Instance UID")
]


class LinkIn(BaseModel):
    item_id: int = Field(ge=1, le=MAX_ID, description="the worklist item's ID")


@router.get("/studies/unmatched")
def unmatched(request: Request, limit: int = Query(200, ge=1, le=500)) -> dict[str, Any]:
    """Stable studies in Orthanc that matched no SCHEDULED or IN PROGRESS item, newest
    first, each with the items it may be of."""
    listing = witness.unmatched_studies(web_context(request).db, limit)
    return {"total": listing.total, "studies": listing.rows}


@router.post("/studies/{orthanc_id}/link", responses={404: {}, 409: {}})
async def link_study(orthanc_id: OrthancId, body: LinkIn, request: Request) -> dict[str, Any]:
    """Link a study to an item (audited ``study.link``): unless the item has an MPPS, it
    is completed from the study by the server's Orthanc witness within one
    ``orthanc_changes_interval``."""
    ctx = web_context(request)
    try:
        result = await run_in_threadpool(
            witness.link_study, ctx.db, web_actor(request), orthanc_id, body.item_id, ctx.targets
        )
    except links.LinkError as exc:
        raise HTTPProblem(404 if exc.not_found else 409, exc.message) from None
    return result


@router.post("/mpps/{uid}/link", responses={404: {}, 409: {}})
async def link_mpps(uid: MppsUid, body: LinkIn, request: Request) -> dict[str, Any]:
    """Link an MPPS that named no known item (PS3.4 F.7.2.1.2, the unscheduled case) to
    the item it performed (audited ``mpps.link``); the item's status follows it."""
    ctx = web_context(request)
    try:
        changes = await run_in_threadpool(
            links.link_mpps, ctx.db, web_actor(request), uid, body.item_id, ctx.targets
        )
    except links.LinkError as exc:
        raise HTTPProblem(404 if exc.not_found else 409, exc.message) from None
    ctx.notify()  # an order's status message may be queued
    return {
        "mpps": uid,
        "item_id": body.item_id,
        "status_changes": [{"item_id": c.item.id, "from": c.old, "to": c.new} for c in changes],
    }
