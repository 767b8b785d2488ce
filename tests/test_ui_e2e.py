"""The operator page end to end with the order feed: an HL7 order sent by a real MLLP
sender (python-hl7's ``mllp_send``) appears on an open Today page without a reload, and
the placer's cancel takes it to DISCONTINUED the same way (issue 15 deliverable 2:
"rows change without a reload when an MPPS or an order arrives").
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from browser import log_in, login_env
from conftest import LiveServer
from hl7_clients import ack_code, mllp_send, order


def send(server: LiveServer, message: bytes, path: Path) -> None:
    path.write_bytes(message)
    acks = mllp_send(server.hl7_port, path)
    assert ack_code(acks) == "AA", acks


def test_an_order_and_its_cancel_reach_an_open_page_without_reload(page, tmp_path):
    from playwright.sync_api import expect

    server = LiveServer(
        tmp_path,
        f"sqlite:///{tmp_path / 'e2e.db'}",
        *("--hl7-enabled", "true", "--ui-refresh-seconds", "1", "--load-sample-data", "false"),
        env=login_env(),
    ).start()
    try:
        log_in(page, server.http_url)
        expect(page.locator("#counts")).to_contain_text("0")
        page.evaluate("window.__marker = 1")
        start = dt.date.today().strftime("%Y%m%d") + "101500"
        send(server, order(901, start=start), tmp_path / "nw.hl7")
        row = page.locator("tbody tr", has_text="ACC901")
        expect(row).to_be_visible(timeout=15_000)
        expect(row).to_contain_text("10:15")
        expect(row.locator(".badge").first).to_have_text("SCHEDULED")

        send(server, order(901, orc1="CA", control="MSG901CA", start=start), tmp_path / "ca.hl7")
        expect(row.locator(".badge").first).to_have_text("DISCONTINUED", timeout=15_000)
        assert page.evaluate("window.__marker") == 1  # the same document: no reload
        # the item page shows both messages of the order
        row.locator("a").first.click()
        expect(page.locator("body")).to_contain_text("MSG901CA")
        expect(page.locator("body")).to_contain_text("MSG901")
    finally:
        server.stop()
    assert "Traceback" not in server.log()
