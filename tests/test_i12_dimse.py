"""Issue 12, item 3: what the DIMSE responses of a live server carry.

3. A failure 0x0106 / 0x0120 / 0x0121 on N-CREATE and N-SET names the attribute in the
   Attribute Identifier List (0000,1005) of the response command set, beside the Error
   Comment (PS3.4 F.7.2.1.3, PS3.7 10.3.3 / 10.3.5 with Annex C).

The peer is pynetdicom; where its ``send_*`` methods cannot send the message (another
SOP Class than the context's, a value that does not fit its VR) the test builds the
DIMSE primitive and sends it through the association's DIMSE provider, as ``send_*`` do.
"""

from __future__ import annotations

import struct
import time
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepRetrieve,
    ModalityWorklistInformationFind,
    Verification,
)

from conftest import SAMPLE, module_server
from worklist_mpps.mpps_messages import (
    ScheduledStep,
    n_create,
    n_set_completed,
    n_set_progress,
)

MPPS = ModalityPerformedProcedureStep
MPPS_RETRIEVE = ModalityPerformedProcedureStepRetrieve
MWL = ModalityWorklistInformationFind
TIMEOUT = 15
# response Command Field values (PS3.7 E.1)
RSP_FIELD = {"C-STORE": 0x8001, "C-GET": 0x8010, "C-FIND": 0x8020, "C-MOVE": 0x8021,
             "C-ECHO": 0x8030, "N-EVENT-REPORT": 0x8100, "N-GET": 0x8110, "N-SET": 0x8120,
             "N-ACTION": 0x8130, "N-CREATE": 0x8140, "N-DELETE": 0x8150}
ROWS_3_BYTES = struct.pack("<HHL", 0x0028, 0x0010, 3) + b"\x01\x02\x03"  # US, odd length


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with module_server(tmp_path_factory, "i12dimse", "--sample-file", str(SAMPLE)) as live:
        yield live


def tag(keyword: str) -> int:
    return int(tag_for_keyword(keyword))


def tags(value) -> list[int]:  # noqa: ANN001
    """An Attribute Identifier List (VM 1 or more) as a list of ints."""
    if value is None:
        return []
    return [int(t) for t in value] if isinstance(value, (list, MultiValue)) else [int(value)]


class Peer:
    """One association with Verification, MWL, MPPS and MPPS Retrieve (implicit VR);
    remembers the command sets it received."""

    def __init__(self, port: int) -> None:
        self.received: list[Dataset] = []
        ae = AE(ae_title="MODALITY1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        for context in (Verification, MWL, MPPS, MPPS_RETRIEVE):
            ae.add_requested_context(context, ImplicitVRLittleEndian)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS",
                                  evt_handlers=[(evt.EVT_DIMSE_RECV, self._on_recv)])
        assert self.assoc.is_established

    def _on_recv(self, event) -> None:  # noqa: ANN001
        self.received.append(event.message.command_set)

    def context_id(self, abstract_syntax: str) -> int:
        return next(cx.context_id for cx in self.assoc.accepted_contexts
                    if cx.abstract_syntax == abstract_syntax)

    def request(self, primitive, abstract_syntax: str) -> Dataset | None:  # noqa: ANN001
        """Send a request primitive on the context of ``abstract_syntax`` as pynetdicom's
        send_* do; the command set of the response (None: no answer)."""
        self.received.clear()
        assoc = self.assoc
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        try:
            assoc.dimse.send_msg(primitive, self.context_id(abstract_syntax))
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        return self.received[-1] if rsp is not None and self.received else None

    def last(self) -> Dataset:
        assert self.received, "no response"
        return self.received[-1]

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def plain_create(**overrides) -> Dataset:
    kwargs = dict(modality="CT", station_ae_title="MODALITY1",
                  patient_name="Twelve^Patient", patient_id="I12")
    kwargs.update(overrides)
    return n_create([ScheduledStep(generate_uid())], **kwargs)


def raw_n_create(ds: Dataset, extra: bytes = b"") -> N_CREATE:
    req = N_CREATE()
    req.MessageID = 7
    req.AffectedSOPClassUID = MPPS
    req.AffectedSOPInstanceUID = generate_uid()
    req.AttributeList = BytesIO(encode(ds, True, True) + extra)
    return req


def raw_n_set(uid: str, ds: Dataset, extra: bytes = b"", sop_class: str = MPPS) -> N_SET:
    req = N_SET()
    req.MessageID = 8
    req.RequestedSOPClassUID = sop_class
    req.RequestedSOPInstanceUID = uid
    req.ModificationList = BytesIO(encode(ds, True, True) + extra)
    return req


# --- item 3: failure statuses name the attribute -------------------------------------------

def _missing_modality() -> Dataset:
    ds = plain_create()
    del ds.Modality
    return ds


def _nested_study_uid() -> Dataset:
    ds = plain_create()
    del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    return ds


N_CREATE_FAILURES = {
    "0106 status not IN PROGRESS": (lambda: plain_create(status="COMPLETED"), b"", 0x0106,
                                    "PerformedProcedureStepStatus"),
    "0120 Modality absent": (_missing_modality, b"", 0x0120, "Modality"),
    "0121 Modality empty": (lambda: plain_create(modality=""), b"", 0x0121, "Modality"),
    "0120 StudyInstanceUID of an item absent": (_nested_study_uid, b"", 0x0120,
                                                "StudyInstanceUID"),
    "0106 Rows of 3 bytes": (plain_create, ROWS_3_BYTES, 0x0106, "Rows"),
}


@pytest.mark.parametrize("case", sorted(N_CREATE_FAILURES))
def test_n_create_failure_names_the_attribute(server, case):
    make, extra, status, keyword = N_CREATE_FAILURES[case]
    peer = Peer(server.port)
    try:
        rsp = peer.request(raw_n_create(make(), extra), MPPS)
        assert rsp is not None, "no N-CREATE response"
        assert rsp.CommandField == RSP_FIELD["N-CREATE"]
        assert rsp.Status == status, f"0x{rsp.Status:04X} {rsp.get('ErrorComment')}"
        assert rsp.get("ErrorComment")
        assert tags(rsp.get("AttributeIdentifierList")) == [tag(keyword)], rsp
    finally:
        peer.release()


def test_n_set_failure_names_the_attribute(server):
    peer = Peer(server.port)
    try:
        uid = generate_uid()
        status, _ = peer.assoc.send_n_create(plain_create(), MPPS, uid)
        assert status.Status == 0x0000
        cases = []
        mods = n_set_completed([])
        cases.append((mods, b"", 0x0121, "PerformedSeriesSequence"))
        mods = n_set_progress([])
        mods.PerformedProcedureStepStatus = "FINISHED"
        cases.append((mods, b"", 0x0106, "PerformedProcedureStepStatus"))
        cases.append((n_set_progress([]), ROWS_3_BYTES, 0x0106, "Rows"))
        for mods, extra, code, keyword in cases:
            rsp = peer.request(raw_n_set(uid, mods, extra), MPPS)
            assert rsp is not None and rsp.CommandField == RSP_FIELD["N-SET"]
            assert rsp.Status == code, f"{keyword}: 0x{rsp.Status:04X} {rsp.get('ErrorComment')}"
            assert rsp.get("ErrorComment")
            assert tags(rsp.get("AttributeIdentifierList")) == [tag(keyword)], rsp
        # pynetdicom's own N-SET hands the list over in the status
        status, _ = peer.assoc.send_n_set(cases[1][0], MPPS, uid)
        assert tags(status.get("AttributeIdentifierList")) == [
            tag("PerformedProcedureStepStatus")]
        # nothing of it stuck: the step is still IN PROGRESS and can be completed
        status, attrs = peer.assoc.send_n_get([], MPPS_RETRIEVE, uid)
        assert status.Status == 0x0000 and attrs.PerformedProcedureStepStatus == "IN PROGRESS"
    finally:
        peer.release()
