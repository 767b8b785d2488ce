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

import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_

# VRs for which '*' and '?' are wildcards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})

_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


class MatchError(ValueError):
    """A key value that cannot be used for matching (answered with 0xA900)."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(f"{keyword}: {message}")
        self.keyword = keyword


def fold_pn(value: str | None) -> str | None:
    """Case- and accent-folded Person Name: 'Müller^Hans' -> 'muller^hans'.

    Used both when storing a name and when matching a key, so the two agree
    on every database (SQL lower() does not fold non-ASCII letters on SQLite).
    Trailing empty components are dropped: 'Smith^John^^^' is 'Smith^John'
    (PS3.5 6.2.1).
    """
    if value is None:
        return None
    groups = [g.rstrip("^ ") for g in value.split("=")]
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


def single_value(column: ColumnElement, value: str) -> ColumnElement:
    """Single Value Matching (C.2.2.2.1): exact, case-sensitive."""
    return column == value


def wildcard(column: ColumnElement, value: str) -> ColumnElement:
    """Wildcard Matching (C.2.2.2.4): '*' any run, '?' any one character."""
    return column.like(_like_pattern(value), escape="\\")


def string_match(column: ColumnElement, value: str, vr: str) -> ColumnElement | None:
    """Single value or wildcard matching of one string value."""
    if is_universal(value):
        return None
    if vr in WILDCARD_VRS and has_wildcard(value):
        return wildcard(column, value)
    return single_value(column, value)


def person_name(folded_column: ColumnElement, value: str) -> ColumnElement | None:
    """Person Name: single value or wildcard, case- and accent-insensitive."""
    if is_universal(value):
        return None
    return string_match(folded_column, fold_pn(value) or "", "PN")


def uid_list(column: ColumnElement, values: list[str]) -> ColumnElement | None:
    """List of UID Matching (C.2.2.2.2): any of the UIDs."""
    values = [v for v in values if v]
    if not values:
        return None
    return column == values[0] if len(values) == 1 else column.in_(values)


def any_of(clauses: list[ColumnElement | None]) -> ColumnElement | None:
    """A multi-valued key matches when any of its values matches."""
    if any(c is None for c in clauses):
        return None
    return clauses[0] if len(clauses) == 1 else or_(*clauses)


# --- dates and times ---------------------------------------------------------------


def normalize_date(keyword: str, value: str) -> str:
    value = value.strip().replace(".", "")  # ACR-NEMA 'YYYY.MM.DD' tolerated
    if not _DATE.match(value):
        raise MatchError(keyword, f"invalid date {value!r} (expected YYYYMMDD)")
    month, day = int(value[4:6]), int(value[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise MatchError(keyword, f"invalid date {value!r}")
    return value


def normalize_time(keyword: str, value: str, upper: bool = False) -> str:
    """TM to HHMMSS; missing parts are filled as the start (or end) of the span."""
    value = value.strip().replace(":", "")
    m = _TIME.match(value)
    if not m:
        raise MatchError(keyword, f"invalid time {value!r} (expected HHMMSS)")
    hh, mm, ss = m.group(1), m.group(2), m.group(3)
    fill = "59" if upper else "00"
    result = hh + (mm or fill) + (ss or fill)
    if int(hh) > 23 or int(result[2:4]) > 59 or int(result[4:6]) > 60:
        raise MatchError(keyword, f"invalid time {value!r}")
    return result


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
        high = normalize_time(keyword, high_text, upper=True) if kind == "TM" else norm(
            keyword, high_text)
    else:
        high = None
    if ordered and low and high and low > high:
        raise MatchError(keyword, f"range {value!r} ends before it starts")
    return Range(low, high)


def range_match(column: ColumnElement, rng: Range | None) -> ColumnElement | None:
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


def date_match(column: ColumnElement, keyword: str, value: str) -> ColumnElement | None:
    return range_match(column, parse_range(keyword, value, "DA"))


def time_match(column: ColumnElement, keyword: str, value: str) -> ColumnElement | None:
    return range_match(column, parse_range(keyword, value, "TM"))


def combined_datetime(
    date_column: ColumnElement,
    time_column: ColumnElement,
    datetime_column: ColumnElement,
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
    ``datetime_column`` holds YYYYMMDDHHMMSS.
    """
    dates = parse_range(date_keyword, date_value, "DA")
    times = parse_range(time_keyword, time_value, "TM", ordered=dates is None)
    if dates is None:
        return range_match(time_column, times)
    if times is None:
        return range_match(date_column, dates)
    low = dates.low + (times.low or "000000") if dates.low else None
    high = dates.high + (times.high or "235959") if dates.high else None
    return range_match(datetime_column, Range(low, high))
