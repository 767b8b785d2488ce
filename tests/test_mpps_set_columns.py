"""Two N-SET shortcuts (issue 18) give what the way before gave.

``mpps._set_columns`` takes the indexed copies of N-CREATE-only attributes from the row
instead of reading them again from the stored instance (``mpps._tracking_columns``);
``stored_charset.set_charset_for_storage`` tells the character set of the changed
instance from the bytes of its elements still raw instead of decoding them
(``dicom.charset_for_storage``). The requests of tests/test_mpps_fast_write.py, and
instances with a Timezone Offset From UTC or with text outside ASCII only inside a
sequence, give the same stored bytes, indexed columns, audit rows, answers and N-GET
attributes with either shortcut or both switched off.
"""

from __future__ import annotations

import pytest
from pydicom import Dataset

from test_mpps_fast_write import CHARSETS, create_request, flows, n_sets, run, two_dbs
from worklist_mpps.services import dicom, mpps, stored_charset
from worklist_mpps.services.stored_charset import set_charset_for_storage

__all__ = ["two_dbs"]  # the fixture, used by name


def more_flows() -> list[tuple[str, Dataset, list[Dataset]]]:
    """Instances in other offsets than the server's (start and end are converted), and
    ones whose only text outside ASCII is in the Scheduled Step Attributes Sequence or comes
    and goes with N-SETs."""
    out = []
    for n, offset in enumerate(("+0100", "-0530", "+1400"), start=1):
        charset, name, comment = CHARSETS[n]
        create = create_request(charset, name, comment)
        create.TimezoneOffsetFromUTC = offset
        out.append((f"1.2.826.0.3.{n}", create, n_sets(charset, name, comment)))
    for n, (charset, _name, comment) in enumerate(CHARSETS[1:], start=1):
        create = create_request(charset, "Doe^John", "ascii")
        create.ScheduledStepAttributesSequence[0].ScheduledProcedureStepDescription = comment
        out.append((f"1.2.826.0.4.{n}", create, n_sets(None, "Doe^John", "plain")))
        # an ASCII instance that N-SETs take outside ASCII and back (the set changes)
        create = create_request(None, "Doe^John", "ascii")
        out.append((f"1.2.826.0.5.{n}", create, n_sets(charset, "Doe^John", comment)))
    return out


def test_every_indexed_column_is_of_one_kind():
    computed = {"status", "end_datetime", "series_count", "instance_count"}
    assert set(mpps._TRACKING_KEYS) == {
        *mpps._CREATE_ONLY_KEYS,
        *computed,
        "discontinuation_reason",
    }
    assert not set(mpps._CREATE_ONLY_KEYS) & computed


@pytest.mark.parametrize("off", ["columns", "charset", "both"])
def test_n_set_shortcuts_change_nothing(two_dbs, monkeypatch, off):
    fast_db, plain_db = two_dbs
    told = []  # N-SETs whose character set the bytes told (no full charset_for_storage)
    whole = []
    real_charset = dicom.charset_for_storage

    def counted(ds: Dataset) -> None:
        whole.append(1)
        real_charset(ds)

    def shortcut(ds: Dataset) -> None:
        before = len(whole)
        set_charset_for_storage(ds)
        told.append(len(whole) == before)

    monkeypatch.setattr(stored_charset, "charset_for_storage", counted)
    monkeypatch.setattr(mpps, "set_charset_for_storage", shortcut)
    fast = run(fast_db, flows() + more_flows())
    assert sum(told) >= 30  # most N-SETs kept the stored elements raw
    assert not all(told)  # and some changed the character set or had untold bytes
    if off in ("columns", "both"):
        monkeypatch.setattr(mpps, "_set_columns", lambda ds, row: mpps._tracking_columns(ds))
    if off in ("charset", "both"):
        monkeypatch.setattr(mpps, "set_charset_for_storage", dicom.charset_for_storage)
    plain = run(plain_db, flows() + more_flows())
    assert len(fast) == len(plain)
    for n, (a, b) in enumerate(zip(fast, plain, strict=True)):
        assert a == b, f"step {n}"
