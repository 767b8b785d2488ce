"""C-CANCEL on the wire (PS3.4 C.4.1.2.3, PS3.7 9.1.2.1.6 / 9.3.2.3): a cancel that
arrives while the server streams a broad query's pending responses ends the stream with
0xFE00 (Matching terminated due to Cancel request), and the association keeps serving.

A raw client asks for every scheduled item (12,000) and sends its C-CANCEL-RQ as soon as
the first pending response arrives, while the server is still streaming: the server must
read its socket between responses. With the fast path (one thread per association) the
association's own thread does that reading when the handler looks for a cancel
(wire.CancelRequests, kept one across pynetdicom's resets of ``dimse.cancel_req``); with
``--dimse-fast-path=off`` pynetdicom's network thread does. (A cancel that arrives before
the handler starts is dropped by pynetdicom's ``_serve_request``, which clears the
cancels "received beforehand".)
"""

from __future__ import annotations

import datetime as dt
import struct
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import generate
import raw_client
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database

pytestmark = pytest.mark.dimse  # run on both dimse_fast_path settings (make test)

CANCELLED = 0xFE00
ITEMS = 40_000  # matches enough to outlast the cancel's round trip, fast machines too


def cancel_command(message_id: int) -> bytes:
    """A C-CANCEL-RQ command set (PS3.7 9.3.2.3): no data set."""
    body = (
        raw_client._element(0, 0x0100, struct.pack("<H", 0x0FFF))
        + raw_client._element(0, 0x0120, struct.pack("<H", message_id))
        + raw_client._element(0, 0x0800, struct.pack("<H", 0x0101))
    )
    return raw_client._element(0, 0x0000, struct.pack("<L", len(body))) + body


class CancellingClient(raw_client.RawClient):
    def find_and_cancel(self, op: str) -> tuple[int, int | None]:
        """A C-FIND cancelled once its first pending response is in: (pendings, final
        status)."""
        assert self.sock is not None
        self.message_id += 1
        request = raw_client.pdata(raw_client.find_command(self.message_id), 0x03)
        self.sock.sendall(request + self.identifiers[op])
        cancel = raw_client.pdata(cancel_command(self.message_id), 0x03)
        for pendings, (status, _) in enumerate(self.responses()):
            if status not in raw_client.PENDING:
                return pendings, status
            if pendings == 0:  # the first match is in: the server is streaming
                self.sock.sendall(cancel)
        raise AssertionError("no final C-FIND response")


def test_c_cancel_ends_a_streaming_broad_query_with_fe00(tmp_path, live_server):
    today = dt.date.today()
    db_file = tmp_path / "cancel.sqlite"
    db = Database(f"sqlite:///{db_file}")
    migrate.upgrade(db.engine)
    generate.load(db, generate.make_items(ITEMS, today))
    db.dispose()
    server = live_server(f"sqlite:///{db_file}", "--max-find-results", str(ITEMS))
    client = CancellingClient("127.0.0.1", server.port, "WORKLISTS", "")  # any date
    client.open("find")
    try:
        # the cancelled query comes first: on pynetdicom's stock path the handler queues
        # its responses for the network thread without waiting for them to be sent, and
        # it must still be at it when that thread reads the C-CANCEL; a repeated query's
        # identifiers come from row_encoder's cache, and 3,000 were queued in time
        pendings, status = client.find_and_cancel("broad_open")
        total = client.find("broad_open")  # the association still serves
        assert total >= ITEMS * 2 // 3, "the query needs many matches to be cancelled midway"
        assert status == CANCELLED, f"final status {status!r}, not 0xFE00"
        assert pendings < total
    finally:
        client.close()
    assert "Traceback" not in server.log()
