"""Fuzz findings on request data sets (PS3.4 K.6, F.7; PS3.5 7.1): minimal regression cases
of the fuzz run (tests/test_fuzz_listener.py), each with the smallest input found."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from dicom_clients import worklist_query
from fuzz_generators import VR_VALUES, tag_for, unscheduled
from fuzz_harness import InstancePool, captured, exchange, our_tracebacks, quiet_clients, server  # noqa: F401 (module fixtures)
from fuzz_mutators import ITEM, UNDEFINED, nested
from fuzz_wire import (
    PC_FIND_DEFL,
    PC_FIND_E,
    PC_FIND_I,
    PC_MPPS_E,
    PC_MPPS_I,
    SEED,
    command,
    ds_bytes,
    el_e,
    el_i,
    find_rq,
    message,
    n_create_rq,
    n_set_rq,
)

pytestmark = pytest.mark.dimse  # talks DICOM to a live server


# --- findings: minimal regression cases ---------------------------------------------------------
# Each reproduces one finding of the fuzz run with the smallest input found; xfail(strict)
ROWS_3_BYTES = el_i(0x00280010, b"\x01\x02\x03")  # Rows (US) with an odd length, implicit VR


def test_n_set_with_an_unencodable_element_is_not_a_silent_success(server, captured):
    pool = InstancePool(server.port, prefix=f"2.25.{SEED}61")
    try:
        uid = pool.take()
        data = ROWS_3_BYTES + el_i(0x00400252, b"DISCONTINUED")
        outcome, log = exchange(
            server, captured, message(PC_MPPS_I, command(n_set_rq(1, uid)), data)
        )
        stored = pool.stored(uid, "PerformedProcedureStepStatus")
    finally:
        pool.close()
    assert outcome != "status 0x0000" or stored == "DISCONTINUED", (
        f"N-SET DISCONTINUED answered {outcome}, the step is still {stored!r}\n{log}"
    )


def test_n_create_with_an_unencodable_element_names_the_real_problem(server, captured):
    data = captured["create_data_i"] + ROWS_3_BYTES
    outcome, log = exchange(
        server, captured, message(PC_MPPS_I, command(n_create_rq(1, f"2.25.{SEED}62")), data)
    )
    assert outcome != "status 0x0120" and "Missing attribute" not in log, f"{outcome}\n{log}"


UNCLOSED_SQ = (
    el_i(0x00400340, b"", UNDEFINED) + el_i(ITEM, b"", UNDEFINED) + el_i(0x00080060, b"CT")
)  # an undefined-length sequence that never ends
F2_CASES = {
    "C-FIND + FD of 5 bytes": (PC_FIND_I, "find", el_i(0x00189087, b"\x01" * 5)),
    "C-FIND + unclosed sequence": (PC_FIND_I, "find", UNCLOSED_SQ),
    "C-FIND + 400 nested sequences": (
        PC_FIND_I,
        "find",
        nested(400, el_i(0x00080060, b"CT"), True),
    ),
    "C-FIND on the deflated context, not deflated": (PC_FIND_DEFL, "find", None),
    "N-CREATE + unclosed sequence": (PC_MPPS_I, "create", UNCLOSED_SQ),
    "N-CREATE + FD of 5 bytes, explicit VR": (
        PC_MPPS_E,
        "create",
        el_e(0x00189087, "FD", b"\x01" * 5),
    ),
}


# FINDING F2, fixed: an undecodable request data set was answered 0xC001 / 0x0110 and
# logged with a full traceback; it is now decoded up front and refused with 0xA900
# (C-FIND) or 0x0106 (N-CREATE, N-SET) and one log line (dimse/context.decoded).
@pytest.mark.parametrize("name", sorted(F2_CASES))
def test_undecodable_request_is_refused_without_a_traceback(server, captured, name):
    pcid, service, extra = F2_CASES[name]
    if service == "find":
        cmd = find_rq(1)
        data = captured["find_data_i"] + extra if extra is not None else captured["find_data_i"]
    else:
        cmd = n_create_rq(1, f"2.25.{SEED}63{sorted(F2_CASES).index(name)}")
        base = captured["create_data_e" if pcid == PC_MPPS_E else "create_data_i"]
        data = base + extra
    outcome, log = exchange(server, captured, message(pcid, command(cmd), data, fragment=16000))
    assert outcome.startswith("status "), outcome
    assert not our_tracebacks(log), f"{outcome}\n{log}"


@pytest.mark.parametrize("service", ["N-CREATE", "N-SET"])
def test_mpps_sequence_with_another_vr_is_an_invalid_value(server, captured, service):
    wrong = el_e(0x00400340, "LO", b"x ")
    if service == "N-CREATE":
        ds = unscheduled(640)
        del ds.PerformedSeriesSequence
        cmd, data = n_create_rq(1, f"2.25.{SEED}64"), ds_bytes(ds, False) + wrong
    else:
        pool = InstancePool(server.port, prefix=f"2.25.{SEED}65")
        try:
            uid = pool.take()
        finally:
            pool.close()
        cmd, data = n_set_rq(1, uid), captured["set_data_e"] + wrong
    outcome, log = exchange(server, captured, message(PC_MPPS_E, command(cmd), data))
    assert outcome == "status 0x0106" and not our_tracebacks(log), f"{outcome}\n{log}"


@pytest.mark.parametrize("vr", ["SQ", "AT", "US"])
def test_find_code_item_key_with_another_vr(server, captured, vr):
    ds = worklist_query(AccessionNumber="A10001")
    item = Dataset()
    item.add_new(tag_for("CodeValue"), vr, VR_VALUES[vr]())
    ds.RequestedProcedureCodeSequence = Sequence([item])
    outcome, log = exchange(
        server, captured, message(PC_FIND_E, command(find_rq(1)), ds_bytes(ds, False))
    )
    assert outcome in ("status 0x0000", "status 0xA900"), f"{outcome}\n{log}"
    assert not our_tracebacks(log), log
