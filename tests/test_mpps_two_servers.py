"""Two server processes sharing one database serialize MPPS updates (PS3.4 F.7.2.2.3)."""

from __future__ import annotations

import threading

import pytest
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from conftest import SAMPLE
from dicom_clients import associate
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    n_create,
    n_set_completed,
    n_set_discontinued,
)

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


def test_final_transitions_racing_through_two_servers(shared_url, live_server):
    first = live_server(shared_url, "--sample-file", str(SAMPLE))
    second = live_server(shared_url, "--load-sample-data", "false")
    series = Series("1.2.3.77", [Instance("1.2.840.10008.5.1.4.1.1.2", "1.2.3.77.1")])
    for n in range(5):
        uid = f"1.2.826.0.1.3680043.10.77.{n}"
        assoc = associate(first.port, MPPS, ae_title="CT01")
        status, _ = assoc.send_n_create(
            n_create([ScheduledStep("1.2.99.77", f"X{n}")], modality="CT", station_ae_title="CT01"),
            MPPS,
            uid,
        )
        assoc.release()
        assert status.Status == 0
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def send(name, port, mods, barrier=barrier, results=results, uid=uid):
            a = associate(port, MPPS, ae_title=name)
            try:
                barrier.wait(timeout=10)
                results[name] = a.send_n_set(mods, MPPS, uid)[0]
            finally:
                a.release()

        threads = [
            threading.Thread(target=send, args=("CT01", first.port, n_set_completed([series]))),
            threading.Thread(target=send, args=("CT02", second.port, n_set_discontinued())),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        codes = sorted(s.Status for s in results.values())
        assert codes == [0x0000, 0x0110], results
        loser = next(s for s in results.values() if s.Status == 0x0110)
        assert loser.ErrorID == 0xA710
