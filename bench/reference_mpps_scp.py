"""In-memory reference MPPS SCP: pynetdicom's documented example, instances in a dict.

The yardstick of the MPPS throughput target: what a pynetdicom server does with
no durability and no rules. Run: python bench/reference_mpps_scp.py PORT
"""

from __future__ import annotations

import sys

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

managed_instances: dict[str, Dataset] = {}


def handle_create(event):
    req = event.request
    if req.AffectedSOPInstanceUID is None:
        return 0x0106, None
    if req.AffectedSOPInstanceUID in managed_instances:
        return 0x0111, None
    attr_list = event.attribute_list
    if attr_list.get("PerformedProcedureStepStatus", "").upper() != "IN PROGRESS":
        return 0x0106, None
    ds = Dataset()
    ds.SOPClassUID = ModalityPerformedProcedureStep
    ds.SOPInstanceUID = req.AffectedSOPInstanceUID
    ds.update(attr_list)
    managed_instances[ds.SOPInstanceUID] = ds
    return 0x0000, ds


def handle_set(event):
    req = event.request
    if req.RequestedSOPInstanceUID not in managed_instances:
        return 0x0112, None
    ds = managed_instances[req.RequestedSOPInstanceUID]
    ds.update(event.modification_list)
    return 0x0000, ds


def main(port: int) -> None:
    ae = AE(ae_title="REFMPPS")
    ae.add_supported_context(ModalityPerformedProcedureStep)
    ae.maximum_associations = 32
    handlers = [(evt.EVT_N_CREATE, handle_create), (evt.EVT_N_SET, handle_set)]
    ae.start_server(("127.0.0.1", port), evt_handlers=handlers)


if __name__ == "__main__":
    main(int(sys.argv[1]))
