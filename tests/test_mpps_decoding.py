"""The MPPS request decoding fast paths (issue 18) give what the ordinary paths give.

- ``dicom.as_unicode`` decodes a request read from bytes where it stands
  (``_decoded_in_place``) instead of writing it in its own character set and reading it
  back (``_roundtrip_unicode``): same values, same stored bytes, input left as it was;
  the round trip still decides whenever the in-place path cannot vouch for the result.
- ``dicom.charset_for_storage`` judges text still raw in a stored instance by its bytes:
  the same ISO_IR 192 / no Specific Character Set decision as decoding every element.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    discontinuation_reason,
    n_create,
    n_set_completed,
    n_set_discontinued,
)
from worklist_mpps.services import dicom

CT = "1.2.840.10008.5.1.4.1.1.2"

# (Specific Character Set, a patient name, a comment) in that set's repertoire
CHARSETS = [
    (None, "Doe^John", "plain ASCII"),
    ("ISO_IR 100", "Müller^Hans", "Zwölf Bilder, ça va"),
    ("ISO_IR 192", "Müller^Hans", "Пациент спокоен 患者"),
    ("ISO_IR 144", "Иванов^Иван", "Пациент спокоен"),
]


def wire(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    return fp.getvalue()


def read(data: bytes, implicit: bool) -> Dataset:
    """As pynetdicom hands a request to the handler: read lazily from the wire bytes."""
    return read_dataset(BytesIO(data), implicit, True)


def requests(charset: str | None, name: str, comment: str) -> list[Dataset]:
    kw = {"charset": charset} if charset else {}
    create = n_create(
        [ScheduledStep("1.2.3.4", "A1", "RP1", sps_id="S1")],
        modality="CT",
        station_ae_title="CT01",
        patient_name=name,
        **kw,
    )
    create.CommentsOnThePerformedProcedureStep = comment
    series = Series("1.2.3.5", [Instance(CT, f"1.2.3.5.{i}") for i in range(1, 4)])
    completed = n_set_completed([series])
    discontinued = n_set_discontinued(reason=discontinuation_reason("110514"))
    for ds in (completed, discontinued):
        if charset:
            ds.SpecificCharacterSet = charset
        ds.CommentsOnThePerformedProcedureStep = comment
    multi = Dataset()  # a multi-valued text value and an undefined-length sequence
    if charset:
        multi.SpecificCharacterSet = charset
    multi.PerformedProcedureStepDescription = comment[:16]
    multi.PerformedSeriesSequence = [Dataset()]
    multi.PerformedSeriesSequence[0].OperatorsName = [name, "Other^One"]
    multi["PerformedSeriesSequence"].is_undefined_length = True
    return [create, completed, discontinued, multi]


def stored(ds: Dataset) -> bytes:
    """The bytes the service would store of an ``as_unicode`` result."""
    dicom.charset_for_storage(ds)
    return dicom.encode_dataset(ds)


def all_raw(ds: Dataset) -> bool:
    return all(
        isinstance(e, RawDataElement)
        or (e.VR == "SQ" and all(all_raw(item) for item in e.value))
        or e.is_empty
        for e in ds._dict.values()
    )


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(("charset", "name", "comment"), CHARSETS, ids=lambda v: str(v))
def test_in_place_decoding_is_the_round_trip(charset, name, comment, implicit):
    for request in requests(charset, name, comment):
        data = wire(request, implicit)
        given = read(data, implicit)
        fast = dicom._decoded_in_place(given)
        assert fast is not None  # the fast path was taken
        assert all_raw(given) and dicom.encode_dataset(given) == dicom.encode_dataset(
            read(data, implicit)
        )  # the input was left as it was
        slow = dicom._roundtrip_unicode(read(data, implicit))
        assert "SpecificCharacterSet" not in fast
        assert [(e.tag, e.VR, str(e.value)) for e in fast] == [
            (e.tag, e.VR, str(e.value)) for e in slow
        ]
        assert stored(fast) == stored(slow)
        assert stored(dicom.as_unicode(read(data, implicit))) == stored(slow)
    assert fast.PerformedSeriesSequence[0].OperatorsName[0] == name


def test_values_are_decoded_with_the_requests_character_set():
    ds = requests("ISO_IR 144", "Иванов^Иван", "Пациент спокоен")[0]
    got = dicom.as_unicode(read(wire(ds, True), True))
    assert str(got.PatientName) == "Иванов^Иван"
    assert got.CommentsOnThePerformedProcedureStep == "Пациент спокоен"
    assert stored(got)[:0] == b"" and got.SpecificCharacterSet == "ISO_IR 192"


def japanese() -> Dataset:
    ds = n_create(
        [ScheduledStep("1.2.3.4", "A1")],
        modality="CT",
        station_ae_title="CT01",
        charset=["", "ISO 2022 IR 87"],
    )
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    return ds


def undefined_byte() -> Dataset:
    """ISO_IR 126 (Greek) text holding byte 0xAE, which the set does not define."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 126"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    lt = b"\x40\x00\x00\x40" + b"LT" + (4).to_bytes(2, "little") + b"A\xaeB "  # (0040,4000)
    return read(wire(ds, False) + lt, False)


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(lambda: read(wire(japanese(), True), True), id="iso-2022"),
        pytest.param(undefined_byte, id="byte-outside-the-set"),
        pytest.param(lambda: requests("ISO_IR 100", "Müller^Hans", "x")[0], id="not-from-bytes"),
    ],
)
def test_the_round_trip_decides_what_in_place_cannot(given):
    assert dicom._decoded_in_place(given()) is None
    assert stored(dicom.as_unicode(given())) == stored(dicom._roundtrip_unicode(given()))


def test_iso_2022_request_round_trips():
    got = dicom.as_unicode(read(wire(japanese(), True), True))
    assert str(got.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def decoded_everywhere(ds: Dataset) -> Dataset:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                decoded_everywhere(item)
    return ds


@pytest.mark.parametrize(
    "where",
    ["nowhere", "top", "sequence", "multi-valued"],
)
def test_stored_text_judged_by_its_bytes(where):
    """charset_for_storage of a stored instance read back (raw elements) decides as it
    does with every element decoded."""
    ds = requests("ISO_IR 192", "Doe^John", "plain")[3]
    ds.PatientName = "Doe^John"
    if where == "top":
        ds.PatientName = "Müller^Hans"
    elif where == "sequence":
        ds.PerformedSeriesSequence[0].SeriesDescription = "Thorax ça"
    elif where == "multi-valued":
        ds.PerformedSeriesSequence[0].OperatorsName = ["Doe^John", "Иванов^Иван"]
    data = dicom.encode_dataset(ds)
    raw, full = dicom.decode_dataset(data), decoded_everywhere(dicom.decode_dataset(data))
    assert dicom._text_is_ascii(raw) == dicom._text_is_ascii(full) == (where == "nowhere")
    assert stored(dicom.decode_dataset(data)) == stored(full)


def none_raw(ds: Dataset) -> bool:
    return not any(
        isinstance(e, RawDataElement) or (e.VR == "SQ" and not all(none_raw(i) for i in e.value))
        for e in ds._dict.values()
    )


def elements(ds: Dataset) -> list:
    """Every element, in sequences too: tag, VR, value type and repr, length form."""
    out = []
    for e in ds:
        if e.VR == "SQ":
            out.append((e.tag, e.VR, e.is_undefined_length, len(e.value)))
            for item in e.value:
                out += elements(item)
        else:
            out.append((e.tag, e.VR, type(e.value), repr(e.value), e.is_undefined_length))
    return out


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(("charset", "name", "comment"), CHARSETS, ids=lambda v: str(v))
def test_elements_are_converted_as_pydicom_converts_them(charset, name, comment, implicit):
    """_decode_all converts each raw element itself (dicom._converted) into what pydicom's
    own Dataset.__getitem__ makes of it, in sequences too (before the person names
    become plain text, which both then do alike)."""
    codec = dicom._IN_PLACE_CODECS["" if charset is None else charset]
    for request in requests(charset, name, comment):
        data = wire(request, implicit)
        ours, pydicoms = read(data, implicit), decoded_everywhere(read(data, implicit))
        assert dicom._decode_all(ours, codec)
        assert none_raw(ours)  # converted once, where it stands
        dicom._materialize(pydicoms)
        assert elements(ours) == elements(pydicoms)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(
            lambda ds: ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "private"),
            id="private",
        ),
        pytest.param(lambda ds: ds.add_new(0x00281101, "US", [4096, 0, 16]), id="lut-descriptor"),
    ],
)
def test_what_pydicom_adds_to_a_conversion_goes_its_way(extra):
    """A private element (its creator) or a VR pydicom corrects (US or SS) is not
    converted by dicom._converted: the round trip decodes the request, with the same
    result as before."""
    ds = requests("ISO_IR 100", "Müller^Hans", "x")[0]
    extra(ds)
    data = wire(ds, True)
    assert stored(dicom.as_unicode(read(data, True))) == stored(
        dicom._roundtrip_unicode(read(data, True))
    )
