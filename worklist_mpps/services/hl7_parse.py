"""Reading one HL7 v2 message and writing its ACK (HL7 v2.5.1 chapter 2), with python-hl7.

Bytes become text by MSH-18 (Table 0211, :mod:`worklist_mpps.hl7_charsets`); the text is
parsed by ``hl7.parse``; values are read by location (``SEG-field[.component
[.subcomponent]]``, first repetition) with HL7 escape sequences decoded (2.7). The ACK is
``Message.create_ack`` (original mode, 2.9.2) plus MSA-3 and, for AE/AR, an ERR segment:
ERR-2 location, ERR-3 HL7 error code (Table 0357), ERR-4 severity (v2.5), and ERR-1 in
the v2.3/v2.4 form for senders of those versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import hl7  # type: ignore[import-untyped]  # python-hl7 0.4.5 ships no type information

from worklist_mpps.hl7_charsets import python_codec

# HL7 Table 0357 "Message error condition codes": the ones this receiver answers
ERROR_TEXT = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    207: "Application internal error",
}


@dataclass(frozen=True)
class Location:
    """An error location (ERL, HL7 v2.5.1 2.A.26): segment, its sequence, field, component."""

    segment: str
    sequence: int = 1
    field: int = 0
    component: int = 0

    def erl(self) -> str:
        parts = [self.segment, str(self.sequence)]
        if self.field:
            parts.append(str(self.field))
            if self.component:
                parts += ["1", str(self.component)]
        return "^".join(parts)

    def __str__(self) -> str:
        text = f"{self.segment}-{self.field}" if self.field else self.segment
        if self.component:
            text += f".{self.component}"
        return text if self.sequence == 1 else f"{text} (segment {self.sequence})"


class HL7Error(Exception):
    """A message refused: ``ack_code`` AE (content wrong) or AR (cannot be processed), the
    Table 0357 ``code``, a one-line ``text`` and where (``location``)."""

    def __init__(
        self, ack_code: str, code: int, text: str, location: Location | None = None
    ) -> None:
        super().__init__(text)
        self.ack_code = ack_code
        self.code = code
        self.text = text
        self.location = location


@dataclass
class Segment:
    name: str
    sequence: int  # 1-based among the segments of this name (ERR-2.2)
    seg: hl7.Segment
    fields: list[str] = field(default_factory=list)  # the segment's text split at "|"

    def raw(self, n: int) -> str:
        """Field ``n``'s text as sent (separators and escapes kept), "" when absent: the
        text python-hl7 parsed, read without re-joining its containers (MSH-1 is the
        field separator itself, so MSH-n is the (n-1)th piece)."""
        if self.name == "MSH":
            if n == 1:
                return "|"
            n -= 1
        return self.fields[n] if 0 < n < len(self.fields) else ""


@dataclass
class Inbound:
    """A decoded, parsed message and its MSH header."""

    text: str
    codec: str
    message: hl7.Message
    segments: list[Segment] = field(default_factory=list)

    def msh(self, n: int) -> str:
        return self.segments[0].raw(n)

    @property
    def message_type(self) -> str:
        return "^".join(p for p in self.msh(9).split("^")[:2] if p)

    @property
    def version(self) -> str:
        return self.msh(12).split("^")[0]

    def value(self, segment: Segment | None, field_no: int, comp: int = 1, sub: int = 1) -> str:
        """One value, first repetition, escape sequences decoded; "" when absent."""
        if segment is None:
            return ""
        text = segment.raw(field_no).split("~")[0]
        parts = text.split("^")
        if comp > len(parts):
            return ""
        subs = parts[comp - 1].split("&")
        if sub > len(subs):
            return ""
        return _value(self.message, subs[sub - 1])

    def components(self, segment: Segment | None, field_no: int) -> list[str]:
        """The components of a field's first repetition (first subcomponents, unescaped)."""
        if segment is None:
            return []
        text = segment.raw(field_no).split("~")[0]
        return [_value(self.message, c.split("&")[0]) for c in text.split("^")]


def _value(message: hl7.Message, text: str) -> str:
    """A value unescaped (2.7); HL7's explicit null ``""`` (2.5.3) reads as empty: the feed
    never deletes a stored value."""
    value = str(message.unescape(text)).strip()
    return "" if value == '""' else value


_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")


def _header_fields(raw: bytes) -> list[str]:
    """MSH fields read from the bytes before decoding (MSH is ASCII): [MSH, MSH-2, ...]."""
    first = raw.lstrip().split(b"\r")[0].split(b"\n")[0]
    if not first.startswith(b"MSH") or len(first) < 8:
        return []
    sep = first[3:4]
    return [f.decode("latin-1") for f in first.split(sep)]


def header_value(raw: bytes, n: int) -> str:
    """MSH-n read from raw bytes ("" when absent): for ACKs of undecodable messages."""
    fields = _header_fields(raw)
    return fields[n - 1].strip() if 1 < n <= len(fields) else ""


def decode(raw: bytes, default_charset: str) -> tuple[str, str]:
    """(text, codec) by MSH-18 (HL7 v2.5.1 2.15.9.18, Table 0211); separators normalized
    to \\r (sloppy senders send \\n or \\r\\n). Raises HL7Error (AR 100, AR 103, AE 101/102)."""
    if not _header_fields(raw) or raw.lstrip()[3:4] != b"|":
        raise HL7Error("AR", 100, "the message does not start with an MSH segment")
    charset = header_value(raw, 18)
    where = Location("MSH", 1, 18)
    if not charset:
        if raw.isascii():
            codec = "ascii"
        elif default_charset:
            codec = python_codec(default_charset) or "ascii"
        else:
            raise HL7Error(
                "AE",
                101,
                "MSH-18 (character set) is empty but the message is not ASCII, and no "
                "hl7_default_charset is configured: refused rather than guessed",
                where,
            )
    else:
        found = python_codec(charset)
        if found is None:
            raise HL7Error("AR", 103, f"MSH-18 character set {charset!r} is not supported", where)
        codec = found
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise HL7Error(
            "AE",
            102,
            f"the bytes are not valid {charset or default_charset or 'ASCII'} (offset {exc.start})",
            where,
        ) from None
    text = text.strip().replace("\r\n", "\r").replace("\n", "\r")
    return text, codec


def parse(raw: bytes, default_charset: str) -> Inbound:
    """Decode and parse; HL7Error when the message cannot be read at all."""
    text, codec = decode(raw, default_charset)
    lines = [line for line in text.split("\r") if line.strip()]
    if not text.startswith("MSH|^~\\&"):
        raise HL7Error(
            "AR", 100, "MSH must start with the standard delimiters |^~\\&", Location("MSH", 1, 2)
        )
    for line in lines:
        if not _SEGMENT_NAME.fullmatch(line[:3]) or (len(line) > 3 and line[3] != "|"):
            raise HL7Error("AR", 100, f"not an HL7 segment: {line[:20]!r}")
    try:
        message = hl7.parse("\r".join(lines))
    except Exception as exc:  # noqa: BLE001 - python-hl7 raises several types
        raise HL7Error("AR", 100, f"unparseable message: {exc}") from None
    seen: dict[str, int] = {}
    segments = []
    if len(message) != len(lines):  # python-hl7 makes one segment of each line
        raise HL7Error("AR", 100, "unparseable message: segments do not match its lines")
    for seg, line in zip(message, lines, strict=True):
        name = str(seg(0))
        seen[name] = seen.get(name, 0) + 1
        segments.append(Segment(name, seen[name], seg, line.split("|")))
    return Inbound(text, codec, message, segments)


def _escape(text: str) -> str:
    """HL7 escape sequences for our own text in MSA-3/ERR (2.7.1)."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(
    inbound: Inbound | None,
    raw: bytes,
    ack_code: str,
    application: str,
    facility: str,
    error: HL7Error | None = None,
) -> tuple[bytes, str]:
    """The ACK bytes (no MLLP framing) in the message's character set, and the codec.

    Without a parsed message (undecodable or garbage input), the MSH fields echoed are read
    from the raw bytes where possible; MSA-2 is then empty when there is no MSH-10."""
    if inbound is not None:
        codec, charset = inbound.codec, inbound.msh(18)

        def hv(n: int) -> str:
            return inbound.msh(n)

    else:
        fields = _header_fields(raw) if raw.lstrip()[3:4] == b"|" else []

        def hv(n: int) -> str:
            value = fields[n - 1] if 1 < n <= len(fields) else ""
            return value if re.fullmatch(r"[\x20-\x7e]*", value) else ""

        charset = hv(18)
        codec = (python_codec(charset) if charset else None) or "ascii"
        charset = charset if codec != "ascii" else ""
    version = hv(12).split("^")[0] or "2.5.1"
    msh9 = hv(9)
    if inbound is not None and hv(11) and hv(12) and "^" in msh9 and "~" not in msh9:
        # the parsed message itself: its MSH has every field the ACK echoes
        source = inbound.message
    else:
        # the source MSH rebuilt from its fields (defaults for MSH-11/12; create_ack needs
        # MSH-9 with its components)
        event = ([*msh9.split("^"), ""])[1]
        source = hl7.parse(
            f"MSH|^~\\&|{hv(3)}|{hv(4)}|{hv(5)}|{hv(6)}|||ACK^{event}|{hv(10)}|"
            f"{hv(11) or 'P'}|{hv(12) or version}||||||{charset}\r"
        )
    ack = source.create_ack(ack_code, None, application, facility)
    if charset:
        ack.segment("MSH").assign_field(charset, 18)
    lines = str(ack).strip("\r").split("\r")
    if error is not None:
        lines[1] += "|" + _escape(error.text)[:80]
        lines.append(_err_segment(error, version))
    text = "\r".join(lines) + "\r"
    return text.encode(codec, errors="replace"), codec


def _err_segment(error: HL7Error, version: str) -> str:
    code = f"{error.code}^{ERROR_TEXT.get(error.code, '')}^HL70357"
    erl = error.location.erl() if error.location else ""
    err1 = ""
    if version.startswith(("2.3", "2.4")):
        # ERR-1 Error Code and Location (ELD, v2.3/2.4): SEG^seq^field^code&text&HL70357
        eld = error.location or Location("MSH", 1, 0)
        err1 = "^".join(
            [
                eld.segment,
                str(eld.sequence),
                str(eld.field or ""),
                f"{error.code}&{ERROR_TEXT.get(error.code, '')}&HL70357",
            ]
        )
    severity = "E"
    return f"ERR|{err1}|{erl}|{code}|{severity}||||{_escape(error.text)[:250]}"
