"""The operator page's items views (issue 15): placeholder until they are built."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
