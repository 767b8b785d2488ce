"""The DIMSE status codes this product answers or checks, each defined here once, with
its meaning; and :class:`MPPSError`, a request refused with one of them.

Sources: PS3.7 Annex C (C.5: the general statuses of DIMSE-C and DIMSE-N), PS3.4
C.4.1.1.4 and K.4.1.1.4 (C-FIND of the Query/Retrieve and Modality Worklist services),
C.4.2.1.4 / C.4.3.1.4 (C-MOVE, C-GET), B.2.3 (C-STORE), F.7.2 and F.8 (MPPS N-CREATE,
N-SET, N-GET) and Table F.7.2-2 (the Error ID of a final step).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.datadict import tag_for_keyword

# --- success and warnings ----------------------------------------------------------------
SUCCESS = 0x0000
OPTIONAL_ATTRIBUTES_UNSUPPORTED = 0x0001  # N-GET warning (PS3.4 F.8)
ATTRIBUTE_LIST_ERROR = 0x0107  # N-SET warning: some attributes were not modified (PS3.7 C.4.2)

# --- failures of the general statuses (PS3.7 C.5) -----------------------------------------
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118  # C.5.20; the DIMSE-N statuses (PS3.7 10.1.1-10.1.6)
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
SOP_CLASS_NOT_SUPPORTED = 0x0122  # C.5.6; the DIMSE-C statuses (PS3.7 9.1.1-9.1.5)
NOT_AUTHORIZED = 0x0124  # Refused: Not authorized
UNRECOGNIZED_OPERATION = 0x0211  # C.5.23
RESOURCE_LIMITATION = 0x0213  # DIMSE-N and C-ECHO

# --- C-FIND and the other DIMSE-C services (PS3.4 C.4.1.1.4, K.4.1.1.4) --------------------
PENDING = 0xFF00  # matches are continuing
PENDING_WARNING = 0xFF01  # matches continuing, optional keys not supported (K.4.1.1.4)
CANCEL = 0xFE00  # matching terminated due to Cancel request
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (C-FIND, C-STORE B.2.3)
# Refused: Out of Resources, unable to calculate number of matches (C.4.2.1.4, C.4.3.1.4)
OUT_OF_RESOURCES_MATCHES = 0xA701  # C-MOVE, C-GET
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC001  # Unable to process (C000-CFFF)

# --- Error ID (0000,0903) of MPPS (PS3.4 F.7.2, Table F.7.2-2) ----------------------------
ERROR_ID_NO_LONGER_UPDATED = 0xA710
MAY_NO_LONGER_BE_UPDATED = "Performed Procedure Step Object may no longer be updated"

MEANINGS = {
    SUCCESS: "Success",
    OPTIONAL_ATTRIBUTES_UNSUPPORTED: "Requested optional Attributes are not supported",
    ATTRIBUTE_LIST_ERROR: "Attribute List Error",
    INVALID_ATTRIBUTE_VALUE: "Invalid Attribute Value",
    PROCESSING_FAILURE: "Processing failure",
    DUPLICATE_SOP_INSTANCE: "Duplicate SOP Instance",
    NO_SUCH_SOP_INSTANCE: "No such SOP Instance",
    NO_SUCH_SOP_CLASS: "No such SOP Class",
    MISSING_ATTRIBUTE: "Missing Attribute",
    MISSING_ATTRIBUTE_VALUE: "Missing Attribute Value",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class not supported",
    NOT_AUTHORIZED: "Refused: Not authorized",
    UNRECOGNIZED_OPERATION: "Unrecognized operation",
    RESOURCE_LIMITATION: "Resource limitation",
    PENDING: "Pending: matches are continuing",
    PENDING_WARNING: "Pending: matches are continuing, optional keys not supported",
    CANCEL: "Cancel: matching terminated due to Cancel request",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    OUT_OF_RESOURCES_MATCHES: "Refused: Out of Resources - unable to calculate number of matches",
    IDENTIFIER_DOES_NOT_MATCH: "Identifier does not match SOP Class",
    UNABLE_TO_PROCESS: "Unable to process",
}


def meaning(code: int) -> str:
    """The name of a status code this product uses ("unknown status" otherwise)."""
    return MEANINGS.get(code, "unknown status")


class MPPSError(Exception):
    """A request refused with a DIMSE status (and the matching HTTP answer): raised by the
    MPPS service and by the data set value rules it applies (services/dicom.py)."""

    def __init__(
        self,
        status: int,
        comment: str,
        attributes: Iterable[str | int] = (),
        error_id: int | None = None,
    ) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        # the Attribute Identifier List (0000,1005) of the response: keywords or tags
        self.attributes: list[int] = []
        for a in attributes:
            if isinstance(a, int):
                self.attributes.append(a)
            elif tag := tag_for_keyword(a):  # an unknown keyword is left out
                self.attributes.append(tag)
        self.error_id = error_id
