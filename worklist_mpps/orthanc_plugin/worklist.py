"""Worklist C-FIND on Orthanc's own DICOM port (``orthanc.RegisterWorklistCallback``).

Orthanc hands the callback the query as a DICOM buffer (``WorklistGetDicomQuery``) and
the calling and called AE titles; :func:`answer` decodes it and finds the matches with
the same code as the project's port (services/worklist_find.py: the same parsing,
matching, default statuses, calling-AE filter and cap), and encodes each response
identifier (services/worklist.py ``response``) as a DICOM buffer for
``WorklistAddAnswer``. Orthanc sends the responses and the final status itself.

A refused query cannot get its own status there: Orthanc's callback can only add
answers or raise. :class:`Refused` is raised then (after one log line), and Orthanc
answers the C-FIND with a failure status of its own (docs/deploy-orthanc-plugin.md says
which); the project's port (``DicomPortMPPS``) answers the precise PS3.4 K.4.1.1.4
status (0xA900, 0xA700, 0xC001, 0x0124) to the same query.
"""

from __future__ import annotations

import io
import logging
import time

import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy.exc import SQLAlchemyError

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database
from worklist_mpps.dimse.common import UndecodableRequest, decoded
from worklist_mpps.services import station_queries, worklist, worklist_find
from worklist_mpps.services.health import describe_db_error
from worklist_mpps.services.matching import MatchError
from worklist_mpps.services.status import (
    IDENTIFIER_DOES_NOT_MATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    UNABLE_TO_PROCESS,
)

log = logging.getLogger("worklist_mpps.orthanc_plugin.worklist")

MWL_FIND = UID("1.2.840.10008.5.1.4.31")  # Modality Worklist Information Model - FIND (PS3.4 K.4)


class Refused(Exception):
    """A query not answered; ``status`` is what the project's port would answer."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(f"0x{status:04X} {comment}")
        self.status = status


def device_refusal(config: Config, calling_ae: str) -> str | None:
    """Why the device list refuses a worklist query from ``calling_ae``, or None. Orthanc
    does not give the callback the caller's address: a device restricted to hosts is
    refused here (Orthanc's own DicomModalities / DicomCheckModalityHost check hosts)."""
    if not config.devices:
        return None
    device = next((d for d in config.devices if d.ae_title == calling_ae), None)
    if device is None:
        return f"unknown calling AE title {calling_ae!r}"
    if "worklist" not in device.services:
        return "not authorized for worklist queries"
    if device.hosts:
        return (
            f"{calling_ae} may query from {', '.join(device.hosts)} only, and Orthanc's "
            "port does not tell the address: query DicomPortMPPS"
        )
    return None


def encode(ds: Dataset) -> bytes:
    """A response identifier as the DICOM file buffer WorklistAddAnswer parses."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MWL_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _record(calling: str, called: str, sent: int, status: int) -> None:
    station_queries.record_find(calling, called, None, sent, status)


def answer(db: Database, config: Config, query: bytes, calling: str, called: str) -> list[bytes]:
    """The answers to one worklist query on Orthanc's port; Refused when it is not
    answered (one log line says why, as on the project's port)."""
    started = time.perf_counter()
    who = f"{calling} (Orthanc's port, called {called})"
    try:
        reason = device_refusal(config, calling)
        if reason:
            raise Refused(NOT_AUTHORIZED, reason)
        identifier = decoded(lambda: pydicom.dcmread(io.BytesIO(query), force=True))
        found = worklist_find.find(db, config, identifier, calling)
        answers = [encode(worklist.response(row, found.query)) for row in found.rows]
    except Refused as exc:
        log.warning("C-FIND from %s: %s", who, exc)
        _record(calling, called, 0, exc.status)
        raise
    except worklist_find.TooManyMatches as exc:
        refused = Refused(OUT_OF_RESOURCES, str(exc))
    except MatchError as exc:
        refused = Refused(IDENTIFIER_DOES_NOT_MATCH, str(exc))
    except UndecodableRequest as exc:
        refused = Refused(IDENTIFIER_DOES_NOT_MATCH, f"Identifier cannot be decoded: {exc}")
    except SQLAlchemyError as exc:
        refused = Refused(UNABLE_TO_PROCESS, f"database error: {describe_db_error(exc).reason}")
    else:
        _record(calling, called, len(answers), 0x0000)
        log.info(
            "C-FIND from %s: %d matches in %.1f ms%s",
            who,
            len(answers),
            (time.perf_counter() - started) * 1000,
            f" (unsupported keys: {', '.join(found.query.unsupported)})"
            if found.query.unsupported
            else "",
        )
        return answers
    log.warning("C-FIND from %s: %s", who, refused)
    _record(calling, called, 0, refused.status)
    raise refused
