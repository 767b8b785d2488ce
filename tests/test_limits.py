"""Limits and timeouts: C-FIND cap, idle and stalled connections, PDU size, HTTP body, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest
import requests
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from conftest import SAMPLE
from dicom_clients import associate, echo, find, worklist_query

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)


def test_a_query_over_the_cap_is_refused_with_a700(live_server):
    server = live_server(None, "--sample-file", str(SAMPLE), "--max-find-results", "5")
    statuses, found = find(server.port, worklist_query())
    assert found == [] and statuses[-1].Status == 0xA700
    assert "More than 5 matches" in statuses[-1].ErrorComment
    statuses, found = find(server.port, worklist_query(AccessionNumber="A10001"))
    assert statuses[-1].Status == 0 and len(found) == 1
    assert "0xA700 refused, more than 5 matches" in server.log()


def _wait_closed(sock: socket.socket, within: float) -> bool:
    """True when the server closes the connection within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_silent_connection_is_dropped_and_frees_its_slot(live_server):
    server = live_server(
        None, "--sample-file", str(SAMPLE), "--acse-timeout", "1", "--max-associations", "2"
    )
    silent = socket.create_connection(("127.0.0.1", server.port))
    try:
        assert echo(server.port) == 0  # others are served meanwhile
        started = time.monotonic()
        assert _wait_closed(silent, 10), "the silent connection was not dropped"
        assert time.monotonic() - started < 8
    finally:
        silent.close()
    for _ in range(3):  # the slot came back
        assert echo(server.port) == 0


def test_a_connection_closed_before_associating_frees_its_slot_at_once(live_server):
    """A port scanner's connect-and-close must not hold an association slot until the
    ACSE timeout: with one slot and a 30 s timeout, echoes right after still get in."""
    server = live_server(
        None, "--sample-file", str(SAMPLE), "--acse-timeout", "30", "--max-associations", "1"
    )
    for _ in range(3):
        socket.create_connection(("127.0.0.1", server.port)).close()
        deadline = time.monotonic() + 5
        while True:  # the server notices the close within a moment, not 30 s
            try:
                assert echo(server.port) == 0
                break
            except AssertionError:
                assert time.monotonic() < deadline, "the closed connection kept its slot"
                time.sleep(0.1)


def test_half_a_pdu_is_dropped_after_the_timeout(live_server):
    server = live_server(
        None, "--sample-file", str(SAMPLE), "--acse-timeout", "1", "--network-timeout", "2"
    )
    stalled = socket.create_connection(("127.0.0.1", server.port))
    try:
        stalled.sendall(b"\x01\x00\x00\x00\x00\xcd\x00")  # A-ASSOCIATE-RQ header, then nothing
        statuses, found = find(server.port, worklist_query(AccessionNumber="A10002"))
        assert statuses[-1].Status == 0 and len(found) == 1
        assert _wait_closed(stalled, 15), "the stalled connection was not dropped"
    finally:
        stalled.close()
    assert echo(server.port) == 0


def test_max_pdu_size_is_announced(live_server):
    server = live_server(None, "--sample-file", str(SAMPLE), "--max-pdu-size", "32768")
    assoc = associate(server.port, Verification)
    try:
        assert assoc.acceptor.maximum_length == 32768
    finally:
        assoc.release()


def test_http_request_bodies_are_bounded(live_server):
    server = live_server(None, "--sample-file", str(SAMPLE), "--http-max-body", "1000")
    url = f"{server.http_url}/api/worklist-items"
    big = requests.post(
        url,
        data=b"{" + b" " * 2000 + b"}",
        timeout=15,
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413 and "1000 bytes" in big.json()["detail"]

    def chunks():
        yield b"{}"

    chunked = requests.post(
        url, data=chunks(), timeout=15, headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 411
    small = requests.post(
        url, json={"accession_number": "L1", "patient": {"patient_id": "L"}}, timeout=15
    )
    assert small.status_code == 201


def test_sigterm_lets_an_association_in_flight_finish(live_server):
    server = live_server(None, "--sample-file", str(SAMPLE), "--shutdown-grace", "20")
    assoc = associate(server.port, ModalityWorklistInformationFind)
    try:
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the listener is closed, the association is not
        refused = subprocess.run(
            ["echoscu", "-to", "3", "-aec", "WORKLISTS", "127.0.0.1", str(server.port)],
            capture_output=True,
            timeout=30,
        )
        assert refused.returncode != 0, "a new association after SIGTERM"
        results = list(
            assoc.send_c_find(
                worklist_query(AccessionNumber="A10003"), ModalityWorklistInformationFind
            )
        )
        assert [s.Status for s, _ in results] == [0xFF00, 0x0000]
    finally:
        assoc.release()
    assert server.proc.wait(25) == 0
    assert "Shutting down" in server.log() and "Aborting" not in server.log()
