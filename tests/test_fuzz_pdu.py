"""Fuzz findings on PDUs and command sets (PS3.8 9.3, PS3.7 9.3): minimal regression cases
of the fuzz run (tests/test_fuzz_listener.py)."""

from __future__ import annotations

import pytest

from dicom_clients import worklist_query
from fuzz_harness import captured, exchange, quiet_clients, server  # noqa: F401 (module fixtures)
from fuzz_mutators import split_pdus
from fuzz_wire import PC_FIND_I, command, ds_bytes, find_rq, message

pytestmark = pytest.mark.dimse  # talks DICOM to a live server


# FINDING F5, fixed: max_pdu_size was only announced; a 1 MB P-DATA-TF PDU was read whole.
# Now a PDU over the announced Maximum Length is aborted before it is read (reactor.py).
def test_a_pdu_over_the_maximum_length_is_refused(server, captured):
    ds = worklist_query(AccessionNumber="A10001")
    ds.PatientComments = "x" * 1_000_000
    payload = message(PC_FIND_I, command(find_rq(1)), ds_bytes(ds))  # one PDU of ~1 MB
    assert max(len(p) for p in split_pdus(payload)) > 1_000_000
    outcome, log = exchange(server, captured, payload)
    assert outcome in ("aborted", "closed"), f"{outcome}\n{log[-800:]}"


# FINDING F6, fixed: pynetdicom dropped a request without a required command element
# (here Affected SOP Class UID) and the SCU waited for its DIMSE timeout; now the
# association is aborted at once (reactor.py).
def test_a_request_missing_a_required_command_element_is_answered(server, captured):
    fields = find_rq(1)
    del fields[0x00000002]
    outcome, log = exchange(
        server, captured, message(PC_FIND_I, command(fields), captured["find_data_i"])
    )
    assert outcome.startswith("status ") or outcome in ("aborted", "closed"), f"{outcome}\n{log}"
