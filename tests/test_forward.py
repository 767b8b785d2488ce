"""MPPS forwarding to a downstream server that is down, then up (IHE PPS Manager)."""

from __future__ import annotations

import json

import pytest
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from conftest import free_port, wait_for
from dicom_clients import associate
from worklist_mpps.client.messages import (
    Instance,
    ScheduledStep,
    Series,
    n_create,
    n_set_completed,
    n_set_progress,
)

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


def test_downstream_down_then_up_receives_the_full_sequence(live_server, tmp_path):
    down_port = free_port()
    peers = [
        {"name": "ris", "host": "127.0.0.1", "port": down_port, "ae_title": "WORKLISTS"},
        {"name": "off", "host": "127.0.0.1", "port": down_port, "enabled": False},
    ]
    upstream = live_server(
        f"sqlite:///{tmp_path / 'up.db'}",
        "--load-sample-data",
        "false",
        "--outbox-retry-min",
        "0.3",
        "--outbox-retry-max",
        "1",
        env={"WORKLIST_MPPS_FORWARD_PEERS": json.dumps(peers)},
    )
    uid, study, series_uid = generate_uid(), generate_uid(), generate_uid()
    images = [Instance(CTImageStorage, generate_uid()) for _ in range(2)]
    assoc = associate(upstream.port, MPPS, ae_title="CT01")
    create = n_create(
        [ScheduledStep(study, "ACC-F")],
        modality="CT",
        station_ae_title="CT01",
        patient_name="Sánchez^María",
        patient_id="PID-F",
    )
    assert assoc.send_n_create(create, MPPS, uid)[0].Status == 0  # downstream down: no effect
    assert (
        assoc.send_n_set(n_set_progress([Series(series_uid, images[:1])]), MPPS, uid)[0].Status == 0
    )
    assert assoc.send_n_set(n_set_completed([Series(series_uid, images)]), MPPS, uid)[0].Status == 0
    assoc.release()
    wait_for(lambda: "forward:ris" in upstream.log() and "retry in" in upstream.log())

    downstream = live_server(
        f"sqlite:///{tmp_path / 'down.db'}", "--load-sample-data", "false", port=down_port
    )
    wait_for(
        lambda: (
            upstream.log().count("forward:ris") and "N-SET COMPLETED: delivered" in upstream.log()
        )
    )
    check = associate(downstream.port, MPPS, ae_title="CHECK")
    status, ds = check.send_n_get([], MPPS, uid)
    check.release()
    assert status.Status == 0
    assert ds.PerformedProcedureStepStatus == "COMPLETED"
    assert ds.PatientName == "Sánchez^María"
    assert ds.ScheduledStepAttributesSequence[0].StudyInstanceUID == study
    refs = ds.PerformedSeriesSequence[0].ReferencedImageSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [i.sop_instance_uid for i in images]
    down_log = downstream.log()
    events = [
        line.split(": ")[1].split(" from ")[0]
        for line in down_log.splitlines()
        if "worklist_mpps.dimse.mpps" in line and uid in line and "N-GET" not in line
    ]
    assert events == ["N-CREATE", "N-SET", "N-SET"], down_log
    assert "0x0111" not in down_log and "0x0110" not in down_log  # nothing applied twice
    assert "forward:off" not in upstream.log()
