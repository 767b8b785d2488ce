"""The application context every front end receives: configuration, database, and how an
MPPS change reaches the outbox (its targets, and the worker's wake-up after a commit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database


@dataclass
class AppContext:
    config: Config
    db: Database
    # outbox targets: MPPS targets (orthanc, forward:NAME) and HL7 destinations (hl7:NAME);
    # services/outbox.py mpps_targets / status_targets tell them apart
    targets: list[str] = field(default_factory=list)
    notify: Callable[[], None] = lambda: None  # wakes the outbox worker after a commit
