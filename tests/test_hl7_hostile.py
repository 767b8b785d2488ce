"""Hostile input to the MLLP listener, and crash safety, against a live ``serve``.

Each bad input gets a precise answer (AR for what is no message or comes from a sender
not on the list, AE with the HL7 Table 0357 code for wrong content), nothing of it is
applied, and the listener keeps serving: a valid order gets AA afterwards. SIGKILL in
the middle of a burst of orders loses no acknowledged order, and orders resent after
the restart are not applied twice (HL7 v2.5.1 2.10.2: duplicate MSH-10).
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from conftest import LiveServer, module_server
from hl7_clients import (
    CR,
    SB,
    MLLPClient,
    ack_code,
    acked_control,
    error_code,
    fields,
    order,
    wait_for,
)

LIMIT = 4096  # --hl7-max-message-size of the module's server
HL7 = (
    "--hl7-enabled",
    "true",
    "--load-sample-data",
    "false",
    "--hl7-max-message-size",
    str(LIMIT),
    "--hl7-idle-timeout",
    "1",
    "--hl7-senders",
    json.dumps(
        [
            {"application": "RIS"},
            {"application": "LAB", "hosts": ["10.0.0.0/8"]},
            {"application": "PACS", "hosts": ["127.0.0.1"]},
        ]
    ),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    with module_server(tmp_path_factory, "hl7hostile", *HL7) as live:
        yield live


def items(server: LiveServer, **query: str) -> list[dict]:
    url = f"{server.http_url}/api/worklist-items?limit=500&" + "&".join(
        f"{k}={v}" for k, v in query.items()
    )
    with urllib.request.urlopen(url, timeout=10) as rsp:
        return json.load(rsp)["items"]


def still_serving(server: LiveServer, n: str) -> None:
    """A valid order on a new connection: AA, and its item is there."""
    with MLLPClient(server.hl7_port) as client:
        answer = client.send(order(n))
    assert ack_code(answer) == "AA" and acked_control(answer) == f"MSG{n}", answer
    assert len(items(server, accession=f"ACC{n}")) == 1


def reason(ack: bytes) -> str:
    """MSA-3, the one-line reason of an AE/AR."""
    msa = fields(ack, "MSA")
    return msa[3] if len(msa) > 3 else ""


def test_garbage_bytes(server):
    before = len(items(server))
    with MLLPClient(server.hl7_port) as client:
        client.sock.sendall(b"\x00\xff GET / HTTP/1.0\r\n\r\n\x1c\r")
        answer = client.read_block()
        assert ack_code(answer) == "AR", answer
        assert "no MLLP start block" in reason(answer)
        assert client.closed_by_server()
    assert len(items(server)) == before
    still_serving(server, "G1")


def test_message_without_mllp_framing(server):
    """A whole valid order sent bare: AR echoing its MSH-10, connection closed, the
    order not applied."""
    with MLLPClient(server.hl7_port) as client:
        client.sock.sendall(order("U1"))
        answer = client.read_block()
        assert ack_code(answer) == "AR" and acked_control(answer) == "MSGU1", answer
        assert client.closed_by_server()
    assert items(server, accession="ACCU1") == []
    still_serving(server, "U1")  # the same MSH-10 framed: processed, not a duplicate


def padded(n: str, size: int) -> bytes:
    """Order ``n`` grown to ``size`` bytes with a note (NTE) segment."""
    message = order(n)
    nte = b"NTE|1||"
    return message + nte + b"x" * (size - len(message) - len(nte) - 1) + CR


def test_message_over_the_size_limit(server):
    """One byte over hl7_max_message_size: AR naming the limit (with MSH-10), closed,
    not applied; a message of exactly the limit is processed."""
    assert len(padded("S1", LIMIT + 1)) == LIMIT + 1
    with MLLPClient(server.hl7_port) as client:
        answer = client.send(padded("S1", LIMIT + 1))
        assert ack_code(answer) == "AR" and acked_control(answer) == "MSGS1", answer
        assert reason(answer) == f"message over hl7_max_message_size ({LIMIT} bytes)"
        assert client.closed_by_server()
    assert items(server, accession="ACCS1") == []
    with MLLPClient(server.hl7_port) as client:
        assert ack_code(client.send(padded("S2", LIMIT))) == "AA"
    still_serving(server, "S3")


def test_a_large_flood_of_bytes_is_refused_with_bounded_reading(server):
    """Megabytes without an end block: refused once past the limit (not read to the
    end), the AR still reaches the sender, the listener serves on."""
    with MLLPClient(server.hl7_port) as client:
        client.sock.sendall(SB + order("F1") + b"NTE|1||")
        try:
            for _ in range(64):  # up to 4 MiB; the server stops reading at the limit
                client.sock.sendall(b"y" * 65536)
        except OSError:
            pass  # closed (or reset) by the server once it has answered
        answer = client.read_block()
        assert ack_code(answer) == "AR" and "hl7_max_message_size" in reason(answer), answer
    still_serving(server, "F2")


@pytest.mark.parametrize(
    ("n", "message", "code", "where"),
    [
        ("C1", order("C1", patient_id=""), "101", "PID-3"),
        ("C2", order("C2", start="20261341093000"), "102", "sps_start"),
        ("C3", order("C3", orc1="ZZ"), "103", "ORC-1"),
        ("C4", order("C4", orc1="CA"), "204", "FIL"),
    ],
    ids=["missing-PID-3", "impossible-TQ1-7-date", "unknown-ORC-1", "cancel-unknown-order"],
)
def test_wrong_content_is_AE_with_its_code(server, n, message, code, where):
    """AE with the ERR code, nothing applied; the same connection goes on."""
    before = len(items(server))
    with MLLPClient(server.hl7_port) as client:
        answer = client.send(message)
        assert ack_code(answer) == "AE" and acked_control(answer) == f"MSG{n}", answer
        assert error_code(answer) == code, answer
        assert where in reason(answer), answer
        assert len(items(server)) == before
        assert ack_code(client.send(order(n + "OK"))) == "AA"  # same connection
    assert len(items(server, accession=f"ACC{n}OK")) == 1


def test_sender_not_on_the_list(server):
    """MSH-3 not in hl7_senders, or listed but for other hosts: AR, nothing applied; a
    sender listed for this host (the peer's address as the listener hands it over) is
    served."""
    with MLLPClient(server.hl7_port) as client:
        answer = client.send(order("E1", application="EVIL"))
        assert ack_code(answer) == "AR" and acked_control(answer) == "MSGE1", answer
        assert "EVIL" in reason(answer), answer
        answer = client.send(order("E2", application="LAB"))
        assert ack_code(answer) == "AR" and "LAB" in reason(answer), answer
        assert ack_code(client.send(order("E3", application="PACS"))) == "AA"
    assert items(server, accession="ACCE1") == items(server, accession="ACCE2") == []
    assert len(items(server, accession="ACCE3")) == 1
    still_serving(server, "E4")


def test_stalled_and_idle_connections_are_closed_others_served(server):
    """Half a message then nothing, and a connection that sends nothing: both closed
    after hl7_idle_timeout (1 s), while another connection is served; the half
    message is not applied."""
    half = order("H1")[:60]
    with MLLPClient(server.hl7_port) as stalled, MLLPClient(server.hl7_port) as idle:
        stalled.sock.sendall(SB + half)
        with MLLPClient(server.hl7_port) as other:
            for k in range(5):
                assert ack_code(other.send(order(f"H2{k}"))) == "AA"
        assert stalled.closed_by_server() and idle.closed_by_server()
    assert items(server, accession="ACCH1") == []
    log = server.log()
    assert f"stalled mid-message after {len(half) + 1} bytes (hl7_idle_timeout 1 s)" in log
    assert "0 message(s): idle (hl7_idle_timeout 1 s)" in log
    still_serving(server, "H3")


def test_connection_flood(live_server):
    """More connections than hl7_max_connections at once: the extra ones are closed at
    once, those admitted keep working, a freed slot is taken again; and many messages
    on one connection."""
    server = live_server(None, *HL7[:4], "--hl7-max-connections", "3")
    admitted = [MLLPClient(server.hl7_port) for _ in range(3)]
    try:
        for k, client in enumerate(admitted):
            assert ack_code(client.send(order(f"M{k}"))) == "AA"
        extra = [MLLPClient(server.hl7_port) for _ in range(4)]
        for client in extra:
            assert client.closed_by_server()
            client.close()
        assert server.log().count("refused: 3 open (hl7_max_connections)") == 4
        for k, client in enumerate(admitted):
            assert ack_code(client.send(order(f"N{k}"))) == "AA"
    finally:
        for client in admitted:
            client.close()

    def served() -> bool:
        try:
            with MLLPClient(server.hl7_port, timeout=5) as client:
                return ack_code(client.send(order("P1"))) == "AA"
        except OSError:
            return False

    assert wait_for(served, 15, 0.2)
    with MLLPClient(server.hl7_port) as client:
        answers = [client.send(order(f"L{k:03d}")) for k in range(300)]
    assert [ack_code(a) for a in answers] == ["AA"] * 300
    assert [acked_control(a) for a in answers] == [f"MSGL{k:03d}" for k in range(300)]
    assert len([i for i in items(server) if i["accession_number"].startswith("ACCL")]) == 300


SENDERS, PER_SENDER, KILL_AFTER = 4, 40, 40


def test_sigkill_during_a_burst_loses_no_acknowledged_order(live_server, shared_url):
    """Four senders send orders one after the other; SIGKILL after KILL_AFTER AAs.
    After a restart on the same database every order that got AA is there; the others
    resent all get AA, the ones acknowledged before resent get the very same ACK, and
    every order is one item, never two."""
    server = live_server(shared_url, *HL7[:4])
    every = {
        f"K{s}{i:02d}": order(f"K{s}{i:02d}") for s in range(SENDERS) for i in range(PER_SENDER)
    }
    acked: dict[str, bytes] = {}
    lock = threading.Lock()

    def sender(s: int) -> None:
        try:
            with MLLPClient(server.hl7_port) as client:
                for i in range(PER_SENDER):
                    n = f"K{s}{i:02d}"
                    answer = client.send(every[n])
                    if not answer:
                        return
                    assert ack_code(answer) == "AA", answer
                    with lock:
                        acked[n] = answer
        except OSError:
            return  # killed mid-message: that one has no AA

    threads = [threading.Thread(target=sender, args=(s,)) for s in range(SENDERS)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(acked) >= KILL_AFTER, 60, 0.01)
    server.kill()
    for t in threads:
        t.join(30)
    assert KILL_AFTER <= len(acked) < len(every), len(acked)
    server.start()
    present = {i["accession_number"] for i in items(server)}
    assert {f"ACC{n}" for n in acked} <= present  # nothing acknowledged is lost
    with MLLPClient(server.hl7_port) as client:
        for n, message in every.items():
            answer = client.send(message)
            assert ack_code(answer) == "AA" and acked_control(answer) == f"MSG{n}", answer
            if n in acked:
                assert answer == acked[n]  # the stored ACK: a duplicate, nothing applied
    accessions = sorted(i["accession_number"] for i in items(server))
    assert accessions == sorted(f"ACC{n}" for n in every)  # each order once
