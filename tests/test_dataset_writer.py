"""services/dataset_writer.py writes what pydicom's write_dataset writes (issue 18).

Every shape the MPPS service stores (requests decoded by ``dicom.as_unicode`` in five
character sets and both VR encodings, stored instances modified by N-SET) and odd ones
(multi-valued, odd lengths, empty values, undefined-length sequences and items, person
name component groups, numbers, binary values, text outside the character set) are
written both ways and compared byte for byte; the shapes this writer leaves to pydicom
(ambiguous VRs, ISO 2022, an item with its own character set, raw elements of another
encoding) give None.
"""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from tests.test_mpps_fast_write import CHARSETS, create_request, n_sets, stored_shapes, wire

from worklist_mpps.client.messages import n_set_completed
from worklist_mpps.services import dataset_writer, dicom


def pydicom_bytes(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return fp.getvalue()


def stored_requests() -> list[Dataset]:
    """Requests as the service stores them: decoded, character set for storage."""
    out = []
    for implicit in (True, False):
        for charset, name, comment in CHARSETS:
            for request in [
                create_request(charset, name, comment),
                *n_sets(charset, name, comment),
            ]:
                ds = dicom.as_unicode(wire(request, implicit))
                dicom.charset_for_storage(ds)
                out.append(ds)
    return out


def odd_shapes() -> list[Dataset]:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    ds.PatientID = "ODD"  # odd length: space padded
    ds.SOPInstanceUID = "1.2.345"  # odd length: NUL padded
    ds.OtherPatientIDs = ["A", "BC", ""]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDescription = ""
    ds.AccessionNumber = None
    ds.PerformedProcedureStepDescription = "Zwölf"
    ds.TotalNumberOfExposures = 3
    ds.EntranceDose = 15
    ds.PatientWeight = "71.5"
    ds.ReferencedFrameNumber = [1, 2]
    ds.add_new(0x00091010, "LO", "private")
    ds.add_new(0x00280010, "US", 512)
    ds.add_new(0x00420011, "OB", b"\x01\x02\x03")
    item = Dataset()
    item.CodeValue, item.CodeMeaning = "1", "x"
    delimited = Dataset()
    delimited.CodeValue = "2"
    delimited.is_undefined_length_sequence_item = True
    ds.ProcedureCodeSequence = Sequence([item, delimited])
    ds.ProcedureCodeSequence.is_undefined_length = True  # type: ignore[attr-defined]
    ds.PerformedProtocolCodeSequence = Sequence([])
    ds["PerformedProtocolCodeSequence"].is_undefined_length = True
    ds.BillingProcedureStepSequence = Sequence([])
    utf8 = Dataset()
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = "Müller^Hans=ミュラー"  # component groups: pydicom's path
    utf8.CommentsOnThePerformedProcedureStep = "患者"
    utf8.Modality = "CT"
    latin = Dataset()
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.PatientName = "Müller^Hans"  # outside ASCII in a non-UTF-8 set: pydicom's path
    latin.StudyDescription = "Pâte"
    latin.PatientComments = "Пациент"  # not in ISO 8859-1: pydicom's replacement path
    none = Dataset()
    none.PatientName = "Dœ"  # not in the default repertoire: pydicom's path
    none.StudyID = "é1"
    return [ds, utf8, latin, none]


@pytest.mark.parametrize("ds", stored_requests() + stored_shapes() + odd_shapes())
def test_writes_what_pydicom_writes(ds):
    ours = dataset_writer.write(ds)
    assert ours is not None
    assert ours == pydicom_bytes(ds)


def test_usual_messages_are_written_here():
    """The MPPS cycle's data sets are written by this module, not handed back."""
    for ds in stored_requests() + stored_shapes():
        if "SpecificCharacterSet" not in ds or ds.SpecificCharacterSet == "ISO_IR 192":
            assert dataset_writer.write(ds) is not None
    completed = dicom.as_unicode(wire(n_set_completed([])))
    assert dataset_writer.write(completed) == pydicom_bytes(completed)


def left_to_pydicom() -> list[Dataset]:
    ambiguous = Dataset()
    ambiguous.add_new(0x00280106, "US or SS", 0)  # Smallest Image Pixel Value
    iso2022 = Dataset()
    iso2022.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    iso2022.PatientName = "Yamada"
    own_charset = Dataset()
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.CodeValue = "1"
    own_charset.ProcedureCodeSequence = Sequence([item])
    implicit_raw = wire(create_request(None, "Doe^John", "x"))  # raw, implicit VR
    return [ambiguous, iso2022, own_charset, implicit_raw]


@pytest.mark.parametrize("ds", left_to_pydicom())
def test_leaves_to_pydicom(ds):
    assert dataset_writer.write(ds) is None
    assert dicom._write(ds) == pydicom_bytes(ds)
