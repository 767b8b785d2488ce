"""PostgreSQL plans the selective worklist query on its index right after a bulk load
(issue 18: 173 ms at 1M items until ANALYZE, then 0.5 ms).

Two defences, each checked on the plan itself (EXPLAIN), not on timings: the loader
refreshes the statistics after a large load (services/loader.py, Database.analyze), and
the query's every condition is a condition of one index, so the plan holds even for rows
imported behind the loader's back with no statistics at all (services/matching.py: a
date alone is matched as a span of the combined start, the last column of
ix_worklist_items_selective). Autovacuum is switched off on the test's tables so that
it cannot refresh the statistics in between.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml
from pydicom import Dataset
from sqlalchemy import text

from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.services import worklist
from worklist_mpps.services.loader import ANALYZE_AFTER, load_file

STATIONS = [f"CT0{i}" for i in range(1, 5)] + [f"MR0{i}" for i in range(1, 5)]
TODAY = dt.date.today().strftime("%Y%m%d")


@pytest.fixture
def pg(pg_url):
    db = Database(pg_url)
    migrate.upgrade(db.engine)
    with db.engine.begin() as conn:
        for table in ("patients", "worklist_items"):
            conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    yield db
    db.dispose()


def _bulk_import(db: Database, n: int) -> None:
    """``n`` items over n / 200 days around today, 200 a day on 8 stations, inserted in
    SQL (an import that bypasses the loader): no statistics are gathered."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO patients (patient_id, patient_name, patient_name_folded,"
            " created_at, updated_at)"
            " SELECT 'BP' || g, 'Doe^' || g, 'doe^' || g, now(), now()"
            " FROM generate_series(1, 1000) g"
        )
        conn.execute(
            text(
                "INSERT INTO worklist_items (patient_pk, accession_number, sps_id,"
                " study_instance_uid, sps_status, modality, scheduled_station_ae_title,"
                " sps_start_date, sps_start_time, sps_start, created_at, updated_at)"
                " SELECT (SELECT min(id) FROM patients) + g % 1000, 'BA' || g, 'BS' || g,"
                " '2.25.' || g, 'SCHEDULED',"
                " CASE WHEN g % 8 < 4 THEN 'CT' ELSE 'MR' END,"
                " CASE WHEN g % 8 < 4 THEN 'CT0' ELSE 'MR0' END || (1 + g % 4),"
                " d, '083000', d || '083000', now(), now()"
                " FROM (SELECT g, to_char(CAST(:today AS date) + (g / 200 - :back),"
                "  'YYYYMMDD') AS d FROM generate_series(0, :n - 1) g) s"
            ),
            {"n": n, "back": n // 200 // 2, "today": dt.date.today().isoformat()},
        )


def _yaml_items(path, n: int) -> None:
    items = [
        {
            "accession_number": f"L{i:07d}",
            "sps_id": f"S{i:07d}",
            "day": i // 200 - n // 400,
            "time": f"{8 + i % 10:02d}:{i % 60:02d}",
            "modality": STATIONS[i % 8][:2],
            "scheduled_station_ae_title": STATIONS[i % 8],
            "patient": {"patient_id": f"LP{i % 700:05d}", "patient_name": f"Roe^{i % 700}"},
        }
        for i in range(n)
    ]
    path.write_text(yaml.safe_dump({"items": items}), encoding="utf-8")


def _selective() -> Dataset:
    """A modality's query: its modality, its AE title, today (bench/run.py's)."""
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledStationAETitle = "CT01"
    sps.ScheduledProcedureStepStartDate = TODAY
    sps.ScheduledProcedureStepStartTime = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _items_scan(db: Database) -> dict[str, Any]:
    """The plan node reading worklist_items for the selective query, with the index and
    filter conditions of its subtree."""
    stmt = worklist.statement(worklist.parse_identifier(_selective()))
    sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True}))
    with db.engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql.replace("%", "%%")).scalar()

    def walk(node: dict) -> dict | None:
        if node.get("Relation Name") == "worklist_items":
            return node
        for child in node.get("Plans", []):
            if (found := walk(child)) is not None:
                return found
        return None

    node = walk(plan[0]["Plan"])
    assert node is not None, plan
    conds: list[str] = []
    filters: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        conds += [n[k] for k in ("Index Cond",) if k in n]
        filters += [n[k] for k in ("Filter",) if k in n]
        stack += n.get("Plans", [])
    return {"type": node["Node Type"], "cond": " ".join(conds), "filter": filters}


def _analyzed(db: Database, table: str) -> bool:
    """Whether ``table`` of this test's schema has statistics (database ``test`` may hold
    other schemas with the same tables: a bench run's, another test's)."""
    with db.engine.connect() as conn:
        return (
            conn.execute(
                text(
                    "SELECT last_analyze FROM pg_stat_user_tables "
                    "WHERE relname = :t AND schemaname = current_schema()"
                ),
                {"t": table},
            ).scalar()
            is not None
        )


def test_selective_query_on_one_index_without_statistics(pg):
    """50k rows imported in SQL, never analyzed: the plan reads worklist_items through
    an index whose condition holds today's date, so it reads one day of items at any
    size (before issue 18 it took ix_worklist_items_selective for status, modality and
    station only, and filtered the date from every day of that station: 173 ms at 1M)."""
    _bulk_import(pg, 50_000)
    assert not _analyzed(pg, "worklist_items")
    scan = _items_scan(pg)
    assert scan["type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), scan
    assert "sps_start" in scan["cond"] and TODAY in scan["cond"], scan
    assert not any(TODAY in f for f in scan["filter"]), scan


def test_loader_refreshes_statistics(pg, tmp_path):
    """A load of ANALYZE_AFTER items or more through the project's loader (``worklist-mpps
    load``, the sample data) analyzes the tables it filled, here after a 100k-row import
    without statistics; the plan then uses the index for today's date."""
    _bulk_import(pg, 50_000)
    path = tmp_path / "many.yaml"
    _yaml_items(path, ANALYZE_AFTER)
    assert load_file(pg, path) == (ANALYZE_AFTER, 0)
    assert _analyzed(pg, "worklist_items") and _analyzed(pg, "patients")
    scan = _items_scan(pg)
    assert scan["type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), scan
    assert TODAY in scan["cond"], scan


def test_small_load_does_not_analyze(pg, tmp_path):
    """A few items are not worth an ANALYZE (autovacuum's business)."""
    path = tmp_path / "few.yaml"
    _yaml_items(path, 10)
    assert load_file(pg, path) == (10, 0)
    assert not _analyzed(pg, "worklist_items")
