"""Outbox target ``hl7:NAME``: the procedure status back to an order placer over MLLP.

IHE RAD TF-2 RAD-3 (Filler Order Management, status change): an ORM^O01 (HL7 v2.3.1) or
OMI^O23 (v2.5.1) with ORC-1 ``SC`` and ORC-5 ``IP`` / ``CM`` / ``DC`` (HL7 Table 0038)
when the procedure step starts, completes or is discontinued. The message is built here,
at delivery time, from the JSON snapshot services/order_status.py queued with the MPPS
change. Segments (HL7 v2.5.1 ch. 4: 4.4 ORM^O01, 4.4.6 OMI^O23; 2.14 MSH):

- MSH-10 is ``WLM<outbox row id>``: a redelivery after a lost ACK carries the same control
  ID, and the receiver's duplicate detection (v2.5.1 2.10.2) applies it once;
- PID-3 ID^^^issuer (PID-3.4), PID-5 (DICOM PN alphabetic group, reordered to XPN:
  family^given^middle^suffix^prefix), PID-7/8; PV1-19 the admission ID when there is one;
- ORC-2/3 placer/filler order number, ORC-5 the status, ORC-9 when the change happened,
  ORC-16 the discontinuation reason;
- OBR-2/3, OBR-4 requested procedure code, OBR-7/8 performed start/end, OBR-18 accession,
  OBR-19 requested procedure ID, OBR-20 SPS ID, OBR-24 modality. OBR-25 (result status,
  Table 0123) stays empty: it speaks of results (the report), which this server does not
  make; the procedure status is ORC-5, as RAD-3 says;
- with CM and DC, two OBX (NM) carry the performed series and instance counts of the
  MPPS (OBX is allowed after OBR in both message structures; local codes ``99WLM``);
- OMI^O23 adds TQ1 (TQ1-7 the scheduled start) and IPC (IPC-1 accession, -2 requested
  procedure ID, -3 Study Instance UID, -4 SPS ID, -5 modality, -7 station name,
  -8 location, -9 station AE title).

Values are escaped with python-hl7's escape (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\, v2.5.1 2.7.4);
text that is not ASCII is sent as UTF-8 with MSH-18 ``UNICODE UTF-8``.

The ACK (original mode, v2.5.1 2.9.2): MSA-1 AA (or CA) and MSA-2 echoing our MSH-10:
delivered. AE / AR (CE / CR): failed with MSA-3 and the ERR text, for an operator
(``outbox retry``); the later states of that order wait behind it, so the placer never
hears CM before the IP it refused. No answer, a timeout, a refused connection, an
unreadable ACK or one for another control ID: retry with backoff.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import hl7  # type: ignore[import-untyped]

from worklist_mpps.config import Config, HL7Destination
from worklist_mpps.db.models import OutboxMessage
from worklist_mpps.delivery.worker import Failed, Retry
from worklist_mpps.services import outbox

START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"  # MLLP framing (HL7 v2 MLLP release 1)
MAX_ACK_SIZE = 1_048_576
SEPARATORS = "\r|~^&"  # segment, field, repetition, component, subcomponent
ENCODING_CHARACTERS = "^~\\&"
LOCAL_CODES = "99WLM"  # HL7 Table 0396: 99zzz, a local coding system

# a container that knows the separators, for python-hl7's escape
_ESCAPER = hl7.Message(separators=SEPARATORS)
# control characters other than CR (.br): hexadecimal escapes (v2.5.1 2.7.5)
_CONTROLS = {chr(c): f"X{c:02X}" for c in [*range(0x20), 0x7F] if c != 0x0D}
_NON_ASCII = re.compile(r"([^\x00-\x7f]+)")


def control_id(message_id: int) -> str:
    """MSH-10 of an outbox row: the same on every delivery attempt."""
    return f"WLM{message_id}"


def escape(value: Any) -> str:
    """One value as HL7 text: separators and the escape character escaped by python-hl7;
    characters beyond ASCII kept (the message is then UTF-8, MSH-18)."""
    if value is None:
        return ""
    text = str(value)
    return "".join(
        part if _NON_ASCII.fullmatch(part) else hl7.util.escape(_ESCAPER, part, _CONTROLS)
        for part in _NON_ASCII.split(text)
        if part
    )


Value = str | int | None | list[Any]  # a field: a value, or components (a list of values)


def _field(value: Value) -> Any:
    if isinstance(value, list):
        components = [
            hl7.Component(SEPARATORS[4], [escape(s) for s in c], separators=SEPARATORS)
            if isinstance(c, list)
            else escape(c)
            for c in value
        ]
        while components and components[-1] == "":
            components.pop()
        return hl7.Field(
            SEPARATORS[2],
            [hl7.Repetition(SEPARATORS[3], components, separators=SEPARATORS)],
            separators=SEPARATORS,
        )
    return hl7.Field(SEPARATORS[2], [escape(value)], separators=SEPARATORS)


def segment(name: str, *fields: Value) -> Any:
    """A segment from its fields (1-based after the name); trailing empty fields dropped."""
    values = list(fields)
    while values and values[-1] in (None, "", []):
        values.pop()
    return hl7.Segment(
        SEPARATORS[1],
        [hl7.Field(SEPARATORS[2], [name], separators=SEPARATORS)] + [_field(v) for v in values],
        separators=SEPARATORS,
    )


def _fields(**numbered: Value) -> list[Value]:
    """Fields by number (``f4=...``) as a list from field 1."""
    out: list[Value] = [None] * max(int(k[1:]) for k in numbered)
    for key, value in numbered.items():
        out[int(key[1:]) - 1] = value
    return out


def _person_name(dicom_pn: str | None) -> list[Any]:
    """DICOM PN family^given^middle^prefix^suffix (alphabetic group) to HL7 XPN
    family^given^middle^suffix^prefix (v2.5.1 2.A.88)."""
    parts = (dicom_pn or "").split("=")[0].split("^")
    parts += [""] * (5 - len(parts))
    return [parts[0], parts[1], parts[2], parts[4], parts[3]]


def _code(payload: dict[str, Any]) -> list[Any]:
    """OBR-4 Universal Service ID: the requested procedure code, else its description."""
    codes = payload.get("requested_procedure_codes") or []
    if codes:
        c = codes[0]
        return [
            c.get("value"),
            c.get("meaning") or payload.get("requested_procedure_description"),
            c.get("scheme"),
        ]
    return ["", payload.get("requested_procedure_description") or payload.get("sps_description")]


def message_type(fmt: str, version: str) -> list[Any]:
    if fmt == "OMI^O23":
        return ["OMI", "O23", "OMI_O23"]
    return ["ORM", "O01"] if version in ("2.3", "2.3.1") else ["ORM", "O01", "ORM_O01"]


def build_message(
    payload: dict[str, Any],
    destination: HL7Destination,
    message_control_id: str,
    application: str,
    facility: str = "",
    fmt: str | None = None,
) -> tuple[str, bytes]:
    """(text, bytes) of the status message for one queued change."""
    fmt = fmt or destination.format
    version = destination.version or ("2.5.1" if fmt == "OMI^O23" else "2.3.1")
    patient = payload.get("patient") or {}
    mpps = payload.get("mpps") or {}
    status = payload["order_status"]
    final = status in ("CM", "DC")
    placer, filler = payload.get("placer_order_number"), payload.get("filler_order_number")
    segments = [
        segment(
            "PID",
            *_fields(
                f1="1",
                f3=[patient.get("id"), "", "", patient.get("issuer")],
                f5=_person_name(patient.get("name")),
                f7=patient.get("birth_date"),
                f8=patient.get("sex"),
            ),
        ),
    ]
    if payload.get("admission_id"):
        segments.append(segment("PV1", *_fields(f1="1", f2="U", f19=payload["admission_id"])))
    # ORC-16 Order Control Code Reason: the MPPS's discontinuation reason, else the reason
    # given with a cancel or a status set by hand
    reason = (
        (mpps.get("discontinuation_reason") or payload.get("status_reason"))
        if status == "DC"
        else None
    )
    segments.append(
        segment(
            "ORC",
            *_fields(
                f1="SC",
                f2=placer,
                f3=filler,
                f5=status,
                f9=payload.get("queued_at"),
                f16=["", reason] if reason else None,
            ),
        )
    )
    if fmt == "OMI^O23":
        segments.append(segment("TQ1", *_fields(f1="1", f7=payload.get("sps_start"))))
    segments.append(
        segment(
            "OBR",
            *_fields(
                f1="1",
                f2=placer,
                f3=filler,
                f4=_code(payload),
                f7=mpps.get("start"),
                f8=mpps.get("end") if final else None,
                f18=payload.get("accession_number"),
                f19=payload.get("requested_procedure_id"),
                f20=payload.get("sps_id"),
                f24=payload.get("modality"),
            ),
        )
    )
    if final and mpps:  # the counts of a performed step; none for a change by hand
        for n, (code, meaning, count) in enumerate(
            [
                ("SERIES", "Performed series", mpps.get("series")),
                ("INSTANCES", "Performed instances", mpps.get("instances")),
            ],
            start=1,
        ):
            segments.append(
                segment(
                    "OBX",
                    *_fields(
                        f1=str(n),
                        f2="NM",
                        f3=[code, meaning, LOCAL_CODES],
                        f5=str(count or 0),
                        f11="F",
                    ),
                )
            )
    if fmt == "OMI^O23":
        segments.append(
            segment(
                "IPC",
                *_fields(
                    f1=payload.get("accession_number"),
                    f2=payload.get("requested_procedure_id"),
                    f3=payload.get("study_instance_uid"),
                    f4=payload.get("sps_id"),
                    f5=payload.get("modality"),
                    f7=payload.get("scheduled_station_name"),
                    f8=[payload.get("sps_location")] if payload.get("sps_location") else None,
                    f9=payload.get("scheduled_station_ae_title"),
                ),
            )
        )
    body = "".join(str(s) for s in segments)
    unicode = not (body + application + facility).isascii()
    header = _fields(
        f3=application,
        f4=facility,
        f5=destination.application,
        f6=destination.facility,
        f7=payload.get("queued_at"),
        f9=message_type(fmt, version),
        f10=message_control_id,
        f11="P",
        f12=version,
        f18="UNICODE UTF-8" if unicode else None,
    )
    msh = segment("MSH", "", *header[1:])
    # MSH-1 and MSH-2 are the separators themselves, never escaped (v2.5.1 2.14.9.1-2)
    msh[1] = hl7.Field(SEPARATORS[2], [SEPARATORS[1]], separators=SEPARATORS)
    msh[2] = hl7.Field(SEPARATORS[2], [ENCODING_CHARACTERS], separators=SEPARATORS)
    text = str(hl7.Message(separators=SEPARATORS, sequence=[msh, *segments]))
    return text, text.encode("utf-8" if unicode else "ascii")


# --- MLLP -----------------------------------------------------------------------------


def exchange(host: str, port: int, data: bytes, timeout: float) -> bytes:
    """Send one framed message and read the framed answer (0x0B ... 0x1C 0x0D), within
    ``timeout`` for the connection and ``timeout`` for the whole answer; OSError for a
    refused or silent peer, ValueError for an answer that is no MLLP block."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(START_BLOCK + data + END_BLOCK)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ACK within {timeout:g} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no ACK within {timeout:g} s") from None
            if not chunk:
                raise ConnectionError("connection closed before the ACK ended")
            received += chunk
            end = received.find(END_BLOCK)
            if end >= 0:
                if not received.startswith(START_BLOCK):
                    raise ValueError("the answer does not start with an MLLP block (0x0B)")
                return bytes(received[1:end])
            if len(received) > MAX_ACK_SIZE:
                raise ValueError(f"the answer exceeds {MAX_ACK_SIZE} bytes without an end")


def _text(container: Any) -> str:
    return _ESCAPER.unescape(str(container)) if container is not None else ""


def _error_text(ack: Any) -> str:
    """The ERR segments' text: v2.3.1 ERR-1 (code and location), v2.5 ERR-3 (HL7 error
    code), ERR-8 (user message); whatever the sender filled in, without separators."""
    texts = []
    try:
        errs = ack.segments("ERR")
    except KeyError:
        return ""
    for err in errs:
        words = re.split(r"[\^&~|]+", str(err)[4:])
        texts.append(" ".join(_ESCAPER.unescape(w) for w in words if w.strip()))
    return "; ".join(t for t in texts if t)


def read_ack(raw: bytes, expected_control_id: str) -> str:
    """The note of an accepted ACK; Failed for AE/AR (CE/CR), Retry for anything that
    does not acknowledge our message (HL7 v2.5.1 2.9.2, Table 0008)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        ack = hl7.parse(text)
        msa = ack.segment("MSA")
    except (hl7.HL7Exception, LookupError, ValueError, AssertionError) as exc:
        raise Retry(f"unreadable ACK ({exc.__class__.__name__}): {text[:80]!r}") from None
    # python-hl7's parse: ParseException, IndexError (a bare MSH), KeyError (no MSA)
    code = _text(msa(1)).strip() if len(msa) > 1 else ""
    echoed = _text(msa(2)).strip() if len(msa) > 2 else ""
    if echoed != expected_control_id:
        raise Retry(f"{code} ACK for control ID {echoed!r}, not {expected_control_id!r}")
    if code in ("AA", "CA"):
        return f"{code} {expected_control_id}"
    if code in ("AE", "AR", "CE", "CR"):
        why = _text(msa(3)).strip() if len(msa) > 3 else ""
        err = _error_text(ack)
        raise Failed(
            f"{code} {expected_control_id}"
            + (f": {why}" if why else "")
            + (f" (ERR {err})" if err else "")
        )
    raise Retry(f"ACK with unknown MSA-1 {code!r}")


class HL7StatusTarget:
    """One order placer: the status rows of ``hl7:NAME``, each state in order."""

    supersede = False  # IP then CM: the placer hears every state, in order
    hold_after_failure = True  # a refused IP holds the CM until an operator retries it

    def __init__(self, destination: HL7Destination, config: Config) -> None:
        self.destination = destination
        self.config = config
        self.name = outbox.hl7_target_name(destination.name)

    def deliver(self, message: OutboxMessage) -> str | None:
        try:
            payload = json.loads(message.payload or b"")
            fmt = self.destination.format
            _, data = build_message(
                payload,
                self.destination,
                control_id(message.id),
                self.config.hl7_application,
                self.config.hl7_facility,
                fmt,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise Failed(f"cannot build the message: {exc}") from None
        dest = self.destination
        try:
            raw = exchange(dest.host, dest.port, data, self.config.hl7_ack_timeout)
        except (OSError, ValueError) as exc:
            raise Retry(f"{dest.host}:{dest.port}: {exc or exc.__class__.__name__}") from None
        return f"{fmt} " + read_ack(raw, control_id(message.id))
