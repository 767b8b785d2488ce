"""Schema management with Alembic and the server on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import inspect

from conftest import SAMPLE
from dicom_clients import find
from test_dimse_worklist import query
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database
from worklist_mpps.services.worklist import SPS_KEYS, TOP_KEYS


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worklist_mpps", *args], capture_output=True, text=True, timeout=120
    )


def test_db_upgrade_and_current(db_url):
    assert cli("db", "current", "--database-url", db_url).returncode == 1
    done = cli("db", "upgrade", "--database-url", db_url)
    assert done.returncode == 0, done.stderr
    assert f"revision {migrate.head_revision()}" in done.stdout
    current = cli("db", "current", "--database-url", db_url)
    assert current.returncode == 0 and f"current {migrate.head_revision()}" in current.stdout


def test_every_matched_column_is_indexed(db):
    """Matching runs in SQL: each column a key filters on has an index."""
    insp = inspect(db.engine)
    indexed = set()
    for table in ("patients", "worklist_items"):
        for index in insp.get_indexes(table):
            indexed.add((table, index["column_names"][0]))
        for unique in insp.get_unique_constraints(table):
            indexed.add((table, unique["column_names"][0]))
    for key in [*TOP_KEYS.values(), *SPS_KEYS.values()]:
        if key.match in ("none", "code") or key.column is None:
            continue
        column = key.folded if key.match == "pn" else key.column
        assert (column.class_.__tablename__, column.key) in indexed, key.keyword


def test_serve_refuses_an_unmigrated_postgres_then_serves_it(pg_url, live_server, tmp_path):
    refused = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "serve", "--port", "0", "--database-url", pg_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "db upgrade" in refused.stderr
    assert cli("db", "upgrade", "--database-url", pg_url).returncode == 0
    server = live_server(pg_url, "--sample-file", str(SAMPLE))
    statuses, found = find(server.port, query())
    assert statuses[-1].Status == 0 and len(found) >= 20
    names = {str(d.PatientName) for d in found}
    assert "Müller^Hans" in names
    db = Database(pg_url)
    assert migrate.is_up_to_date(db.engine)
    db.dispose()
