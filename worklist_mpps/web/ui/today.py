"""The Today view (issue 15 item 2) and its print view: one day's worklist with its
filters, the MPPS progress of each step and, with Orthanc configured, completeness.

Live rows by short polling, not server-sent events: the table's <tbody> asks
``/ui/today/rows`` every ``ui_refresh_seconds`` with the change token it was drawn at,
and gets 204 (htmx swaps nothing) while the token is unchanged, or the new <tbody>
(and counts) otherwise. Why polling: an MPPS or an order may arrive at another instance
sharing the database (PostgreSQL), so changes must be read from the database anyway,
and the token is two index lookups; no connection is held open against
``http_max_connections`` and the header/body timeouts; it works through any proxy.
Only the <tbody> is swapped, and the row links keep their ids, so keyboard focus stays
where it was (htmx restores focus to the element with the same id).
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from worklist_mpps.services import today as service
from worklist_mpps.web.context import web_context
from worklist_mpps.web.errors import HTTPProblem
from worklist_mpps.web.ui import render

router = APIRouter(include_in_schema=False)


def _day(text: str | None) -> date:
    """?date=YYYY-MM-DD (an <input type=date>'s value); empty: today (server's zone)."""
    if not text:
        return date.today()
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise HTTPProblem(400, f"date: YYYY-MM-DD expected, got {text[:40]!r}") from None
    if not 1900 <= day.year <= 9998:  # and the previous / next day links stay dates
        raise HTTPProblem(400, f"date: a year from 1900 to 9998, got {day.year}")
    return day


def _filters(request: Request) -> tuple[date, service.DayFilters]:
    params = request.query_params
    try:
        filters = service.DayFilters.parse(
            modality=params.get("modality", ""),
            station=params.get("station", ""),
            status=params.get("status", ""),
            search=params.get("q", ""),
        )
    except ValueError as exc:
        raise HTTPProblem(400, str(exc)) from None
    return _day(params.get("date")), filters


def query_string(day: date, filters: service.DayFilters, **extra: str) -> str:
    """The view's URL query: the date and the filters that are set."""
    pairs = {
        "date": day.isoformat(),
        "modality": filters.modality,
        "station": filters.station,
        "status": filters.status,
        "q": filters.search,
        **extra,
    }
    return urlencode({k: v for k, v in pairs.items() if v})


def explorer_link(base: str, study_uid: str) -> str:
    """Orthanc Explorer 2's study list filtered on one StudyInstanceUID, its
    ``#/filtered-studies?StudyInstanceUID=...&expand=study`` route (orthanc-explorer-2
    release-notes.md, 0.2.2). ``base`` is OE2's app URL (http://pacs:8042/ui/app/) or
    Orthanc's root (http://pacs:8042), to which /ui/app/ is added (OE2's default root)."""
    base = base.rstrip("/")
    if not base.endswith("/ui/app"):
        base += "/ui/app"
    return f"{base}/#/filtered-studies?StudyInstanceUID={quote(study_uid, safe='.')}&expand=study"


def _values(request: Request, day: date, filters: service.DayFilters) -> dict[str, Any]:
    """The day's view and everything the templates need to draw it."""
    db = web_context(request).db
    cfg = web_context(request).config
    token = service.change_token(db)  # before the rows: a change in between is seen next
    view = service.day_view(db, day, filters)
    explorer = cfg.orthanc_explorer_url
    return {
        "view": view,
        "token": token,
        "query": query_string(day, filters),
        "query_all": query_string(day, replace(filters, status="")),
        "status_queries": {
            s: query_string(day, replace(filters, status=s)) for s in service.STATUSES
        },
        "day_iso": day.isoformat(),
        "day_dicom": day.strftime("%Y%m%d"),
        "day_label": f"{day:%A} {day.day} {day:%B %Y}",
        "is_today": day == date.today(),
        "prev_query": query_string(day - timedelta(days=1), filters),
        "next_query": query_string(day + timedelta(days=1), filters),
        "today_query": query_string(date.today(), filters),
        "statuses": service.STATUSES,
        "filtered": any((filters.modality, filters.station, filters.status, filters.search)),
        "orthanc": bool(cfg.orthanc_url),
        "explorer": (lambda uid: explorer_link(explorer, uid)) if explorer else None,
        "refresh": f"{cfg.ui_refresh_seconds:g}",
    }


def _timed(response: HTMLResponse, started: float) -> HTMLResponse:
    """Server-Timing (W3C): the route's own time, for the browser's devtools and bench."""
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


@router.get("/")
def today(request: Request) -> HTMLResponse:
    started = time.perf_counter()
    day, filters = _filters(request)
    return _timed(render.page(request, "today.html", **_values(request, day, filters)), started)


@router.get("/ui/today/rows")
def rows(request: Request, v: str = "") -> Response:
    """The table's rows when something changed since token ``v``; 204 when not."""
    started = time.perf_counter()
    day, filters = _filters(request)
    if v and v == service.change_token(web_context(request).db):
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return _timed(
        render.fragment("today_rows.html", oob=True, **_values(request, day, filters)), started
    )


@router.get("/ui/print")
def print_view(request: Request) -> HTMLResponse:
    """The day's list to print: no navigation, a compact table, @media print rules."""
    started = time.perf_counter()
    day, filters = _filters(request)
    return _timed(render.page(request, "print.html", **_values(request, day, filters)), started)
