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
    targets: list[str] = field(default_factory=list)  # outbox targets of MPPS changes
    notify: Callable[[], None] = lambda: None  # wakes the outbox worker after a commit
