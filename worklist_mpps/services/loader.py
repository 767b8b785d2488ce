"""Load worklist items from a YAML file (``worklist-mpps load FILE``).

Format (see sample_data/worklist.yaml)::

    items:
      - accession_number: A1001        # key, with sps_id: loading again updates
        sps_id: S1001
        day: 0                         # start date relative to today (or date: 20261123)
        time: "08:30"
        modality: CT
        patient: {patient_id: P1001, patient_name: "Müller^Hans", ...}
        ...

Loading is idempotent: an item is keyed by accession number and step ID, its
Study Instance UID is kept, and its status is left alone unless the file sets it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import AppState, Patient
from worklist_mpps.services import audit
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.schedule_values import ItemError, upsert_item

SAMPLE_MARKER = "sample_data_loaded"
# A load of this many items or more refreshes the planner's statistics of the tables it
# filled (PostgreSQL ANALYZE, db/engine.py): a few hundred ms at a million rows, against
# a selective C-FIND planned blind until autovacuum comes by (issue 18).
ANALYZE_AFTER = 1000


class LoadError(ValueError):
    pass


def read_items(path: str | Path, today: dt.date | None = None) -> list[tuple[dict, dict]]:
    """(patient data, item data) pairs from a YAML file, dates resolved."""
    today = today or dt.date.today()
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise LoadError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise LoadError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise LoadError(f"{path}: expected a mapping with a list under 'items'")
    pairs = []
    for n, raw in enumerate(doc["items"], start=1):
        if not isinstance(raw, dict):
            raise LoadError(f"{path}: item {n}: expected a mapping")
        data: dict[str, Any] = dict(raw)
        patient = data.pop("patient", None)
        if not isinstance(patient, dict):
            raise LoadError(f"{path}: item {n}: 'patient' mapping is required")
        if "day" in data:
            try:
                offset = int(data.pop("day"))
            except (TypeError, ValueError):
                raise LoadError(f"{path}: item {n}: day: must be a whole number") from None
            data["sps_start_date"] = (today + dt.timedelta(days=offset)).strftime("%Y%m%d")
        if "date" in data:
            data["sps_start_date"] = str(data.pop("date"))
        if "time" in data:
            data["sps_start_time"] = str(data.pop("time"))
        pairs.append((patient, data))
    return pairs


def load_file(
    db: Database,
    path: str | Path,
    uid_prefix: str = "",
    today: dt.date | None = None,
    actor: Actor | None = None,
) -> tuple[int, int]:
    """Load a YAML worklist in one transaction; returns (created, updated)."""
    pairs = read_items(path, today)
    created = updated = 0
    with db.write() as session:
        for n, (patient, data) in enumerate(pairs, start=1):
            try:
                _, is_new = upsert_item(session, patient, data, uid_prefix)
            except ItemError as exc:
                raise LoadError(f"{path}: item {n}: {exc}") from None
            session.flush()
            created += is_new
            updated += not is_new
        audit.record(
            session,
            actor or Actor.cli(),
            "worklist.load",
            Path(path).name,
            {"file": str(path), "created": created, "updated": updated},
        )
    if created + updated >= ANALYZE_AFTER:
        db.analyze("patients", "worklist_items")
    return created, updated


def load_sample_once(
    db: Database, path: str | Path, uid_prefix: str = ""
) -> tuple[int, int] | None:
    """Load the sample file on the first start of a database; None when already done."""
    with db.read() as session:
        if session.get(AppState, SAMPLE_MARKER) is not None:
            return None
        has_data = session.scalars(select(Patient.id).limit(1)).first() is not None
    if has_data:
        return None
    result = load_file(db, path, uid_prefix)
    with db.write() as session:
        session.merge(AppState(key=SAMPLE_MARKER, value=dt.datetime.now(dt.UTC).isoformat()))
    return result
