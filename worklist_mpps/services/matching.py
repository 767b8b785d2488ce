"""C-FIND attribute matching as SQL clauses (PS3.4 C.2.2.2).

One function per matching type. Each takes the stored column and the key value
from the request and returns a SQLAlchemy clause, or ``None`` for universal
matching (PS3.4 C.2.2.2.3: a zero-length key matches everything). Stored empty
values are NULL, and SQL never matches NULL, so an empty stored value never
matches a non-empty key.

Person Name keys are matched case- and accent-insensitively against a folded
copy of the stored name (PS3.4 C.2.2.2.1 lets the SCP choose; see README).
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, func, or_

from worklist_mpps import timezone

# a column argument: a Core column or an ORM mapped attribute (WorklistItem.patient_id)
Column = SQLColumnExpression[Any]

# VRs for which '*' and '?' are wildcards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})

# PS3.5 Table 6.2-1 (ASCII digits only: '\d' would take any Unicode digit). A fraction
# follows the seconds only; components are left out from the right.
_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_TIME = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?")
_DATETIME = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:([0-9]{2})(\.[0-9]{1,6})?)?)?)?)?)?([+-][0-9]{4})?"
)

# Which padding of a value is not significant (PS3.5 Table 6.2-1 and 6.2.1): leading and
# trailing spaces of AE, CS, DS, IS, LO, SH and the components of PN (6.2.1 Note: DICOM
# considers leading and trailing spaces insignificant); trailing only for DA, DT, TM, LT,
# ST, UT, UC, UR (leading spaces of text are significant); UI is padded with a NUL.
STRIP_BOTH = frozenset({"AE", "CS", "DS", "IS", "LO", "SH", "PN"})
STRIP_TRAILING = frozenset({"DA", "DT", "TM", "LT", "ST", "UT", "UC", "UR", "AS"})


class MatchError(ValueError):
    """A key value that cannot be used for matching (answered with 0xA900)."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(f"{keyword}: {message}")
        self.keyword = keyword


def strip_padding(vr: str, value: str) -> str:
    """``value`` without the padding PS3.5 Table 6.2-1 calls not significant for ``vr``.

    Applied to every key value before matching and to every value before it is
    stored, so that plain SQL equality (on an index) ignores the padding.
    """
    if vr in STRIP_BOTH:
        return value.strip(" ")
    if vr in STRIP_TRAILING:
        return value.rstrip(" ")
    if vr == "UI":
        return value.rstrip("\0 ")  # a NUL pads a UID; a space is no UID character either
    return value


# Control characters a key value may not hold (PS3.5 6.1.2.3, 6.2): none but ESC (ISO 2022
# code extensions) in the single-line string VRs; LT, ST and UT also take TAB, LF, FF
# and CR. A NUL is the padding of a UI only, stripped before this check.
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def check_characters(keyword: str, vr: str, value: str) -> None:
    """MatchError (0xA900, HTTP 400) for a key value holding a control character its VR
    does not allow: such a value is no DICOM value and can match nothing stored."""
    pattern = _CONTROL_IN_TEXT if vr in ("LT", "ST", "UT") else _CONTROL
    bad = pattern.search(strip_padding(vr, value))
    if bad:
        raise MatchError(
            keyword, f"control character {bad.group()!r} is not allowed in {vr} (PS3.5 6.1.2.3)"
        )


def fold_pn(value: str | None) -> str | None:
    """Case- and accent-folded Person Name: 'Müller^Hans' -> 'muller^hans'.

    Used both when storing a name and when matching a key, so the two agree
    on every database (SQL lower() does not fold non-ASCII letters on SQLite).
    Leading and trailing spaces of each component are not significant and
    trailing empty components are dropped: ' Smith ^John^^^' is 'Smith^John'
    (PS3.5 6.2.1).
    """
    if value is None:
        return None
    groups = ["^".join(c.strip(" ") for c in g.split("^")).rstrip("^") for g in value.split("=")]
    value = "=".join(groups).rstrip("=")
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped).casefold()


def is_universal(value: str) -> bool:
    """Zero-length, or only '*' (C.2.2.2.4: '*' alone is universal matching)."""
    return value == "" or set(value) == {"*"}


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _like_pattern(value: str) -> str:
    """DICOM wildcard to SQL LIKE pattern, escaping SQL's own wildcards.

    '%', '_' and the escape character are literal characters in a DICOM value.
    """
    out = []
    for ch in value:
        if ch in ("\\", "%", "_"):
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def single_value(column: Column, value: str) -> ColumnElement:
    """Single Value Matching (C.2.2.2.1): exact, case-sensitive."""
    return column == value


def wildcard(column: Column, value: str) -> ColumnElement:
    """Wildcard Matching (C.2.2.2.4): '*' any run, '?' any one character."""
    return column.like(_like_pattern(value), escape="\\")


def string_match(column: Column, value: str, vr: str) -> ColumnElement | None:
    """Single value or wildcard matching of one string value; padding that is not
    significant for the VR is ignored (PS3.5 Table 6.2-1: ' A10001' finds 'A10001')."""
    value = strip_padding(vr, value)
    if is_universal(value):
        return None
    if vr in WILDCARD_VRS and has_wildcard(value):
        return wildcard(column, value)
    return single_value(column, value)


def person_name(folded_column: Column, value: str) -> ColumnElement | None:
    """Person Name: single value or wildcard, case- and accent-insensitive."""
    if is_universal(value):
        return None
    return string_match(folded_column, fold_pn(value) or "", "PN")


def uid_list(column: Column, values: list[str]) -> ColumnElement | None:
    """List of UID Matching (C.2.2.2.2): any of the UIDs."""
    values = [v for v in (strip_padding("UI", v) for v in values) if v]
    if not values:
        return None
    return column == values[0] if len(values) == 1 else column.in_(values)


def any_of(clauses: list[ColumnElement | None]) -> ColumnElement | None:
    """A multi-valued key matches when any of its values matches."""
    present = [c for c in clauses if c is not None]
    if len(present) < len(clauses):
        return None
    return present[0] if len(present) == 1 else or_(*present)


# --- dates and times ---------------------------------------------------------------


def _real_date(year: int, month: int, day: int) -> bool:
    """A day of the Gregorian calendar (PS3.5 Table 6.2-1 DA)."""
    if not 1 <= month <= 12:
        return False
    days = calendar.monthrange(year, month)[1]  # February of leap years included
    return 1 <= day <= days


def _real_time(hh: str, mm: str | None, ss: str | None) -> bool:
    """HH 00-23, MM 00-59, SS 00-60 (60: a leap second), PS3.5 Table 6.2-1 TM."""
    return int(hh) <= 23 and int(mm or 0) <= 59 and int(ss or 0) <= 60


def normalize_date(keyword: str, value: str) -> str:
    """DA to YYYYMMDD; MatchError unless it is a real calendar date (PS3.5 Table 6.2-1).

    This is the one date validator: C-FIND keys (0xA900), MPPS (0x0106), DICOMweb
    (400) and the management API (422) all refuse through it.
    """
    value = value.strip(" ").replace(".", "")  # ACR-NEMA 'YYYY.MM.DD' tolerated
    m = _DATE.fullmatch(value)
    if not m:
        raise MatchError(keyword, f"invalid date {value!r} (expected YYYYMMDD)")
    if not _real_date(*(int(g) for g in m.groups())):
        raise MatchError(keyword, f"invalid date {value!r} (no such day)")
    return value


def normalize_time(keyword: str, value: str, upper: bool = False) -> str:
    """TM to HHMMSS; missing parts are filled as the start (or end) of the span.

    The one time validator (see normalize_date): HH 00-23, MM 00-59, SS 00-60,
    an optional fraction of up to six digits after the seconds (PS3.5 Table 6.2-1).
    """
    value = value.strip(" ").replace(":", "")  # ACR-NEMA 'HH:MM:SS' tolerated
    m = _TIME.fullmatch(value)
    if not m:
        raise MatchError(keyword, f"invalid time {value!r} (expected HHMMSS)")
    hh, mm, ss = m.group(1), m.group(2), m.group(3)
    if not _real_time(hh, mm, ss):
        raise MatchError(keyword, f"invalid time {value!r} (no such time of day)")
    fill = "59" if upper else "00"
    return hh + (mm or fill) + (ss or fill)


def normalize_datetime(keyword: str, value: str) -> str:
    """Check a DT value (PS3.5 Table 6.2-1: YYYYMMDDHHMMSS.FFFFFF&ZZXX, components left
    out from the right, offset -1200 to +1400); returns it without padding."""
    value = value.rstrip(" ")
    m = _DATETIME.fullmatch(value)
    if not m:
        raise MatchError(keyword, f"invalid date time {value!r} (expected YYYYMMDDHHMMSS)")
    year, month, day, hh, mm, ss, _, offset = m.groups()
    ok = _real_date(int(year), int(month or 1), int(day or 1))
    ok = ok and (hh is None or _real_time(hh, mm, ss))
    if offset is not None:
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        ok = (
            ok
            and int(offset[3:5]) <= 59
            and (minutes <= 14 * 60 if offset[0] == "+" else minutes <= 12 * 60)
        )
    if not ok:
        raise MatchError(keyword, f"invalid date time {value!r}")
    return value


VALIDATORS = {"DA": normalize_date, "TM": normalize_time, "DT": normalize_datetime}


def check_temporal(vr: str, keyword: str, value: str) -> None:
    """MatchError unless a DA, TM or DT value is a real date, time or date time."""
    if value.strip(" ") and vr in VALIDATORS:
        VALIDATORS[vr](keyword, value)


@dataclass(frozen=True)
class Range:
    """An inclusive range; None is an open end (C.2.2.2.5)."""

    low: str | None
    high: str | None


def parse_range(keyword: str, value: str, kind: str, ordered: bool = True) -> Range | None:
    """'a', 'a-b', '-b' or 'a-' as a Range of normalized strings; None if universal.

    A range whose end is before its start is refused when ``ordered`` (a time
    range crossing midnight is not supported, C.2.2.2.5); a time range that is
    part of a combined date+time range need not be ordered.
    """
    if value.strip() == "":
        return None
    norm = normalize_date if kind == "DA" else normalize_time
    if "-" not in value:
        if kind == "DA":
            day = norm(keyword, value)
            return Range(day, day)
        return Range(norm(keyword, value), normalize_time(keyword, value, upper=True))
    if value.count("-") != 1:
        raise MatchError(keyword, f"invalid range {value!r}")
    low_text, high_text = (part.strip() for part in value.split("-"))
    if not low_text and not high_text:
        return None
    low = norm(keyword, low_text) if low_text else None
    if high_text:
        high = (
            normalize_time(keyword, high_text, upper=True)
            if kind == "TM"
            else norm(keyword, high_text)
        )
    else:
        high = None
    if ordered and low and high and low > high:
        raise MatchError(keyword, f"range {value!r} ends before it starts")
    return Range(low, high)


def range_match(column: Column, rng: Range | None) -> ColumnElement | None:
    """Range Matching (C.2.2.2.5) on a column holding normalized DA or TM text."""
    if rng is None:
        return None
    if rng.low is not None and rng.low == rng.high:
        return column == rng.low
    clauses = []
    if rng.low is not None:
        clauses.append(column >= rng.low)
    if rng.high is not None:
        clauses.append(column <= rng.high)
    return and_(*clauses)


def date_match(column: Column, keyword: str, value: str) -> ColumnElement | None:
    return range_match(column, parse_range(keyword, value, "DA"))


def time_match(column: Column, keyword: str, value: str) -> ColumnElement | None:
    return range_match(column, parse_range(keyword, value, "TM"))


def combined_datetime(
    time_column: Column,
    datetime_column: Column,
    date_value: str,
    time_value: str,
    date_keyword: str = "ScheduledProcedureStepStartDate",
    time_keyword: str = "ScheduledProcedureStepStartTime",
) -> ColumnElement | None:
    """Combined date and time range matching (C.2.2.2.5.1).

    With both keys given, the date range and the time range form one range of
    instants: date 20260705-20260707 with time 1000-1800 is 5 July 10:00 to
    7 July 18:00. Annex K requires this for the Scheduled Procedure Step Start
    Date and Time. With only one of them, each is matched on its own.
    ``datetime_column`` holds YYYYMMDDHHMMSS: the date followed by the time, or by
    000000 for a step with no time, NULL without a date (schedule_values.py).

    A date alone is matched on that column too, as the span of its days: the same rows
    as the date column, but the query's last condition is then the last column of the
    indexes (status, [modality, station,] start), so every condition is an index
    condition and no planner can pick a worse index, even with no statistics
    (PostgreSQL right after a bulk load, issue 18).
    """
    dates = parse_range(date_keyword, date_value, "DA")
    times = parse_range(time_keyword, time_value, "TM", ordered=dates is None)
    if dates is None:
        return range_match(time_column, times)
    if times is None:
        return range_match(
            datetime_column,
            Range(
                dates.low + "000000" if dates.low else None,
                # every YYYYMMDDHHMMSS of that day sorts at or below it (all digits)
                dates.high + "999999" if dates.high else None,
            ),
        )
    low = dates.low + (times.low or "000000") if dates.low else None
    high = dates.high + (times.high or "235959") if dates.high else None
    return range_match(datetime_column, Range(low, high))


def datetime_in_offset(
    utc_column: Column,
    date_value: str,
    time_value: str,
    offset: str,
    date_keyword: str = "ScheduledProcedureStepStartDate",
    time_keyword: str = "ScheduledProcedureStepStartTime",
) -> ColumnElement | None:
    """Date and time keys in the request's Timezone Offset From UTC (0008,0201), matched
    as instants against ``utc_column`` (YYYYMMDDHHMMSS in UTC).

    PS3.4 C.2.2.2.1.3 / C.2.2.2.5.4: the offset adjusts TM values, and the DA values
    that go with them, from the local zone to UTC; with the combined date and time
    matching of Annex K this "may effect a change in date". A date alone is its whole
    day in that offset (00:00:00 to 23:59:59). A time alone is a time of day in that
    offset, midnight included (C.2.2.2.5.2): shifted to UTC it may cross midnight and
    becomes two ranges (not index-assisted: a time without a date selects little).
    """
    dates = parse_range(date_keyword, date_value, "DA")
    times = parse_range(time_keyword, time_value, "TM", ordered=dates is None)
    if dates is None and times is None:
        return None
    if dates is None:
        assert times is not None
        low = timezone.to_utc("20000101" + (times.low or "000000"), offset)[8:]
        high = timezone.to_utc("20000101" + (times.high or "235959"), offset)[8:]
        clock = func.substr(utc_column, 9, 6)
        if low <= high:
            return and_(clock >= low, clock <= high)
        return or_(clock >= low, clock <= high)  # crosses midnight in UTC
    start = (times.low if times and times.low else "000000") if dates.low else None
    end = (times.high if times and times.high else "235959") if dates.high else None
    return range_match(
        utc_column,
        Range(
            timezone.to_utc(dates.low + start, offset) if dates.low and start else None,
            timezone.to_utc(dates.high + end, offset) if dates.high and end else None,
        ),
    )
