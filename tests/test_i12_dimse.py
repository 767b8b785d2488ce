"""Issue 12, items 3, 5 and 6: what the DIMSE responses of a live server carry.

3. A failure 0x0106 / 0x0120 / 0x0121 on N-CREATE and N-SET names the attribute in the
   Attribute Identifier List (0000,1005) of the response command set, beside the Error
   Comment (PS3.4 F.7.2.1.3, PS3.7 10.3.3 / 10.3.5 with Annex C).
5. An operation the presentation context's SOP Class does not serve (N-DELETE, N-ACTION,
   N-EVENT-REPORT, C-STORE, C-GET, C-MOVE, ... on the MPPS context) is answered with its
   own response type and 0x0211 Unrecognized operation (PS3.7 C.5.23); the association
   stays usable.
6. A request naming another SOP Class than its presentation context's abstract syntax is
   answered with its own response type and 0x0118 No such SOP Class (DIMSE-N, PS3.7
   10.1.x) or 0x0122 Refused: SOP Class not supported (DIMSE-C, PS3.7 9.1.x).

The peer is pynetdicom; where its ``send_*`` methods cannot send the message (another
SOP Class than the context's, a value that does not fit its VR) the test builds the
DIMSE primitive and sends it through the association's DIMSE provider, as ``send_*`` do.

Over 400 lines: three items on one module server and one Peer (association) helper.
"""

from __future__ import annotations

import struct
import time
from io import BytesIO

import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.dimse_primitives import (
    C_ECHO,
    C_FIND,
    C_GET,
    C_MOVE,
    N_CREATE,
    N_DELETE,
    N_GET,
    N_SET,
)
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepRetrieve,
    ModalityWorklistInformationFind,
    Verification,
)

from conftest import SAMPLE, module_server
from worklist_mpps.client.messages import ScheduledStep, n_create, n_set_completed, n_set_progress
from worklist_mpps.client.pynetdicom_race import RequestorAE

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

MPPS = ModalityPerformedProcedureStep
MPPS_RETRIEVE = ModalityPerformedProcedureStepRetrieve
MWL = ModalityWorklistInformationFind
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
TIMEOUT = 15
# response Command Field values (PS3.7 E.1)
RSP_FIELD = {
    "C-STORE": 0x8001,
    "C-GET": 0x8010,
    "C-FIND": 0x8020,
    "C-MOVE": 0x8021,
    "C-ECHO": 0x8030,
    "N-EVENT-REPORT": 0x8100,
    "N-GET": 0x8110,
    "N-SET": 0x8120,
    "N-ACTION": 0x8130,
    "N-CREATE": 0x8140,
    "N-DELETE": 0x8150,
}
ROWS_3_BYTES = struct.pack("<HHL", 0x0028, 0x0010, 3) + b"\x01\x02\x03"  # US, odd length


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with module_server(tmp_path_factory, "i12dimse", "--sample-file", str(SAMPLE)) as live:
        yield live


def tag(keyword: str) -> int:
    return int(tag_for_keyword(keyword))


def tags(value) -> list[int]:
    """An Attribute Identifier List (VM 1 or more) as a list of ints."""
    if value is None:
        return []
    return [int(t) for t in value] if isinstance(value, (list, MultiValue)) else [int(value)]


class Peer:
    """One association with Verification, MWL, MPPS and MPPS Retrieve (implicit VR);
    remembers the command sets it received."""

    def __init__(self, port: int) -> None:
        self.received: list[Dataset] = []
        ae = RequestorAE(ae_title="MODALITY1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        for context in (Verification, MWL, MPPS, MPPS_RETRIEVE):
            ae.add_requested_context(context, ImplicitVRLittleEndian)
        self.assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="WORKLISTS",
            evt_handlers=[(evt.EVT_DIMSE_RECV, self._on_recv)],
        )
        assert self.assoc.is_established

    def _on_recv(self, event) -> None:
        self.received.append(event.message.command_set)

    def context_id(self, abstract_syntax: str) -> int:
        return next(
            cx.context_id
            for cx in self.assoc.accepted_contexts
            if cx.abstract_syntax == abstract_syntax
        )

    def request(self, primitive, abstract_syntax: str) -> Dataset | None:
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
    kwargs = {
        "modality": "CT",
        "station_ae_title": "MODALITY1",
        "patient_name": "Twelve^Patient",
        "patient_id": "I12",
    }
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


def warnings_since(server, mark: int) -> list[str]:
    return server.log()[mark:].splitlines()


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
    "0106 status not IN PROGRESS": (
        lambda: plain_create(status="COMPLETED"),
        b"",
        0x0106,
        "PerformedProcedureStepStatus",
    ),
    "0120 Modality absent": (_missing_modality, b"", 0x0120, "Modality"),
    "0121 Modality empty": (lambda: plain_create(modality=""), b"", 0x0121, "Modality"),
    "0120 StudyInstanceUID of an item absent": (_nested_study_uid, b"", 0x0120, "StudyInstanceUID"),
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
        assert tags(status.get("AttributeIdentifierList")) == [tag("PerformedProcedureStepStatus")]
        # nothing of it stuck: the step is still IN PROGRESS and can be completed
        status, attrs = peer.assoc.send_n_get([], MPPS_RETRIEVE, uid)
        assert status.Status == 0x0000 and attrs.PerformedProcedureStepStatus == "IN PROGRESS"
    finally:
        peer.release()


# --- item 5: operations a context does not serve ------------------------------------------


def _c_get(sop_class: str) -> C_GET:
    req = C_GET()
    req.MessageID, req.AffectedSOPClassUID, req.Priority = 21, sop_class, 0
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = generate_uid()
    req.Identifier = BytesIO(encode(ds, True, True))
    return req


def _c_move(sop_class: str) -> C_MOVE:
    req = C_MOVE()
    req.MessageID, req.AffectedSOPClassUID, req.Priority = 22, sop_class, 0
    req.MoveDestination = "ELSEWHERE"
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = generate_uid()
    req.Identifier = BytesIO(encode(ds, True, True))
    return req


def _c_find(sop_class: str) -> C_FIND:
    req = C_FIND()
    req.MessageID, req.AffectedSOPClassUID, req.Priority = 23, sop_class, 0
    ds = Dataset()
    ds.PatientName = "*"
    req.Identifier = BytesIO(encode(ds, True, True))
    return req


def _c_echo(sop_class: str) -> C_ECHO:
    req = C_ECHO()
    req.MessageID, req.AffectedSOPClassUID = 24, sop_class
    return req


def _n_get(sop_class: str) -> N_GET:
    req = N_GET()
    req.MessageID, req.RequestedSOPClassUID = 25, sop_class
    req.RequestedSOPInstanceUID = generate_uid()
    return req


def _n_create(sop_class: str) -> N_CREATE:
    req = raw_n_create(plain_create())
    req.AffectedSOPClassUID = sop_class
    return req


def _n_delete(sop_class: str) -> N_DELETE:
    req = N_DELETE()
    req.MessageID, req.RequestedSOPClassUID = 26, sop_class
    req.RequestedSOPInstanceUID = generate_uid()
    return req


def event_information() -> Dataset:
    """Event Information of an MPPS In Progress notification (PS3.4 F.9.2.1). (Not an
    empty Dataset: pynetdicom then announces a data set it never sends.)"""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    return ds


# (operation, context, how): each request names the SOP Class of its own context
UNSERVED = [
    ("N-DELETE", MPPS, lambda p: p.assoc.send_n_delete(MPPS, generate_uid())),
    ("N-ACTION", MPPS, lambda p: p.assoc.send_n_action(None, 1, MPPS, generate_uid())),
    (
        "N-EVENT-REPORT",
        MPPS,
        lambda p: p.assoc.send_n_event_report(event_information(), 1, MPPS, generate_uid()),
    ),
    ("C-STORE", MPPS, None),
    ("C-GET", MPPS, lambda p: p.request(_c_get(MPPS), MPPS)),
    ("C-MOVE", MPPS, lambda p: p.request(_c_move(MPPS), MPPS)),
    ("C-FIND", MPPS, lambda p: p.request(_c_find(MPPS), MPPS)),
    ("C-ECHO", MPPS, lambda p: p.request(_c_echo(MPPS), MPPS)),
    ("N-DELETE", MPPS_RETRIEVE, lambda p: p.request(_n_delete(MPPS_RETRIEVE), MPPS_RETRIEVE)),
    ("N-GET", MWL, lambda p: p.request(_n_get(MWL), MWL)),
    ("N-CREATE", Verification, lambda p: p.request(_n_create(Verification), Verification)),
]


def _c_store(peer: Peer) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MPPS  # pynetdicom picks the context by the data set's SOP Class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "I12"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return peer.assoc.send_c_store(ds)


def test_unserved_operations_get_0211_in_their_own_response(server):
    peer = Peer(server.port)
    mark = len(server.log())
    try:
        for op, context, how in UNSERVED:
            (how or _c_store)(peer)
            rsp = peer.last()
            assert rsp.CommandField == RSP_FIELD[op], (
                f"{op} on {context}: answered 0x{rsp.CommandField:04X}"
            )
            assert rsp.Status == 0x0211, f"{op} on {context}: 0x{rsp.Status:04X}"
            assert peer.assoc.is_established, f"{op} on {context} ended the association"
        # the association still serves what it should
        assert peer.assoc.send_c_echo().Status == 0x0000
        status, _ = peer.assoc.send_n_create(plain_create(), MPPS, generate_uid())
        assert status.Status == 0x0000
    finally:
        peer.release()
    lines = [line for line in warnings_since(server, mark) if "0x0211" in line]
    assert len(lines) == len(UNSERVED), "\n".join(lines)
    assert "Traceback" not in server.log()[mark:]


# --- item 6: the response matches the request ---------------------------------------------

# (operation, context, the SOP Class the request names instead, status)
MISMATCHED = [
    ("N-CREATE", MPPS, CT_IMAGE_STORAGE, 0x0118),
    ("N-SET", MPPS, CT_IMAGE_STORAGE, 0x0118),
    ("N-GET", MPPS_RETRIEVE, CT_IMAGE_STORAGE, 0x0118),
    ("C-FIND", MWL, PATIENT_ROOT_FIND, 0x0122),
    ("C-ECHO", Verification, MWL, 0x0122),
]


def _mismatched_request(op: str, sop_class: str):
    if op == "N-CREATE":
        return _n_create(sop_class)
    if op == "N-SET":
        return raw_n_set(generate_uid(), n_set_progress([]), sop_class=sop_class)
    if op == "N-GET":
        return _n_get(sop_class)
    if op == "C-FIND":
        return _c_find(sop_class)
    return _c_echo(sop_class)


def test_request_naming_another_sop_class_is_refused_in_its_own_response(server):
    peer = Peer(server.port)
    mark = len(server.log())
    try:
        for op, context, sop_class, status in MISMATCHED:
            rsp = peer.request(_mismatched_request(op, sop_class), context)
            assert rsp is not None, f"{op} naming {sop_class} on {context}: no answer"
            assert rsp.CommandField == RSP_FIELD[op], (
                f"{op} naming {sop_class}: answered 0x{rsp.CommandField:04X}"
            )
            assert rsp.Status == status, f"{op} naming {sop_class}: 0x{rsp.Status:04X}"
            assert rsp.AffectedSOPClassUID == sop_class  # U(=): as in the request
            assert peer.assoc.is_established
        assert peer.assoc.send_c_echo().Status == 0x0000
        status, _ = peer.assoc.send_n_create(plain_create(), MPPS, generate_uid())
        assert status.Status == 0x0000
    finally:
        peer.release()
    lines = [line for line in warnings_since(server, mark) if "0x0118" in line or "0x0122" in line]
    assert len(lines) == len(MISMATCHED), "\n".join(lines)
    assert "Traceback" not in server.log()[mark:]


def test_refusal_rule():
    """The rule itself, as a plain function: SOP Class first, then the operation."""
    from worklist_mpps.dimse.common import refusal
    from worklist_mpps.dimse.server import RequestHandler

    ops = RequestHandler.operations
    assert refusal("N-CREATE", MPPS, MPPS, ops) is None
    assert refusal("N-GET", MPPS_RETRIEVE, MPPS_RETRIEVE, ops) is None
    assert refusal("N-GET", MPPS, MPPS, ops) is None  # as pynetdicom has always served it
    assert refusal("C-FIND", MWL, MWL, ops) is None
    assert refusal("C-ECHO", Verification, Verification, ops) is None
    assert refusal("N-DELETE", MPPS, MPPS, ops)[0] == 0x0211
    assert refusal("C-ECHO", MPPS, MPPS, ops)[0] == 0x0211
    assert refusal("N-CREATE", CT_IMAGE_STORAGE, MPPS, ops)[0] == 0x0118
    assert refusal("N-DELETE", CT_IMAGE_STORAGE, MPPS, ops)[0] == 0x0118
    assert refusal("C-STORE", CT_IMAGE_STORAGE, MPPS, ops)[0] == 0x0122
    assert refusal("C-ECHO", MWL, Verification, ops)[0] == 0x0122
