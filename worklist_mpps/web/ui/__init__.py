"""The operator page (issue 15): server-rendered views in the HTTP listener, for front-desk
staff, technologists and the PACS administrator (README "Operator page")."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from worklist_mpps.web.ui import auth, docs, items, problems, today

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)
for part in (auth, docs, today, items, problems):
    router.include_router(part.router)


def page_path(path: str) -> bool:
    """Paths answered with HTML for people (errors there are pages too, not JSON)."""
    return path == "/" or path.startswith("/ui/") or path == "/docs"
