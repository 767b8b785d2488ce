"""The C-FIND fast path (dimse/pynetdicom_ext/wire.py) against pynetdicom's and pydicom's own
encoders, and live: every transfer syntax, character set and PDU size gives the same responses
whichever path encodes them."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RSP, N_CREATE_RSP, N_SET_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, N_CREATE, N_SET
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL
from pynetdicom.sop_class import Verification

from conftest import SAMPLE, module_server
from dicom_clients import find, worklist_query
from worklist_mpps.client.pynetdicom_race import RequestorAE
from worklist_mpps.dimse.pynetdicom_ext import wire
from worklist_mpps.services import worklist

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


def pynetdicom_pdvs(
    message_id: int, status: int, identifier: bytes | None, context_id: int, max_pdu: int
) -> list[tuple[int, bytes]]:
    """The PDVs pynetdicom itself sends for this C-FIND-RSP."""
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MWL
    rsp.Status = status
    if identifier is not None:
        rsp.Identifier = BytesIO(identifier)
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    return [
        tuple(pdv)
        for pdata in msg.encode_msg(context_id, max_pdu)
        for pdv in pdata.presentation_data_value_list
    ]


def pdus(data: bytes) -> list[P_DATA_TF]:
    """Split a byte stream into decoded P-DATA-TF PDUs."""
    out = []
    while data:
        length = int.from_bytes(data[2:6], "big")
        pdu = P_DATA_TF()
        pdu.decode(data[: 6 + length])
        out.append(pdu)
        data = data[6 + length :]
    return out


@pytest.mark.parametrize(
    "identifier", [None, b"", b"\x10\x00\x10\x00\x04\x00\x00\x00ABCD", bytes(range(256)) * 40]
)
@pytest.mark.parametrize("max_pdu", [0, 16384, 64])
def test_find_response_bytes_are_pynetdicoms(identifier, max_pdu):
    status = 0x0000 if identifier is None else 0xFF00
    ours = pdus(wire.find_response(513, status, identifier, 7, max_pdu))
    pdvs = [
        (item.presentation_context_id, item.data)
        for pdu in ours
        for item in pdu.presentation_data_value_items
    ]
    if identifier == b"":
        # pynetdicom refuses to send an empty identifier; ours is one empty PDV
        assert pdvs[-1] == (7, b"\x02")
        return
    assert pdvs == pynetdicom_pdvs(513, status, identifier, 7, max_pdu)
    # within the peer's maximum PDU length; command and identifier share a PDU when they fit
    assert all(max_pdu == 0 or pdu.pdu_length <= max_pdu for pdu in ours)
    if identifier is not None and len(identifier) < 100 and max_pdu != 64:
        assert len(ours) == 1


def _encoded_command(primitive, message_class) -> bytes:
    msg = message_class()
    msg.primitive_to_message(primitive)
    (pdata,) = msg.encode_msg(1, 0)
    return pdata.presentation_data_value_list[0][1][1:]


def test_status_only_responses_are_pynetdicoms():
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo, echo.AffectedSOPClassUID, echo.Status = 7, Verification, 0
    assert wire.status_only_command(echo) == _encoded_command(echo, C_ECHO_RSP)
    final = C_FIND()
    final.MessageIDBeingRespondedTo, final.AffectedSOPClassUID, final.Status = 65535, MWL, 0
    assert wire.status_only_command(final) == _encoded_command(final, C_FIND_RSP)
    final.ErrorComment = "x"  # anything more: pynetdicom encodes it
    assert wire.status_only_command(final) is None
    pending = C_FIND()
    pending.MessageIDBeingRespondedTo, pending.AffectedSOPClassUID, pending.Status = 1, MWL, 0xFF00
    pending.Identifier = BytesIO(b"\x10\x00\x10\x00\x00\x00\x00\x00")
    assert wire.status_only_command(pending) is None


@pytest.mark.parametrize(("primitive", "message"), [(N_CREATE, N_CREATE_RSP), (N_SET, N_SET_RSP)])
@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "2.25." + "9" * 59])
@pytest.mark.parametrize("status", [0x0000, 0x0107, 0x0110])
def test_status_only_mpps_responses_are_pynetdicoms(primitive, message, instance, status):
    """N-CREATE-RSP and N-SET-RSP (the MPPS answers): byte for byte pynetdicom's command
    set when only the status is set, odd and even UID lengths; None with anything more."""
    rsp = primitive()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID = 65535, MPPS
    rsp.AffectedSOPInstanceUID, rsp.Status = instance, status
    assert wire.status_only_command(rsp) == _encoded_command(rsp, message)
    for name, value in (
        ("ErrorComment", "x"),
        ("ErrorID", 0xA710),
        ("AttributeIdentifierList", [0x00100010]),
        ("AttributeList", BytesIO(b"\x10\x00\x10\x00\x00\x00\x00\x00")),
    ):
        more = primitive()
        more.MessageIDBeingRespondedTo, more.AffectedSOPClassUID = 1, MPPS
        more.AffectedSOPInstanceUID, more.Status = instance, status
        setattr(more, name, value)
        assert wire.status_only_command(more) is None, name
    rsp.AffectedSOPInstanceUID = None  # pynetdicom then leaves (0000,1000) out
    assert wire.status_only_command(rsp) is None


# --- identifiers: the same data set as pydicom's encoding of worklist.response -----------------


def every_key() -> Dataset:
    ds = Dataset()
    for key in worklist.TOP_KEYS.values():
        ds.add_new(key.keyword, key.vr, Sequence() if key.vr == "SQ" else None)
    ds.OtherPatientIDs = ""  # not in the model: echoed empty
    ds.add_new(0x00091001, "US", None)  # private, unknown VR: echoed empty
    item = Dataset()
    for key in worklist.SPS_KEYS.values():
        item.add_new(key.keyword, key.vr, Sequence() if key.vr == "SQ" else None)
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def sub_keyed_codes() -> Dataset:
    ds = worklist_query()
    code = Dataset()
    code.CodeValue = ""
    code.CodeMeaning = ""
    ds.RequestedProcedureCodeSequence = Sequence([code])
    ds.ScheduledProcedureStepSequence = Sequence()  # universal: the whole item
    return ds


QUERIES = {
    "every key": every_key,
    "few keys": worklist_query,
    "code sub-keys, whole SPS item": sub_keyed_codes,
    "ISO_IR 192 asked": lambda: _charset(worklist_query(), "ISO_IR 192"),
    "ISO_IR 144 asked": lambda: _charset(worklist_query(), "ISO_IR 144"),
}


def _charset(ds: Dataset, term: str) -> Dataset:
    ds.SpecificCharacterSet = term
    return ds


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize("name", QUERIES)
def test_identifier_decodes_to_the_reference_response(sample_db, name, syntax):
    query = worklist.parse_identifier(QUERIES[name]())
    rows = worklist.search(
        sample_db, query, ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED")
    )
    assert len(rows) >= 20
    explicit = syntax == ExplicitVRLittleEndian
    for row in rows:
        expected = worklist.response(row, query)
        elements = worklist.response_elements(row, query)
        charset = worklist.response_charset(elements, query)
        raw = wire.encode_identifier(elements, charset, explicit)
        assert raw is not None and len(raw) % 2 == 0
        got = read_dataset(BytesIO(raw), is_implicit_VR=not explicit, is_little_endian=True)
        if charset:
            got.decode()
        expected_ds = read_dataset(
            BytesIO(_pydicom_encoded(expected, explicit)),
            is_implicit_VR=not explicit,
            is_little_endian=True,
        )
        if charset:
            expected_ds.decode()
        assert _plain(got) == _plain(expected_ds), row


def _pydicom_encoded(ds: Dataset, explicit: bool) -> bytes:
    return encode(ds, not explicit, True)


def _plain(ds: Dataset) -> list:
    """Tag, VR and value of every element, items recursively (value None for empty)."""
    out = []
    for elem in ds:
        if elem.VR == "SQ":
            out.append((elem.tag, "SQ", [_plain(item) for item in elem.value]))
        else:
            value = elem.value
            vr = None if elem.tag.is_private else elem.VR  # implicit VR: UN to the reader
            out.append((elem.tag, vr, None if value in ("", None, b"") else str(value)))
    return out


def test_iso_2022_and_other_transfer_syntaxes_are_left_to_pynetdicom():
    assert wire.codec("ISO 2022 IR 100") is None
    assert wire.codec("ISO_IR 100") == "latin_1"
    assert wire.codec(None) == "ascii"
    assert (
        wire.encode_identifier([(0x00100010, "PN", "Müller^Hans")], "ISO 2022 IR 100", True) is None
    )


# --- live: the paths give the same answers ------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with module_server(tmp_path_factory, "wire", "--sample-file", str(SAMPLE)) as server:
        yield server


def answers(
    port: int, syntax: str, identifier: Dataset, max_pdu: int = 16382
) -> tuple[list[int], list[list]]:
    ae = RequestorAE(ae_title="WIRETEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(MWL, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="WORKLISTS")
    assert assoc.is_established
    statuses, found = [], []
    try:
        for status, ds in assoc.send_c_find(identifier, MWL):
            statuses.append(int(status.Status))
            if ds is not None:
                found.append(_plain(ds))
    finally:
        assoc.release()
    return statuses, found


@pytest.mark.parametrize(
    "name", ["every key", "few keys", "code sub-keys, whole SPS item", "ISO_IR 192 asked"]
)
def test_fast_and_pynetdicom_paths_answer_alike(live, name):
    """Little endian goes the fast path, big endian pynetdicom's: same statuses, same
    responses in the same order; a 256-byte maximum PDU makes the fast path fragment."""
    reference = answers(live.port, ExplicitVRBigEndian, QUERIES[name]())
    assert reference[0][-1] == 0x0000 and len(reference[1]) >= 20
    assert answers(live.port, ExplicitVRLittleEndian, QUERIES[name]()) == reference
    assert answers(live.port, ImplicitVRLittleEndian, QUERIES[name]()) == reference
    assert answers(live.port, ExplicitVRLittleEndian, QUERIES[name](), max_pdu=256) == reference


def test_responses_switch_paths_mid_stream_in_order(live):
    """Asked for ISO 2022 IR 100 (code extensions: pynetdicom's path), a first row that
    Latin-1 cannot hold is answered in ISO_IR 192 by the fast path, the rows after it in
    ISO 2022 IR 100 by pynetdicom's: one stream, every row, in schedule order."""
    everything = worklist_query()
    sps = everything.ScheduledProcedureStepSequence[0]
    sps.ScheduledProcedureStepStartDate = sps.ScheduledProcedureStepStartTime = ""
    _, scheduled = find(live.port, everything)
    first = next(
        i
        for i, ds in enumerate(scheduled)
        if not _latin1(str(ds.PatientName)) and i < len(scheduled) - 3
    )
    start = scheduled[first].ScheduledProcedureStepSequence[0]

    asked = worklist_query()
    asked.SpecificCharacterSet = "ISO 2022 IR 100"
    sps = asked.ScheduledProcedureStepSequence[0]
    sps.ScheduledProcedureStepStartDate = f"{start.ScheduledProcedureStepStartDate}-"
    sps.ScheduledProcedureStepStartTime = f"{start.ScheduledProcedureStepStartTime}-"
    statuses, found = find(live.port, asked)
    assert statuses[-1].Status == 0x0000
    assert [str(ds.PatientName) for ds in found] == [
        str(ds.PatientName) for ds in scheduled[first:]
    ]
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert "ISO 2022 IR 100" in {str(ds.get("SpecificCharacterSet", "")) for ds in found[1:]}


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
