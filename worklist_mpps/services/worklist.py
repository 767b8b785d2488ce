"""Modality Worklist query service (PS3.4 Annex K), independent of the network.

``parse_identifier`` turns a C-FIND identifier into a :class:`WorklistQuery`,
``statement`` turns that into one SQL SELECT over the indexed columns, and
``response`` builds the response identifier of one matching row, holding
exactly the requested keys (K.4.1.1.3.2). The DIMSE handler and the DICOMweb
search both call :func:`search`.

Over 400 lines: parsing, SQL and response building are one pipeline over the same key
tables (TOP_KEYS, SPS_KEYS); matching.py holds the per-type matching rules.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, Select, select

from worklist_mpps import timezone
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import Patient, WorklistItem
from worklist_mpps.services import matching
from worklist_mpps.services.matching import MatchError
from worklist_mpps.services.sql_cursor import Compiled, Row, reader

log = logging.getLogger(__name__)

SPS_SEQUENCE = "ScheduledProcedureStepSequence"
CODE_KEYWORDS = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning")
# Attributes that are part of the response structure, never matched (K.4.1.1.3.2).
NEVER_MATCHED = frozenset({"SpecificCharacterSet", "TimezoneOffsetFromUTC"})
_TZ_TAG = 0x00080201  # Timezone Offset From UTC
_START_DATE, _START_TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"


@dataclass(frozen=True)
class Key:
    """A supported key: where its value is stored and how it is matched."""

    keyword: str
    column: Any = None  # ORM attribute holding the value; None: known, never stored
    match: str = "string"  # string | pn | uid | date | time | code | none
    folded: Any = None  # folded column for Person Name matching

    @cached_property
    def vr(self) -> str:
        return dictionary_VR(self.keyword)


def _keys(*keys: Key) -> dict[str, Key]:
    return {k.keyword: k for k in keys}


# Table K.6-1 and the IHE Scheduled Workflow return keys, top level.
TOP_KEYS = _keys(
    Key("PatientName", Patient.patient_name, "pn", Patient.patient_name_folded),
    Key("PatientID", Patient.patient_id),
    Key("IssuerOfPatientID", Patient.issuer_of_patient_id),
    Key("PatientBirthDate", Patient.birth_date, "date"),
    Key("PatientSex", Patient.sex),
    Key("PatientWeight", Patient.weight, "none"),
    Key("MedicalAlerts", Patient.medical_alerts),
    Key("Allergies", Patient.allergies),
    Key("PregnancyStatus", Patient.pregnancy_status, "none"),
    Key("AccessionNumber", WorklistItem.accession_number),
    Key("PlacerOrderNumberImagingServiceRequest", WorklistItem.placer_order_number),
    Key("FillerOrderNumberImagingServiceRequest", WorklistItem.filler_order_number),
    Key(
        "ReferringPhysicianName",
        WorklistItem.referring_physician_name,
        "pn",
        WorklistItem.referring_physician_name_folded,
    ),
    Key(
        "RequestingPhysician",
        WorklistItem.requesting_physician,
        "pn",
        WorklistItem.requesting_physician_folded,
    ),
    Key("RequestedProcedureID", WorklistItem.requested_procedure_id),
    Key("RequestedProcedureDescription", WorklistItem.requested_procedure_description),
    Key("RequestedProcedurePriority", WorklistItem.requested_procedure_priority),
    Key("RequestedProcedureCodeSequence", WorklistItem.requested_procedure_codes, "code"),
    Key("StudyInstanceUID", WorklistItem.study_instance_uid, "uid"),
    Key("AdmissionID", WorklistItem.admission_id),
    Key("CurrentPatientLocation", WorklistItem.current_patient_location),
    Key("ReferencedStudySequence", None, "none"),
    Key("ReferencedPatientSequence", None, "none"),
)

# Keys inside the one Scheduled Procedure Step Sequence item.
SPS_KEYS = _keys(
    Key("ScheduledStationAETitle", WorklistItem.scheduled_station_ae_title),
    Key("ScheduledProcedureStepStartDate", WorklistItem.sps_start_date, "date"),
    Key("ScheduledProcedureStepStartTime", WorklistItem.sps_start_time, "time"),
    Key("Modality", WorklistItem.modality),
    Key(
        "ScheduledPerformingPhysicianName",
        WorklistItem.scheduled_performing_physician_name,
        "pn",
        WorklistItem.scheduled_performing_physician_name_folded,
    ),
    Key("ScheduledProcedureStepDescription", WorklistItem.sps_description),
    Key("ScheduledStationName", WorklistItem.scheduled_station_name),
    Key("ScheduledProcedureStepLocation", WorklistItem.sps_location),
    Key("ScheduledProtocolCodeSequence", WorklistItem.scheduled_protocol_codes, "code"),
    Key("PreMedication", WorklistItem.pre_medication),
    Key("ScheduledProcedureStepID", WorklistItem.sps_id),
    Key("RequestedContrastAgent", WorklistItem.requested_contrast_agent),
    Key("ScheduledProcedureStepStatus", WorklistItem.sps_status),
)


@dataclass
class RequestedKey:
    """One key of the request: a supported Key, or an unknown element echoed empty."""

    tag: int
    vr: str
    key: Key | None
    sub_keys: list[RequestedKey] | None = None  # for a sequence with one item
    all_items: bool = False  # zero-length sequence key: return the whole item

    def __post_init__(self) -> None:
        self.tag = int(self.tag)  # a plain int: pydicom's Tag compares slowly


@dataclass
class WorklistQuery:
    """A parsed C-FIND identifier."""

    keys: list[RequestedKey]
    filters: list[ColumnElement] = field(default_factory=list)
    asks_status: bool = False
    unsupported: list[str] = field(default_factory=list)  # keys not supported for matching
    charset: list[str] = field(default_factory=list)
    # Timezone Offset From UTC (0008,0201) of the request: its dates and times are local
    # time in this offset, and so are the response's (None: the server's local time)
    offset: str | None = None
    # statements built for this query, by (statuses, calling AE, limit, offset): a query
    # met again (``cached_query``) runs the same Select object, whose SQL and cache key
    # SQLAlchemy has already made (issue 18)
    statements: dict[tuple, Select] = field(default_factory=dict, repr=False, compare=False)
    # each of them compiled for a database's dialect, by (statement key, dialect):
    # ``search`` runs it on the DB-API cursor (services/sql_cursor.py, issue 18)
    compiled: dict[tuple, Compiled] = field(default_factory=dict, repr=False, compare=False)
    # response encoders prepared for this query, by transfer syntax (services/row_encoder.py)
    encoders: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def ascii_charset(self) -> str | None:
        """The Specific Character Set of a response whose text is all ASCII: every
        character set this server answers in encodes ASCII alike."""
        return choose_charset("", self.charset)

    @property
    def optional_keys_unsupported(self) -> bool:
        """True when the response status is 0xFF01 (PS3.4 K.4.1.1.4)."""
        return bool(self.unsupported)


def _values(elem: DataElement) -> list[str]:
    """The key's values as strings ('' for zero-length)."""
    value = elem.value
    if value is None or value == "":
        return [""]
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value] or [""]
    return [str(value)]


def _key_filter(key: Key, elem: DataElement) -> ColumnElement | None:
    """The SQL clause for one non-sequence key (None: universal)."""
    values = _values(elem)
    for value in values:
        matching.check_characters(key.keyword, key.vr, value)
    if key.match == "uid":
        return matching.uid_list(key.column, values)
    if key.match == "date":
        return matching.any_of([matching.date_match(key.column, key.keyword, v) for v in values])
    if key.match == "time":
        return matching.any_of([matching.time_match(key.column, key.keyword, v) for v in values])
    if key.match == "pn":
        return matching.any_of([matching.person_name(key.folded, v) for v in values])
    return matching.any_of([matching.string_match(key.column, v, key.vr) for v in values])


def whole_sequence(elem: DataElement) -> bool:
    """A sequence key with no item, or with one zero-length item, is universal matching
    and asks for the entire sequence (PS3.4 C.2.2.2.6); a group length is no key."""
    items = elem.value
    return len(items) == 0 or (len(items) == 1 and all(e.tag.element == 0 for e in items[0]))


def _is_empty(elem: DataElement) -> bool:
    return whole_sequence(elem) if elem.VR == "SQ" else elem.is_empty


def _parse_level(
    items: Iterable[DataElement], table: dict[str, Key], query: WorklistQuery, level: str
) -> list[RequestedKey]:
    """Requested keys and filters of one level (top or SPS item)."""
    requested: list[RequestedKey] = []
    elems = {(keyword_for_tag(e.tag) or str(e.tag)): e for e in items}
    for name, elem in elems.items():
        if elem.tag.element == 0 or name in NEVER_MATCHED:
            continue  # group lengths; Specific Character Set is handled apart
        if name == SPS_SEQUENCE and level == "top":
            requested.append(_parse_sps(elem, query))
            continue
        key = table.get(name)
        if key is None:
            # not in the model: returned zero-length, status FF01 (K.2.2.1.1.2)
            query.unsupported.append(name)
            requested.append(RequestedKey(elem.tag, elem.VR, None))
            continue
        if (key.vr == "SQ") != (elem.VR == "SQ"):
            raise MatchError(name, f"has VR {elem.VR}, the model defines {key.vr}")
        if key.match == "code":
            requested.append(_parse_code_key(key, elem, query))
            continue
        if key.match == "none":
            if not _is_empty(elem):
                query.unsupported.append(name)
            requested.append(RequestedKey(elem.tag, key.vr, key))
            continue
        if name in ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"):
            pass  # combined below
        else:
            clause = _key_filter(key, elem)
            if clause is not None:
                query.filters.append(clause)
            if name == "ScheduledProcedureStepStatus" and clause is not None:
                query.asks_status = True
        requested.append(RequestedKey(elem.tag, key.vr, key))
    requested.sort(key=lambda r: r.tag)  # responses are built in tag order
    if level == "sps":
        date = elems.get(_START_DATE)
        time = elems.get(_START_TIME)
        if query.offset is not None:  # matched as instants, on the UTC copy
            clause = matching.datetime_in_offset(
                WorklistItem.sps_start_utc, _single(date), _single(time), query.offset
            )
        else:
            clause = matching.combined_datetime(
                WorklistItem.sps_start_time,
                WorklistItem.sps_start,
                _single(date),
                _single(time),
            )
        if clause is not None:
            query.filters.append(clause)
    return requested


def _single(elem: DataElement | None) -> str:
    if elem is None:
        return ""
    values = _values(elem)
    if len(values) > 1:
        raise MatchError(keyword_for_tag(elem.tag), "a date or time key takes one value or range")
    return values[0]


def _parse_code_key(key: Key, elem: DataElement, query: WorklistQuery) -> RequestedKey:
    """A code sequence is a return key: item keys with values are not matched."""
    if len(elem.value) > 1:
        raise MatchError(key.keyword, "a sequence key holds at most one item")
    if whole_sequence(elem):
        return RequestedKey(elem.tag, "SQ", key, all_items=True)
    sub = []
    for item_elem in elem.value[0]:
        name = keyword_for_tag(item_elem.tag)
        if name and dictionary_VR(name) != item_elem.VR:
            raise MatchError(
                f"{key.keyword}>{name}",
                f"has VR {item_elem.VR}, the standard's is {dictionary_VR(name)}",
            )
        if name not in CODE_KEYWORDS or not item_elem.is_empty:
            query.unsupported.append(f"{key.keyword}>{name or item_elem.tag}")
        sub.append(RequestedKey(item_elem.tag, item_elem.VR, None))
    sub.sort(key=lambda r: r.tag)
    return RequestedKey(elem.tag, "SQ", key, sub_keys=sub)


def _parse_sps(elem: DataElement, query: WorklistQuery) -> RequestedKey:
    """Sequence matching on the Scheduled Procedure Step Sequence (C.2.2.2.6)."""
    if elem.VR != "SQ":
        raise MatchError(SPS_SEQUENCE, f"has VR {elem.VR}, the model defines SQ")
    if len(elem.value) > 1:
        raise MatchError(SPS_SEQUENCE, "sequence matching takes exactly one item")
    if whole_sequence(elem):  # universal: the whole item is returned
        return RequestedKey(elem.tag, "SQ", None, all_items=True)
    sub = _parse_level(list(elem.value[0]), SPS_KEYS, query, "sps")
    return RequestedKey(elem.tag, "SQ", None, sub_keys=sub)


def _request_offset(identifier: Dataset) -> str | None:
    """Timezone Offset From UTC (0008,0201) of a request: never matched (K.2.2.2), it
    says in which offset the date and time keys are (C.2.2.2.1.3, C.2.2.2.5.2). The SCP
    "may use" it to adjust them to UTC whatever the negotiation (C.2.2.2.5.4): this one
    always does. A zero-length value, which an SCU shall not send (K.4.1.1.3.1), is read
    as absent; an invalid one is 0xA900."""
    if _TZ_TAG not in identifier:
        return None
    value = _values(identifier[_TZ_TAG])[0].strip(" ")
    if not value:
        return None
    try:
        timezone.parse_offset(value)
    except timezone.OffsetError as exc:
        raise MatchError("TimezoneOffsetFromUTC", str(exc)) from None
    return value


def parse_identifier(identifier: Dataset) -> WorklistQuery:
    """Validate and parse a Modality Worklist C-FIND identifier.

    Raises MatchError when the identifier does not fit the model (0xA900):
    a sequence key with more than one item (C.2.2.2.6), a key with the wrong
    VR, an invalid date, time or range.
    """
    query = WorklistQuery(keys=[])
    if "SpecificCharacterSet" in identifier:
        query.charset = [v for v in _values(identifier["SpecificCharacterSet"]) if v]
    query.offset = _request_offset(identifier)
    query.keys = _parse_level(list(identifier), TOP_KEYS, query, "top")
    return query


class _Recent:
    """The last queries parsed from identifiers met before, by their encoded bytes: a
    modality polls the worklist with the same request all day long. Bounded, LRU; a
    request that fails to parse is not kept (it fails again, the same way)."""

    SIZE = 256
    LARGEST = 8192  # bytes: a larger identifier is parsed every time

    def __init__(self) -> None:
        self.queries: OrderedDict[Hashable, WorklistQuery] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable, identifier: Callable[[], Dataset]) -> WorklistQuery:
        with self.lock:
            query = self.queries.get(key)
            if query is not None:
                self.queries.move_to_end(key)
                return query
        query = parse_identifier(identifier())
        with self.lock:
            self.queries[key] = query
            while len(self.queries) > self.SIZE:
                self.queries.popitem(last=False)
        return query


_recent = _Recent()


def cached_query(
    raw: bytes, transfer_syntax: str, identifier: Callable[[], Dataset]
) -> WorklistQuery:
    """``parse_identifier(identifier())``, or the query parsed before from the same bytes
    in the same transfer syntax. The query is shared: callers never change it."""
    if len(raw) > _Recent.LARGEST:
        return parse_identifier(identifier())
    return _recent.get((raw, transfer_syntax), identifier)


def _columns(query: WorklistQuery) -> dict[str, Any]:
    """The columns to select: only what the response needs."""
    wanted: dict[str, Any] = {}

    def add(req: RequestedKey, table: dict[str, Key]) -> None:
        if req.key is not None and req.key.column is not None:
            wanted[req.key.keyword] = req.key.column
        if req.all_items and req.key is None:  # whole SPS item
            for k in table.values():
                if k.column is not None:
                    wanted[k.keyword] = k.column
        for sub in req.sub_keys or []:
            add(sub, SPS_KEYS)

    for req in query.keys:
        add(req, SPS_KEYS)
    if query.offset is not None and (_START_DATE in wanted or _START_TIME in wanted):
        wanted["sps_start_utc"] = WorklistItem.sps_start_utc  # answered in the query's offset
    return wanted


def statement(
    query: WorklistQuery,
    default_statuses: Sequence[str] = ("SCHEDULED", "IN PROGRESS"),
    calling_ae: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Select:
    """One SELECT for the query; every filter runs in SQL on indexed columns. Built once
    per query and arguments (``WorklistQuery.statements``)."""
    key = (tuple(default_statuses), calling_ae, limit, offset)
    stmt = query.statements.get(key)
    if stmt is None:
        stmt = query.statements[key] = _statement(
            query, default_statuses, calling_ae, limit, offset
        )
    return stmt


def _statement(
    query: WorklistQuery,
    default_statuses: Sequence[str],
    calling_ae: str | None,
    limit: int | None,
    offset: int,
) -> Select:
    columns = _columns(query)
    cols = [c.label(name) for name, c in columns.items()] or [WorklistItem.id.label("id_")]
    stmt = select(*cols).select_from(WorklistItem).join(Patient, WorklistItem.patient)
    for clause in query.filters:
        stmt = stmt.where(clause)
    if not query.asks_status:
        stmt = stmt.where(WorklistItem.sps_status.in_(list(default_statuses)))
    if calling_ae is not None:
        stmt = stmt.where(WorklistItem.scheduled_station_ae_title == calling_ae)
    stmt = stmt.order_by(WorklistItem.sps_start, WorklistItem.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    return stmt


# --- responses ------------------------------------------------------------------------
#
# A response is first built as plain elements, (tag, VR, value) in ascending tag order at
# every level, with value None (zero length), a str, an int (US) or, for a sequence, a
# list of items that are element lists. ``response`` turns them into a pydicom Dataset;
# the C-FIND fast path (dimse/pynetdicom_ext/wire.py) encodes them straight to bytes.

Element = tuple[int, str, Any]
_SPS_TAG = int(Tag(SPS_SEQUENCE))  # Tag(keyword): an int, ValueError for an unknown keyword
_CODE_TAGS = [(int(Tag(name)), dictionary_VR(name), name) for name in CODE_KEYWORDS]
_WHOLE_SPS = sorted(
    (RequestedKey(int(Tag(k.keyword)), k.vr, k) for k in SPS_KEYS.values()), key=lambda r: r.tag
)


def _code_items(
    codes: list[dict[str, Any]] | None, sub_keys: list[RequestedKey] | None
) -> list[list[Element]]:
    items = []
    for code in codes or []:
        if sub_keys is None:
            items.append([(tag, vr, code[name]) for tag, vr, name in _CODE_TAGS if code.get(name)])
        else:
            items.append(
                [(sub.tag, sub.vr, code.get(keyword_for_tag(sub.tag)) or None) for sub in sub_keys]
            )
    return items


def _element(req: RequestedKey, values: Any) -> Element:
    key = req.key
    if key is None and req.tag == _SPS_TAG and req.vr == "SQ":
        subs = _WHOLE_SPS if req.all_items else req.sub_keys or []
        return (req.tag, "SQ", [[_element(sub, values) for sub in subs]])
    if key is None or key.column is None:
        return (req.tag, req.vr, [] if req.vr == "SQ" else None)
    value = values.get(key.keyword)
    if key.match == "code":
        return (req.tag, "SQ", _code_items(value, None if req.all_items else req.sub_keys))
    return (req.tag, key.vr, None if value == "" else value)


def _in_offset(values: Any, offset: str) -> dict[str, Any]:
    """The row's start as local time in ``offset`` (a step with no time keeps none)."""
    out = dict(values)
    utc = values.get("sps_start_utc")
    if utc:
        local = timezone.from_utc(utc, offset)
        if _START_DATE in out:
            out[_START_DATE] = local[:8]
        if out.get(_START_TIME):
            out[_START_TIME] = local[8:]
    return out


def response_elements(row: Row, query: WorklistQuery) -> list[Element]:
    """Exactly the requested keys of one matching row (K.4.1.1.3.2), in tag order.

    A request with Timezone Offset From UTC (0008,0201) is answered in its offset, and
    the response carries it: K.4.1.1.3.2 includes it when times in the response "are to
    be interpreted explicitly in the designated local time zone", never zero-length."""
    values = row._mapping
    if query.offset is None:
        return [_element(req, values) for req in query.keys]
    local = _in_offset(values, query.offset)
    elements = [_element(req, local) for req in query.keys]
    at = bisect.bisect_left([tag for tag, _, _ in elements], _TZ_TAG)
    elements.insert(at, (_TZ_TAG, "SH", query.offset))
    return elements


def _text_values(elements: list[Element]) -> Iterable[str]:
    for _, vr, value in elements:
        if vr == "SQ":
            for item in value:
                yield from _text_values(item)
        elif isinstance(value, str):
            yield value


def choose_charset(text: str, requested: list[str]) -> str | None:
    """The Specific Character Set of a response holding ``text``.

    The request's single-byte set is kept when it can encode the response;
    otherwise plain ASCII, ISO_IR 100 (Latin-1) or ISO_IR 192 (UTF-8), the
    first that can (the SCP need not answer in the requested set, K.4.1.1.3.2).
    """

    def fits(term: str) -> bool:
        if term in ("", "ISO_IR 6"):
            return text.isascii()
        codec = python_encoding.get(term)
        if codec is None:
            return False
        try:
            text.encode(codec)
        except UnicodeEncodeError:
            return False
        return True

    if len(requested) == 1 and fits(requested[0]):
        return requested[0]
    if text.isascii():
        return None
    return "ISO_IR 100" if fits("ISO_IR 100") else "ISO_IR 192"


def _all_ascii(elements: list[Element]) -> bool:
    for _, vr, value in elements:
        if vr == "SQ":
            if not all(_all_ascii(item) for item in value):
                return False
        elif isinstance(value, str) and not value.isascii():
            return False
    return True


def response_charset(elements: list[Element], query: WorklistQuery) -> str | None:
    """The response's Specific Character Set (``choose_charset``); the answer for text
    all ASCII, most responses, depends on the request only and is computed once."""
    if _all_ascii(elements):
        return query.ascii_charset
    return choose_charset("".join(_text_values(elements)), query.charset)


def to_dataset(elements: list[Element]) -> Dataset:
    ds = Dataset()
    for tag, vr, value in elements:
        if vr == "SQ":
            ds.add_new(tag, vr, DicomSequence([to_dataset(item) for item in value]))
        else:
            ds.add_new(tag, vr, value)
    return ds


def response(row: Row, query: WorklistQuery) -> Dataset:
    """The response identifier for one matching row: exactly the requested keys."""
    elements = response_elements(row, query)
    ds = to_dataset(elements)
    charset = response_charset(elements, query)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds


def search(
    db: Database,
    query: WorklistQuery,
    default_statuses: Sequence[str],
    calling_ae: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Row]:
    """Run the query's one SELECT; rows of the selected columns, by position and label.

    The Select is compiled once per dialect and run on the DB-API cursor of a connection
    kept in autocommit, outside any transaction (services/sql_cursor.py): the same SQL,
    parameters and values as ``Connection.execute`` without its per-call machinery.
    """
    key = (tuple(default_statuses), calling_ae, limit, offset, db.engine.dialect)
    compiled = query.compiled.get(key)
    if compiled is None:
        stmt = statement(query, default_statuses, calling_ae, limit, offset)
        compiled = query.compiled[key] = Compiled.of(stmt, db.engine.dialect)
    return reader(db).rows(compiled)
