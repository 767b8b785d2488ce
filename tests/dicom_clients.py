"""pynetdicom client helpers for tests: the MPPS/worklist peers of a live server."""

from __future__ import annotations

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification


def associate(port: int, *contexts, ae_title: str = "TESTSCU", called: str = "WORKLISTS"):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for context in contexts or (Verification,):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association was not accepted"
    return assoc


def echo(port: int) -> int:
    assoc = associate(port, Verification)
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


def find(port: int, identifier: Dataset, **kwargs) -> tuple[list[Dataset], list[Dataset]]:
    """(status datasets, response identifiers) of one worklist C-FIND."""
    assoc = associate(port, ModalityWorklistInformationFind, **kwargs)
    statuses, identifiers = [], []
    try:
        for status, ds in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
            statuses.append(status)
            if ds is not None:
                identifiers.append(ds)
    finally:
        assoc.release()
    return statuses, identifiers
