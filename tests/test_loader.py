"""YAML loading: idempotent by accession number, UIDs generated once, sample data sane."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
import yaml
from sqlalchemy import func, select

from conftest import SAMPLE
from worklist_mpps.db.models import Patient, WorklistItem
from worklist_mpps.services.loader import LoadError, load_file, load_sample_once, read_items


def _items(db):
    with db.read() as s:
        return {
            i.accession_number: (i.study_instance_uid, i.sps_status, i.sps_start_date)
            for i in s.scalars(select(WorklistItem))
        }


def test_load_is_idempotent_and_keeps_uids_and_status(db):
    assert load_file(db, SAMPLE) == (30, 0)
    first = _items(db)
    with db.write() as s:  # an MPPS moved one item on
        item = s.scalars(
            select(WorklistItem).where(WorklistItem.accession_number == "A10001")
        ).one()
        item.sps_status = "IN PROGRESS"
    assert load_file(db, SAMPLE) == (0, 30)
    second = _items(db)
    assert {k: v[0] for k, v in second.items()} == {k: v[0] for k, v in first.items()}
    assert second["A10001"][1] == "IN PROGRESS"
    with db.read() as s:
        assert s.scalar(select(func.count(WorklistItem.id))) == 30
        assert s.scalar(select(func.count(Patient.id))) == 24


def test_sample_data_covers_the_deployment(db):
    load_file(db, SAMPLE)
    today = dt.date.today().strftime("%Y%m%d")
    with db.read() as s:
        items = s.scalars(select(WorklistItem)).all()
        names = {p.patient_name for p in s.scalars(select(Patient))}
    assert len(items) >= 25
    assert {i.modality for i in items} >= {"CT", "MR", "US", "CR", "DX"}
    assert len({i.scheduled_station_ae_title for i in items}) >= 5
    assert len({i.sps_start_date for i in items}) >= 3
    assert sum(i.sps_start_date == today for i in items) >= 5
    assert {"Müller^Hans", "Sánchez^María"} <= names
    assert any(any(ord(c) > 0x24F for c in n) for n in names), "a non-Latin name"
    assert all(i.study_instance_uid.startswith("2.25.") for i in items)
    assert len({i.study_instance_uid for i in items}) == len(items)


def test_relative_days_resolve_against_the_load_date(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "items": [
                    {
                        "accession_number": "X1",
                        "day": -2,
                        "time": "7:05",
                        "patient": {"patient_id": "P"},
                    }
                ]
            }
        )
    )
    ((_patient, data),) = read_items(path, today=dt.date(2026, 3, 1))
    assert data["sps_start_date"] == "20260227"
    assert data["sps_start_time"] == "7:05"


@pytest.mark.parametrize(
    "item,message",
    [
        ({"accession_number": "X1", "patient": {"patient_id": "P"}, "colour": "red"}, "colour"),
        ({"accession_number": "X1"}, "patient"),
        (
            {"accession_number": "X1", "patient": {"patient_id": "P"}, "sps_status": "DONE"},
            "sps_status",
        ),
        (
            {"accession_number": "X1", "patient": {"patient_id": "P"}, "date": "2026-01-01"},
            "sps_start_date",
        ),
        ({"accession_number": "X" * 17, "patient": {"patient_id": "P"}}, "accession_number"),
        ({"patient": {"patient_id": "P"}}, "accession_number"),
    ],
)
def test_bad_items_are_refused_naming_item_and_field(db, tmp_path, item, message):
    path = tmp_path / "w.yaml"
    good = {"accession_number": "G1", "patient": {"patient_id": "G"}}
    path.write_text(yaml.safe_dump({"items": [good, item]}, allow_unicode=True))
    with pytest.raises(LoadError) as exc:
        load_file(db, path)
    assert "item 2" in str(exc.value) and message in str(exc.value)
    assert _items(db) == {}, "a failed load changes nothing"


def test_sample_is_loaded_once(db):
    assert load_sample_once(db, SAMPLE) == (30, 0)
    with db.write() as s:
        s.execute(WorklistItem.__table__.delete())
    assert load_sample_once(db, SAMPLE) is None
    assert _items(db) == {}


def test_load_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    cmd = [sys.executable, "-m", "worklist_mpps", "load", str(SAMPLE), "--database-url", url]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "30 created, 0 updated" in first.stdout
    assert again.returncode == 0 and "0 created, 30 updated" in again.stdout
