"""/docs: Swagger UI for the OpenAPI document, from the package's own copy of its assets
(web/static/vendor/swagger-ui), so it works on a network without internet access."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from worklist_mpps.web.ui import render

router = APIRouter(include_in_schema=False)
# Swagger UI sets inline styles on its elements; it runs no inline script (swagger-init.js)
DOCS_CSP = render.CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


@router.get("/docs")
def docs() -> HTMLResponse:
    html = render.templates.get_template("docs.html").render()
    return HTMLResponse(html, headers={**render.PAGE_HEADERS, "Content-Security-Policy": DOCS_CSP})
