"""The Today view (issue 15 item 2): placeholder until it is built."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from worklist_mpps.web.ui import render

router = APIRouter(include_in_schema=False)


@router.get("/")
def today(request: Request) -> HTMLResponse:
    return render.page(request, "today.html")
