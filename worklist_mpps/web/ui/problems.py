"""The Problems view (issue 15 deliverable 5): MPPS that matched no order (with "link to
order"), failed outbox deliveries (with retry), refused HL7 messages (with the reason and
the raw text) and which stations queried the worklist when. Thin: the data comes from
services/problems.py, the changes from services/links.py and services/outbox.py."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from worklist_mpps.services import hl7_log, links, outbox, problems, station_queries, witness
from worklist_mpps.web.context import web_actor, web_context
from worklist_mpps.web.errors import HTTPProblem
from worklist_mpps.web.ui import render

router = APIRouter(include_in_schema=False)

# what a redirect after a post says (?done=...): fixed texts, never echoed input
NOTICES = {
    "linked": "MPPS linked: the item's status now follows it.",
    "study-linked": "Study linked: the item is completed from it unless it has an MPPS.",
    "retried": "Delivery due again: the outbox worker sends it now.",
    "retried-all": "Every failed delivery is due again: the outbox worker sends them now.",
}


MAX_ID = 2**31 - 1  # the id columns are 32-bit integers on PostgreSQL


def _known_id(value: int, what: str) -> int:
    """An id a row may have: a larger one would fail in the database, not be missing."""
    if not 0 < value <= MAX_ID:
        raise HTTPProblem(404, f"no {what} {value}")
    return value


@router.get("/ui/problems")
def problems_page(request: Request, done: str = "") -> HTMLResponse:
    db = web_context(request).db
    return render.page(
        request,
        "problems.html",
        notice=NOTICES.get(done, ""),
        unmatched=problems.unmatched_mpps(db),
        studies=witness.unmatched_studies(db),
        failed=problems.failed_deliveries(db),
        refused=problems.refused_hl7(db),
        stations=problems.stations(db),
        flush_seconds=station_queries.FLUSH_SECONDS,
    )


@router.get("/ui/problems/hl7/{message_id}")
def refused_message(request: Request, message_id: int) -> HTMLResponse:
    """One received message as text (escaped, a segment a line) with its ACK."""
    message = hl7_log.show_message(web_context(request).db, _known_id(message_id, "HL7 message"))
    if message is None:
        raise HTTPProblem(404, f"no HL7 message {message_id}")
    return render.page(request, "problems_hl7.html", message=message)


def _chosen_item(fields: dict[str, str]) -> int:
    """The item a link form names: the ID typed in, else the candidate chosen (422 when
    neither is a number)."""
    text = (fields.get("item_id_text") or fields.get("item_id") or "").strip()
    if not text.isdigit():
        raise HTTPProblem(422, "choose an item, or type its ID (a number)")
    return int(text)


@router.post("/ui/problems/mpps/{uid}/link")
async def link(request: Request, uid: str) -> RedirectResponse:
    """Link an MPPS that matched no order to the item chosen (the select, or the ID typed
    in, which wins); links.link_mpps does the work, audited ``mpps.link``."""
    item_id = _chosen_item(await render.form(request))
    ctx = web_context(request)
    try:
        await run_in_threadpool(
            links.link_mpps, ctx.db, web_actor(request), uid, item_id, ctx.targets
        )
    except links.LinkError as exc:
        raise HTTPProblem(404 if exc.not_found else 409, exc.message) from None
    ctx.notify()  # an order's status message may be queued (the change is in the audit)
    return render.redirect("/ui/problems?done=linked#unmatched")


@router.post("/ui/problems/studies/{orthanc_id}/link")
async def link_study(request: Request, orthanc_id: str) -> RedirectResponse:
    """Link a study without an order to the item chosen (as the MPPS form);
    witness.link_study does the work, audited ``study.link``."""
    fields = await render.form(request)
    if not re.fullmatch(witness.ORTHANC_ID_PATTERN, orthanc_id):
        raise HTTPProblem(404, "no such study (not an Orthanc study ID)")
    item_id = _chosen_item(fields)
    ctx = web_context(request)
    try:
        await run_in_threadpool(
            witness.link_study, ctx.db, web_actor(request), orthanc_id, item_id, ctx.targets
        )
    except links.LinkError as exc:
        raise HTTPProblem(404 if exc.not_found else 409, exc.message) from None
    return render.redirect("/ui/problems?done=study-linked#studies")


@router.post("/ui/problems/outbox/{message_id}/retry")
async def retry(request: Request, message_id: int) -> RedirectResponse:
    await render.form(request)
    ctx = web_context(request)
    count = await run_in_threadpool(outbox.retry, ctx.db, [message_id], False, web_actor(request))
    if not count:
        raise HTTPProblem(409, f"outbox row {message_id} is not failed (delivered or retried?)")
    ctx.notify()  # the worker takes it now, not at its next poll
    return render.redirect("/ui/problems?done=retried#failed")


@router.post("/ui/problems/outbox/retry-all")
async def retry_all(request: Request) -> RedirectResponse:
    await render.form(request)
    ctx = web_context(request)
    count = await run_in_threadpool(outbox.retry, ctx.db, (), True, web_actor(request))
    if not count:
        raise HTTPProblem(409, "no failed delivery to retry")
    ctx.notify()
    return render.redirect("/ui/problems?done=retried-all#failed")
