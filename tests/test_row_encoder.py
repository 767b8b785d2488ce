"""The prepared row encoder (services/row_encoder.py) gives, for every row, the very bytes
of the general fast path, ``wire.encode_identifier(response_elements(...))``, which
tests/test_wire.py compares with pydicom's encoding of ``worklist.response``: over many
request shapes, both transfer syntaxes and the character sets the sample data needs."""

from __future__ import annotations

import sys
from io import BytesIO
from typing import ClassVar

import pytest
from pydicom import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from conftest import ROOT
from dicom_clients import worklist_query
from test_wire import every_key as wire_every_key
from worklist_mpps.dimse.pynetdicom_ext import wire
from worklist_mpps.services import row_encoder, worklist

sys.path.insert(0, str(ROOT / "bench"))
import cpu_client

STATUSES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED")


def every_key() -> Dataset:
    """tests/test_wire.py's every key, and a private sequence and an unknown SPS key."""
    ds = wire_every_key()
    ds.add_new(0x00091002, "SQ", Sequence())  # private sequence: echoed empty
    ds.ScheduledProcedureStepSequence[0].add_new(0x00400001, "AE", None)  # unknown here
    return ds


def bench_keys(selective: bool = False) -> Dataset:
    """bench/cpu_client.py's query (the figures of issue 18), any date; selective: CT only."""
    ds = cpu_client.query("", False)
    if selective:
        ds.ScheduledProcedureStepSequence[0].Modality = "CT"
    return ds


def code_shapes() -> Dataset:
    ds = worklist_query()
    code = Dataset()
    code.CodeValue = ""
    code.CodeMeaning = ""
    code.add_new(0x00080105, "CS", None)  # Mapping Resource: not a code key here
    ds.RequestedProcedureCodeSequence = Sequence([code])
    item = ds.ScheduledProcedureStepSequence[0]
    item.ScheduledProtocolCodeSequence = Sequence()  # the whole items
    return ds


def universal_sps() -> Dataset:
    ds = worklist_query(PatientID="", PatientWeight="", PregnancyStatus=None)
    ds.ScheduledProcedureStepSequence = Sequence()
    return ds


def empty_item_sps() -> Dataset:
    ds = worklist_query(ReferencedStudySequence=Sequence())
    ds.ScheduledProcedureStepSequence = Sequence([Dataset()])
    return ds


def nested_sps() -> Dataset:
    ds = worklist_query()
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepSequence = Sequence()
    return ds


def in_offset(term: str = "+0530") -> Dataset:
    ds = worklist_query(TimezoneOffsetFromUTC=term)
    item = ds.ScheduledProcedureStepSequence[0]
    item.ScheduledProcedureStepStartDate = ""
    item.ScheduledProcedureStepStartTime = ""
    return ds


def no_keys() -> Dataset:
    ds = Dataset()
    item = Dataset()
    item.Modality = "CT"
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def _with(ds: Dataset, **keys) -> Dataset:
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def charset(make, term: str):
    def asked() -> Dataset:
        ds = make()
        ds.SpecificCharacterSet = term
        return ds

    return asked


QUERIES = {
    "every key": every_key,
    "bench keys": bench_keys,
    "bench keys, selective": lambda: bench_keys(True),
    "few keys": worklist_query,
    "bench keys, unknown and unstored": lambda: _with(
        bench_keys(), OtherPatientIDs="", ReferencedStudySequence=Sequence()
    ),
    "code sequences": code_shapes,
    "universal SPS": universal_sps,
    "empty SPS item": empty_item_sps,
    "SPS in SPS": nested_sps,
    "timezone offset": in_offset,
    "timezone offset, UTC": lambda: in_offset("+0000"),
    "no return keys": no_keys,
    "ISO_IR 100 asked": charset(every_key, "ISO_IR 100"),
    "ISO_IR 192 asked": charset(every_key, "ISO_IR 192"),
    "ISO_IR 144 asked": charset(bench_keys, "ISO_IR 144"),
    "ISO 2022 IR 100 asked": charset(bench_keys, "ISO 2022 IR 100"),
    "ISO_IR 100 and ISO_IR 192 asked": charset(code_shapes, ["ISO_IR 100", "ISO_IR 192"]),
}


def general(row, query: worklist.WorklistQuery, explicit: bool) -> bytes | None:
    elements = worklist.response_elements(row, query)
    return wire.encode_identifier(elements, worklist.response_charset(elements, query), explicit)


@pytest.mark.parametrize("explicit", [False, True], ids=["implicit", "explicit"])
@pytest.mark.parametrize("name", QUERIES)
def test_prepared_encoder_gives_the_general_paths_bytes(sample_db, name, explicit):
    query = worklist.parse_identifier(QUERIES[name]())
    rows = worklist.search(sample_db, query, STATUSES)
    assert len(rows) >= 5
    encoder = row_encoder.prepared(query, explicit)
    assert row_encoder.prepared(query, explicit) is encoder  # compiled once
    for row in rows:
        assert encoder.identifier(row) == general(row, query, explicit), row


def test_sample_rows_cover_what_the_encoder_tells_apart(sample_db):
    """The comparisons above mean something only if the rows hold non-ASCII names (for
    ISO_IR 100 and ISO_IR 192), values of odd length, codes and empty values."""
    query = worklist.parse_identifier(every_key())
    rows = worklist.search(sample_db, query, STATUSES)
    encoder = row_encoder.prepared(query, False)
    charsets = {
        worklist.response_charset(worklist.response_elements(row, query), query) for row in rows
    }
    assert {None, "ISO_IR 100", "ISO_IR 192"} <= charsets
    names = [r.PatientName for r in rows]
    assert any(n and len(n.encode("utf-8")) % 2 for n in names)
    assert any(r.RequestedProcedureCodeSequence for r in rows)
    assert any(value in (None, "") for r in rows for value in r)
    assert any(r.PregnancyStatus is not None for r in rows)  # US, binary
    assert encoder.identifier(rows[0])


@pytest.mark.parametrize("explicit", [False, True], ids=["implicit", "explicit"])
def test_prepared_encoder_matches_pydicom(sample_db, explicit):
    """Decoded, the identifier is pydicom's encoding of ``worklist.response`` (the data
    set pynetdicom's path sends)."""
    query = worklist.parse_identifier(charset(every_key, "ISO_IR 192")())
    encoder = row_encoder.prepared(query, explicit)
    for row in worklist.search(sample_db, query, STATUSES):
        raw = encoder.identifier(row)
        assert raw is not None
        expected = encode(worklist.response(row, query), not explicit, True)
        assert raw == expected, row


class _Row(tuple):
    """A row as ``worklist.search`` gives them: by position and by column name."""

    names: ClassVar[list[str]] = []

    @property
    def _mapping(self) -> dict:
        return dict(zip(self.names, self, strict=True))


def test_a_value_not_str_is_encoded_as_the_general_path_does(sample_db):
    """SQLite keeps what it was given whatever the column type: an int in a text column
    is sent as its str, both ways."""
    query = worklist.parse_identifier(bench_keys())
    row = worklist.search(sample_db, query, STATUSES)[0]
    encoder = row_encoder.prepared(query, True)
    _Row.names = list(encoder.columns)
    values = list(row)
    values[encoder.columns["PatientID"]] = 12345
    odd = _Row(values)
    assert encoder.identifier(odd) == general(odd, query, True)
    assert b"12345 " in (encoder.identifier(odd) or b"")


def test_a_value_holding_the_row_separator_is_encoded_alike(sample_db):
    """The flat plan joins a row's values with a control character to encode them at
    once; a value holding it is encoded value by value."""
    query = worklist.parse_identifier(bench_keys())
    row = worklist.search(sample_db, query, STATUSES)[0]
    encoder = row_encoder.prepared(query, False)
    _Row.names = list(encoder.columns)
    values = list(row)
    values[encoder.columns["PatientID"]] = "A\x01B"
    odd = _Row(values)
    assert encoder.identifier(odd) == general(odd, query, False)


def test_both_plans_are_compared():
    """Text-only requests take the flat plan, others (codes, US) the slot by slot one:
    the comparisons above cover both."""
    flat = [
        n
        for n in QUERIES
        if row_encoder.prepared(worklist.parse_identifier(QUERIES[n]()), True).flat
    ]
    assert "bench keys" in flat and "timezone offset" in flat
    assert (
        "bench keys, unknown and unstored" in flat
    )  # zero-length elements among them and "ISO_IR 100 asked" not in flat
    assert "every key" not in flat and "universal SPS" not in flat


def test_identifier_reads_back(sample_db):
    query = worklist.parse_identifier(bench_keys())
    row = worklist.search(sample_db, query, STATUSES)[0]
    raw = row_encoder.prepared(query, True).identifier(row)
    ds = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    assert ds.StudyInstanceUID == row.StudyInstanceUID


@pytest.mark.parametrize("explicit", [False, True], ids=["implicit", "explicit"])
def test_a_step_without_a_time_keeps_none_in_the_requests_offset(sample_db, explicit):
    """Answered in the request's offset, a step with no start time gets its date moved
    and no time (``worklist._in_offset``), on both plans."""
    for with_us in (False, True):  # flat plan; with a US key, the slot by slot one
        shape = in_offset()
        if with_us:
            shape.PregnancyStatus = None
        query = worklist.parse_identifier(shape)
        assert (row_encoder.prepared(query, explicit).flat is None) == with_us
        row = worklist.search(sample_db, query, STATUSES)[0]
        encoder = row_encoder.prepared(query, explicit)
        _Row.names = list(encoder.columns)
        values = list(row)
        values[encoder.columns["ScheduledProcedureStepStartTime"]] = None
        timeless = _Row(values)
        raw = encoder.identifier(timeless)
        assert raw == general(timeless, query, explicit)
        assert raw != encoder.identifier(row)


@pytest.fixture
def fresh_encodings():
    """An empty cache of encoded identifiers (services/row_encoder.py ``_encoded``)."""
    row_encoder._encoded.clear()
    yield row_encoder._encoded
    row_encoder._encoded.clear()


@pytest.mark.parametrize("explicit", [False, True], ids=["implicit", "explicit"])
@pytest.mark.parametrize("name", QUERIES)
def test_an_encoding_met_again_is_the_general_paths_bytes(
    sample_db, fresh_encodings, name, explicit
):
    """Each row encoded three times (a miss, then two hits of the cache of encoded
    identifiers): always the general path's bytes."""
    query = worklist.parse_identifier(QUERIES[name]())
    rows = worklist.search(sample_db, query, STATUSES)
    encoder = row_encoder.prepared(query, explicit)
    for _ in range(3):
        for row in rows:
            assert encoder.identifier(row) == general(row, query, explicit), row
    if encoder.flat is not None:
        assert fresh_encodings.entries  # the flat plan's identifiers were kept


@pytest.mark.parametrize("explicit", [False, True], ids=["implicit", "explicit"])
def test_a_cached_encoding_serves_only_its_own_request(sample_db, fresh_encodings, explicit):
    """The same rows asked by requests that differ in character set, in a value, in a
    key or in the timezone offset, encoded one after the other through the cache: each
    gets its own request's bytes, never another's kept encoding."""
    shapes = [
        bench_keys,
        charset(bench_keys, "ISO_IR 100"),
        charset(bench_keys, "ISO_IR 192"),
        charset(bench_keys, "ISO_IR 144"),
        lambda: bench_keys(True),
        lambda: _with(bench_keys(), OtherPatientIDs=""),
        in_offset,
        lambda: in_offset("+0000"),
    ]
    for _ in range(2):
        for shape in shapes:
            query = worklist.parse_identifier(shape())  # a new query, its own encoder
            encoder = row_encoder.prepared(query, explicit)
            for row in worklist.search(sample_db, query, STATUSES):
                assert encoder.identifier(row) == general(row, query, explicit), row
    assert len({token for token, _ in fresh_encodings.entries}) == 2 * len(shapes)


def test_a_changed_row_is_encoded_again(sample_db, fresh_encodings):
    """A row whose value changed since it was encoded gets its new value, and a value
    None is encoded as the general path does (zero length)."""
    query = worklist.parse_identifier(bench_keys())
    row = worklist.search(sample_db, query, STATUSES)[0]
    encoder = row_encoder.prepared(query, True)
    _Row.names = list(encoder.columns)
    before = encoder.identifier(row)
    at = encoder.columns["PatientID"]
    for value in ("OTHER-ID", "OTHER-ID2", None, "", "Ünïcode"):
        values = list(row)
        values[at] = value
        changed = _Row(values)
        raw = encoder.identifier(changed)
        assert raw == general(changed, query, True), value
        assert raw != before
    assert encoder.identifier(row) == before


def test_the_cache_of_encodings_is_bounded(sample_db, monkeypatch, fresh_encodings):
    """At most MAX_ENTRIES identifiers and MAX_BYTES of keys and values, the oldest
    dropped first; an identifier larger than LARGEST is not kept."""
    monkeypatch.setattr(row_encoder._Encoded, "MAX_ENTRIES", 5)
    query = worklist.parse_identifier(bench_keys())
    rows = worklist.search(sample_db, query, STATUSES)
    encoder = row_encoder.prepared(query, False)
    assert len(rows) > 5
    for row in rows:
        assert encoder.identifier(row) == general(row, query, False)
        assert len(fresh_encodings.entries) <= 5
    kept = list(fresh_encodings.entries.values())
    assert kept == [encoder.identifier(row) for row in rows[-5:]]  # the newest ones
    assert fresh_encodings.size == sum(
        len(k[1]) + len(v) for k, v in fresh_encodings.entries.items()
    )
    monkeypatch.setattr(row_encoder._Encoded, "MAX_ENTRIES", 1000)
    monkeypatch.setattr(row_encoder._Encoded, "MAX_BYTES", 2 * fresh_encodings.size // 5)
    for row in rows:
        encoder.identifier(row)
        assert fresh_encodings.size <= row_encoder._Encoded.MAX_BYTES
    fresh_encodings.clear()
    monkeypatch.setattr(row_encoder._Encoded, "LARGEST", 10)
    encoder.identifier(rows[0])
    assert not fresh_encodings.entries
