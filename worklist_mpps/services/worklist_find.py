"""One Modality Worklist C-FIND (PS3.4 K.4.1), from its identifier to the matching rows.

The DIMSE handler (dimse/worklist.py) and the worklist callback run inside Orthanc
(orthanc_plugin/worklist.py) both answer through :func:`find`, so a query gets the same
matches on either port: the same parsing and matching (services/worklist.py), the same
default statuses, calling-AE filter and cap on the number of matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom import Dataset

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database
from worklist_mpps.services import worklist
from worklist_mpps.services.sql_cursor import Row


class TooManyMatches(Exception):
    """More matches than ``max_find_results``: refused with 0xA700 Out of Resources
    (PS3.4 K.4.1.1.4 / C.4.1.1.4) on the project's port."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"More than {cap} matches: narrow the query")
        self.cap = cap


@dataclass
class Found:
    """A parsed query and its matching rows (services/worklist.py ``response`` turns
    each row into the response identifier)."""

    query: worklist.WorklistQuery
    rows: list[Row]


def find(
    db: Database,
    config: Config,
    identifier: Dataset | Callable[[], Dataset],
    calling_ae: str,
    encoded: tuple[bytes, str] | None = None,
) -> Found:
    """The matches of one C-FIND identifier for the calling AE title.

    ``encoded``: the identifier's bytes and transfer syntax, when known; a request met
    before is then not decoded and parsed again (``worklist.cached_query``), and
    ``identifier`` may be a function decoding it, called only when needed.

    Raises MatchError (0xA900: the identifier does not match the SOP class), SQLAlchemy's
    errors (0xC001) and :class:`TooManyMatches` (0xA700)."""
    get = identifier if callable(identifier) else lambda: identifier
    if encoded is not None:
        query = worklist.cached_query(*encoded, get)
    else:
        query = worklist.parse_identifier(get())
    calling = calling_ae if config.worklist_filter_by_calling_ae else None
    cap = config.max_find_results or None
    rows = worklist.search(
        db,
        query,
        config.worklist_default_statuses,
        calling,
        limit=cap + 1 if cap else None,
    )
    if cap and len(rows) > cap:
        raise TooManyMatches(cap)
    return Found(query, rows)
