"""Fuzz harness: seeded mutators of PDUs and DIMSE messages, random command sets and
malformed data sets (PS3.8, PS3.7, PS3.5)."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

from fuzz_wire import (
    MPPS,
    PC_ECHO,
    PC_FIND_E,
    PC_FIND_I,
    PC_MPPS_I,
    PC_REJECTED,
    VERIFICATION,
    command,
    el_e,
    el_i,
    find_rq,
    message,
    n_create_rq,
    n_get_rq,
    n_set_rq,
    pdu,
    pdv,
    ui,
    us,
)

# --- mutation helpers ------------------------------------------------------------------------


def flip_bits(rng: random.Random, data: bytes, count: int, start: int = 0) -> bytes:
    buf = bytearray(data)
    for _ in range(count):
        i = rng.randrange(start, len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def mutate_pdu(rng: random.Random, data: bytes, keep_framing: bool) -> tuple[bytes, str]:
    """A mutated single PDU; with ``keep_framing`` the PDU length matches the new body."""
    body = data[6:]
    kind = rng.choice(
        ["bits", "bytes", "insert", "delete", "item-length", "ae", "version", "duplicate-items"]
    )
    if kind == "bits":
        n = rng.choice([1, 1, 2, 4, 16])
        body = flip_bits(rng, body, n)
        label = f"{n} bit flips"
    elif kind == "bytes":
        buf = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        body, label = bytes(buf), "bytes overwritten"
    elif kind == "insert":
        at = rng.randrange(len(body))
        body = body[:at] + rng.randbytes(rng.randint(1, 64)) + body[at:]
        label = f"bytes inserted at {at}"
    elif kind == "delete":
        at = rng.randrange(len(body))
        body = body[:at] + body[at + rng.randint(1, 32) :]
        label = f"bytes deleted at {at}"
    elif kind == "item-length":
        items = item_offsets(body)
        at = rng.choice(items)
        new = rng.choice([0, 1, 3, 0xFFFF, rng.randrange(0x10000)])
        body = body[: at + 2] + struct.pack(">H", new) + body[at + 4 :]
        label = f"item at {at} length {new:#x}"
    elif kind == "ae":
        title = rng.choice(
            [
                b"\x00" * 16,
                b" " * 16,
                b"\xff" * 16,
                b"A\x00B" + b" " * 13,
                "ÄÖÜ".encode() + b" " * 10,
                b"\\*?%_" + b" " * 11,
            ]
        )
        at = rng.choice([4, 20])
        body = body[:at] + title + body[at + 16 :]
        label = f"{'called' if at == 4 else 'calling'} AE title {title[:8]!r}"
    elif kind == "version":
        version = rng.choice([0, 2, 0xFFFF])
        body = struct.pack(">H", version) + body[2:]
        label = f"protocol version {version:#x}"
    else:
        items = item_offsets(body)
        at = rng.choice(items)
        (length,) = struct.unpack(">H", body[at + 2 : at + 4])
        item = body[at : at + 4 + length]
        times = rng.choice([2, 50, 300])
        body = body[:at] + item * times + body[at + 4 + length :]
        label = f"item type {body[at]:#04x} repeated {times}x"
    if keep_framing:
        return pdu(data[0], body), label
    return data[:6] + body, label + " (PDU length not adjusted)"


def item_offsets(body: bytes) -> list[int]:
    """Offsets of the variable items (and user information sub-items) of an
    A-ASSOCIATE-RQ/AC body."""
    out, i = [], 68
    while i + 4 <= len(body):
        out.append(i)
        itype, _, length = struct.unpack(">BBH", body[i : i + 4])
        if itype in (0x20, 0x21, 0x50):  # descend into sub-items
            j = i + 4 + (4 if itype in (0x20, 0x21) else 0)
            while j + 4 <= i + 4 + length:
                out.append(j)
                j += 4 + struct.unpack(">H", body[j + 2 : j + 4])[0]
        i += 4 + length
    return out or [68]


def split_pdus(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 6 <= len(data):
        (length,) = struct.unpack(">L", data[i + 2 : i + 6])
        out.append(data[i : i + 6 + length])
        i += 6 + length
    return out


def mutate_message(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A mutated DIMSE message (its P-DATA-TF PDUs as captured), never empty."""
    while True:
        out, label = _mutate_message(rng, data)
        if out:
            return out, label


def _mutate_message(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pdus = split_pdus(data)
    k = rng.randrange(len(pdus))
    target = pdus[k]
    where = "command" if target[11] & 0x01 else "data set"
    kind = rng.choice(
        [
            "bits",
            "bits",
            "truncate",
            "pcid",
            "mch",
            "pdv-length",
            "pdu-type",
            "drop",
            "swap",
            "split",
            "duplicate",
            "zero-tail",
        ]
    )
    if kind == "bits":
        n = rng.choice([1, 1, 2, 3, 8, 32])
        target = flip_bits(rng, target, n, start=6)
        label = f"{n} bit flips in the {where} PDU"
    elif kind == "truncate":
        cut = rng.randrange(6, len(target))
        if rng.random() < 0.5:
            target = pdu(0x04, target[6:cut])
            label = f"{where} PDU cut to {cut - 6} body bytes, lengths fitted"
        else:
            target = target[:cut]
            label = f"{where} PDU cut at {cut} (declared length kept)"
    elif kind == "pcid":
        pcid = rng.choice([0, 2, 11, 13, 15, 17, 99, 255, PC_ECHO, PC_MPPS_I, PC_FIND_E])
        target = target[:10] + bytes([pcid]) + target[11:]
        label = f"{where} PDV presentation context id {pcid}"
    elif kind == "mch":
        mch = rng.choice([0x00, 0x01, 0x02, 0x03, 0x04, 0x80, 0xFF, 0xFC])
        target = target[:11] + bytes([mch]) + target[12:]
        label = f"{where} PDV message control header {mch:#04x}"
    elif kind == "pdv-length":
        n = len(target) - 10
        new = rng.choice([0, 1, 2, n - 1, n + 1, n + 1000, 0xFFFFFFFF])
        target = target[:6] + struct.pack(">L", new & 0xFFFFFFFF) + target[10:]
        label = f"{where} PDV length {new & 0xFFFFFFFF:#x} (real {n})"
    elif kind == "pdu-type":
        ptype = rng.choice([0x01, 0x02, 0x03, 0x05, 0x06, 0x08, 0xFF])
        target = bytes([ptype]) + target[1:]
        label = f"{where} PDU sent as type {ptype:#04x}"
    elif kind == "drop":
        target, label = b"", f"{where} PDU left out"
    elif kind == "swap":
        pdus.reverse()
        return b"".join(pdus), "PDUs in reverse order"
    elif kind == "split":  # one byte at a time on the wire is the same: split the PDV instead
        body = target[12:]
        at = rng.randrange(0, max(1, len(body)))
        mch = target[11]
        target = pdu(0x04, pdv(target[10], mch & ~0x02, body[:at])) + pdu(
            0x04, pdv(target[10], mch, body[at:])
        )
        label = f"{where} PDV split at {at}"
    elif kind == "duplicate":
        target, label = target * 2, f"{where} PDU sent twice"
    else:
        keep = rng.randrange(12, len(target))
        target = target[:keep] + b"\x00" * (len(target) - keep)
        label = f"{where} PDU zeroed after byte {keep}"
    pdus[k] = target
    return b"".join(pdus), label


COMMAND_FIELDS = [
    0x0001,
    0x0010,
    0x0020,
    0x0021,
    0x0030,
    0x0100,
    0x0110,
    0x0120,
    0x0130,
    0x0140,
    0x0150,
    0x0FFF,
    0x8020,
    0x8030,
    0x8140,
    0x0000,
    0x0002,
    0x7FFF,
    0xFFFF,
    0x1234,
]


def random_dimse(rng: random.Random, cap: dict, new_uid: Callable[[], str]) -> tuple[bytes, str]:
    """A well-framed P-DATA message whose command set (or data set) is wrong."""
    mid = rng.randrange(1, 0xFFFF)
    kind = rng.choice(
        [
            "field",
            "field",
            "no-class",
            "unnegotiated",
            "wrong-class",
            "garbage-ds",
            "garbage-ds",
            "dataset-type",
            "elements",
            "n-get",
            "cancel",
            "response",
            "no-message-id",
            "group-length",
            "extra-element",
        ]
    )
    find_data = cap["find_data_i"]
    if kind == "field":
        cf = rng.choice(COMMAND_FIELDS)
        fields = find_rq(mid)
        fields[0x00000100] = us(cf)
        with_data = rng.random() < 0.5
        if not with_data:
            fields[0x00000800] = us(0x0101)
        return (
            message(PC_FIND_I, command(fields), find_data if with_data else None),
            f"CommandField {cf:#06x} on the worklist context" + (" + data set" * with_data),
        )
    if kind == "no-class":
        fields = find_rq(mid)
        del fields[0x00000002]
        return message(PC_FIND_I, command(fields), find_data), "C-FIND without AffectedSOPClassUID"
    if kind == "unnegotiated":
        pcid = rng.choice([PC_ECHO, PC_REJECTED, PC_MPPS_I, 17, 0, 255])
        return (
            message(pcid, command(find_rq(mid)), find_data),
            f"worklist C-FIND on presentation context {pcid}",
        )
    if kind == "wrong-class":
        sop = rng.choice([MPPS, VERIFICATION, "1.2.3", "", "9" * 64, "1.2.840.10008.5.1.4.1.2.1.1"])
        return (
            message(PC_FIND_I, command(find_rq(mid, sop)), find_data),
            f"C-FIND with AffectedSOPClassUID {sop[:20]!r}",
        )
    if kind == "garbage-ds":
        service = rng.choice(["C-FIND", "N-CREATE", "N-SET"])
        data = rng.randbytes(rng.choice([1, 7, 8, 100, 1000]))
        if service == "C-FIND":
            cmd, pcid = find_rq(mid), PC_FIND_I
        elif service == "N-CREATE":
            cmd, pcid = n_create_rq(mid, new_uid()), PC_MPPS_I
        else:
            cmd, pcid = n_set_rq(mid, cap["set_uid"]), PC_MPPS_I
        return (
            message(pcid, command(cmd), data),
            f"{service} with {len(data)} random bytes as data set",
        )
    if kind == "dataset-type":
        fields = find_rq(mid)
        value = rng.choice([0x0101, 0x0000, 0xFFFF, 0x0102])
        fields[0x00000800] = us(value)
        with_data = value == 0x0101
        return (
            message(PC_FIND_I, command(fields), find_data if with_data else None),
            f"C-FIND CommandDataSetType {value:#06x}, data set "
            f"{'sent anyway' if with_data else 'not sent'}",
        )
    if kind == "elements":
        fields = find_rq(mid)
        tag = rng.choice([0x00000100, 0x00000110, 0x00000700, 0x00000800, 0x00000002])
        fields[tag] = rng.choice([b"", b"\x01", b"\x01\x02\x03", b"\xff" * 8, b"\x00" * 200])
        return (
            message(PC_FIND_I, command(fields), find_data),
            f"C-FIND command element {tag:#010x} = {fields[tag][:8].hex()} "
            f"({len(fields[tag])} bytes)",
        )
    if kind == "n-get":
        tags = rng.choice(
            [
                None,
                b"",
                b"\x10\x00",
                b"\x10\x00\x10\x00\x20",
                b"\xff" * 4000,
                struct.pack("<HH", 0x0040, 0x0252),
            ]
        )
        uid = rng.choice([cap["set_uid"], "1.2.3.4", "", "x" * 200])
        return (
            message(PC_MPPS_I, command(n_get_rq(mid, uid, tags))),
            f"N-GET {uid[:16]!r} AttributeIdentifierList "
            f"{'absent' if tags is None else tags[:6].hex() + f' ({len(tags)} bytes)'}",
        )
    if kind == "cancel":
        fields = {
            0x00000100: us(0x0FFF),
            0x00000120: us(rng.randrange(0x10000)),
            0x00000800: us(0x0101),
        }
        return message(PC_FIND_I, command(fields)), "C-CANCEL-RQ for an unknown message"
    if kind == "response":
        fields = {
            0x00000002: ui(VERIFICATION),
            0x00000100: us(0x8030),
            0x00000120: us(mid),
            0x00000800: us(0x0101),
            0x00000900: us(0),
        }
        return message(PC_ECHO, command(fields)), "an unsolicited C-ECHO-RSP"
    if kind == "no-message-id":
        fields = find_rq(mid)
        del fields[0x00000110]
        return message(PC_FIND_I, command(fields), find_data), "C-FIND without MessageID"
    if kind == "group-length":
        gl = rng.choice([0, 1, 0xFFFFFFFF, 10_000])
        return (
            message(PC_FIND_I, command(find_rq(mid), group_length=gl), find_data),
            f"C-FIND CommandGroupLength {gl:#x}",
        )
    tag = rng.choice([0x00080050, 0x00100010, 0x7FE00010, 0x00001234])
    fields = find_rq(mid)
    fields[tag] = b"ABCD"
    return (
        message(PC_FIND_I, command(fields), find_data),
        f"C-FIND command set with extra element {tag:#010x}",
    )


# --- malformed data sets (raw bytes) ---------------------------------------------------------

ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF


def nested(depth: int, leaf: bytes, implicit: bool) -> bytes:
    """``depth`` levels of undefined-length sequences (0040,0100) around ``leaf``."""
    data = leaf
    for _ in range(depth):
        item = el_i(ITEM, b"", UNDEFINED) + data + el_i(ITEM_END, b"")
        seq_head = (
            el_i(0x00400100, b"", UNDEFINED) if implicit else el_e(0x00400100, "SQ", b"", UNDEFINED)
        )
        data = seq_head + item + el_i(SEQ_END, b"")
    return data


def malformed_dataset(
    rng: random.Random, cap: dict, service: str, implicit: bool
) -> tuple[bytes, str]:
    """A data set with one malformed element (or nesting, or encoding) for ``service``."""
    base = cap[
        {"C-FIND": "find_data", "N-CREATE": "create_data", "N-SET": "set_data"}[service]
        + ("_i" if implicit else "_e")
    ]
    e = (lambda tag, vr, value, length=None: el_i(tag, value, length)) if implicit else el_e
    ts = "implicit" if implicit else "explicit"
    kind = rng.choice(
        [
            "us-length",
            "fd-length",
            "sq-garbage",
            "sq-open",
            "overlong",
            "odd-text",
            "deep",
            "deep",
            "many",
            "no-item-tag",
            "random",
            "bitflip",
            "deflated",
            "big-endian",
            "charset",
            "charset",
            "group-0000",
            "duplicate",
            "item-ff",
        ]
    )
    if kind == "us-length":
        return base + e(0x00280010, "US", b"\x01\x02\x03"), f"{ts}, Rows (US) 3 bytes long"
    if kind == "fd-length":
        return base + e(0x00189087, "FD", b"\x01" * 5), f"{ts}, an FD element 5 bytes long"
    if kind == "sq-garbage":
        return (
            base + e(0x00400340, "SQ", rng.randbytes(24)),
            f"{ts}, PerformedSeriesSequence of 24 random bytes",
        )
    if kind == "sq-open":
        return (
            base
            + e(0x00400340, "SQ", b"", UNDEFINED)
            + el_i(ITEM, b"", UNDEFINED)
            + e(0x00080060, "CS", b"CT"),
            f"{ts}, undefined-length sequence never closed",
        )
    if kind == "overlong":
        return (
            base + e(0x00100020, "LO", b"ABCD", 0xFFF0 if not implicit else 1_000_000),
            f"{ts}, element length beyond the end of the data set",
        )
    if kind == "odd-text":
        return base + e(0x00100020, "LO", b"ABC"), f"{ts}, odd-length LO"
    if kind == "deep":
        depth = rng.choice([50, 150, 400, 1000, 3000])
        leaf = e(0x00080060, "CS", b"CT")
        data = base + nested(depth, leaf, implicit)
        return data, f"{ts}, {depth} nested sequences"
    if kind == "many":
        count = rng.choice([2000, 20_000])
        data = base + b"".join(e(0x00091000 + k, "LO", b"XX") for k in range(min(count, 0xFF)))
        data += b"".join(e(0x00110000 | ((k % 0xFF00) + 0x1000), "LO", b"XY") for k in range(count))
        return data, f"{ts}, {count} private elements"
    if kind == "no-item-tag":
        return (
            base + e(0x00400100, "SQ", el_i(0x00080060, b"CT\x00\x00")),
            f"{ts}, sequence content without an item tag",
        )
    if kind == "random":
        return rng.randbytes(rng.choice([2, 9, 64, 512])), f"{ts}, random bytes"
    if kind == "bitflip":
        n = rng.choice([1, 2, 8])
        return flip_bits(rng, base, n), f"{ts}, {n} bit flips in a valid data set"
    if kind == "deflated":
        if rng.random() < 0.5:
            return rng.randbytes(100), "deflated context, random (not deflate) bytes"
        comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return (
            comp.compress(rng.randbytes(300)) + comp.flush(),
            "deflated context, deflated random bytes",
        )
    if kind == "big-endian":
        return base, f"big endian context, a {ts} little endian data set"
    if kind == "charset":
        charset, text = rng.choice(
            [
                (b"ISO_IR 192", b"\xc3\x28\xa0\xa1\xff"),
                (b"ISO 2022 IR 87", b"\x1b$B\x80\xff\x1b(B"),
                (b"\\ISO 2022 IR 87", b"Yamada^\x1b$B;3ED\x1b(B\x1b$B\xff"),
                (b"ISO_IR 999 ", b"\xff\xfe\xfd\xfc"),
                (b"ISO 2022 IR 6\\ISO 2022 IR 87\\ISO_IR 999", b"\x1b$)C\x0e\xff\x0f"),
                (b"\x00\x00", b"\xe9"),
                (b"ISO 2022 IR 13\\ISO 2022 IR 87", b"\x1b)I\xb1\x1b$B\x21\x21"),
            ]
        )
        charset = charset + (b" " if len(charset) % 2 else b"")
        text = text + (b" " if len(text) % 2 else b"")
        cs_tag = e(0x00080005, "CS", charset)
        if service == "C-FIND":
            data = cs_tag + e(0x00100010, "PN", text) + base
            return data, f"{ts}, Specific Character Set {charset!r}, PatientName {text!r}"
        data = cs_tag + base + e(0x00400280, "ST", text)
        return data, f"{ts}, Specific Character Set {charset!r}, Comments {text!r}"
    if kind == "group-0000":
        return (
            e(0x00000100, "US", us(0x0030)) + e(0x00000900, "US", us(0)) + base,
            f"{ts}, command elements inside the data set",
        )
    if kind == "duplicate":
        return base + base, f"{ts}, the data set twice (duplicate, unsorted tags)"
    item = el_i(ITEM, e(0x00080060, "CS", b"CT"), 0xFFFFFFF0)
    return base + e(0x00400340, "SQ", item), f"{ts}, an item with a huge defined length"


# --- data sets through pynetdicom ------------------------------------------------------------
