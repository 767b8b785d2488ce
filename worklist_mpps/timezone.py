"""The server's Timezone Offset From UTC and conversions between offsets (PS3.3 C.12.1.1.8).

A date and time without an offset is local time (PS3.3 C.12.1.1.8: Timezone Offset From
UTC (0008,0201) "shall be used for all date and time Attributes of the SOP Instance");
the server's own local time is the configured ``timezone_offset`` or, when empty, the
machine's time zone (with its daylight saving rules: the offset of an instant depends on
its date). :func:`configure` sets it for the process (``config.config_from_args``, the one
place a command's configuration is read).

Values are DICOM strings: ``YYYYMMDDHHMMSS`` (DA + TM, PS3.5 Table 6.2-1) and offsets
``+HHMM`` / ``-HHMM`` (the &ZZXX suffix of DT). A module of its own, below every layer:
the migrations (db) and the services both use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

_FORMAT = "%Y%m%d%H%M%S"
# PS3.5 Table 6.2-1 DT: &ZZXX, -1200 to +1400
_OFFSET = re.compile(r"([+-])([0-9]{2})([0-5][0-9])")

_server_offset = ""  # "" : the machine's zone


class OffsetError(ValueError):
    """Not a Timezone Offset From UTC (+HHMM / -HHMM, -1200 to +1400)."""


def parse_offset(value: str) -> timedelta:
    """``+0100`` -> 1 hour; OffsetError unless ±HHMM within -1200..+1400 (PS3.5 DT)."""
    m = _OFFSET.fullmatch(value.strip(" "))
    if not m:
        raise OffsetError(f"invalid Timezone Offset From UTC {value!r} (expected +HHMM or -HHMM)")
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    if minutes > (14 * 60 if m.group(1) == "+" else 12 * 60):
        raise OffsetError(f"Timezone Offset From UTC {value!r} out of range (-1200 to +1400)")
    return timedelta(minutes=-minutes if m.group(1) == "-" else minutes)


def format_offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def configure(offset: str) -> None:
    """The process's server offset: ``+HHMM``/``-HHMM``, or "" for the machine's zone."""
    global _server_offset
    if offset:
        parse_offset(offset)
    _server_offset = offset


def server_offset() -> str:
    """The configured offset ("" : the machine's zone)."""
    return _server_offset


def _parse(value: str) -> datetime:
    """YYYYMMDDHHMMSS (a leap second 60 counts as 59: datetime has no 23:59:60)."""
    if value[12:14] == "60":
        value = value[:12] + "59"
    return datetime.strptime(value[:14], _FORMAT)


def _clamped(compute: Callable[[], str], fallback: str) -> str:
    try:
        return compute()
    except (OverflowError, OSError, ValueError):  # years 1 and 9999, the platform's mktime
        return fallback


def to_utc(local: str, offset: str | None = None) -> str:
    """A local YYYYMMDDHHMMSS in ``offset`` (None: the server's) as UTC YYYYMMDDHHMMSS."""

    def compute() -> str:
        naive = _parse(local)
        if offset is None and not _server_offset:
            aware = naive.astimezone()  # the machine's zone, its rules at that date
        else:
            zone = timezone(parse_offset(offset if offset is not None else _server_offset))
            aware = naive.replace(tzinfo=zone)
        return aware.astimezone(UTC).strftime(_FORMAT)

    return _clamped(compute, local)


def from_utc(utc: str, offset: str | None = None) -> str:
    """A UTC YYYYMMDDHHMMSS as local time in ``offset`` (None: the server's)."""

    def compute() -> str:
        aware = _parse(utc).replace(tzinfo=UTC)
        if offset is None and not _server_offset:
            return aware.astimezone().strftime(_FORMAT)
        zone = timezone(parse_offset(offset if offset is not None else _server_offset))
        return aware.astimezone(zone).strftime(_FORMAT)

    return _clamped(compute, utc)


def convert(local: str, offset: str | None, to: str | None = None) -> str:
    """A local YYYYMMDDHHMMSS in ``offset`` as local time in ``to`` (None: the server's)."""
    return from_utc(to_utc(local, offset), to)


def server_offset_at(local: str) -> str:
    """The server's offset at a local YYYYMMDDHHMMSS (the machine's may change with DST)."""
    if _server_offset:
        return _server_offset
    utc = to_utc(local)
    delta = _parse(local) - _parse(utc)
    return format_offset(delta)
