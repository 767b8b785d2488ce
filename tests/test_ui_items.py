"""The operator page's item views (issue 15 items 3 and 4): an item's page and its actions.

Browser tests: Debian's chromium through Playwright (tests/browser.py) against a live
server with a login; the worklist side is checked with DCMTK findscu, MPPS are sent with
the project's own ``dicom-mpps``. Service tests call services.schedule.set_status and
services.item_view.item_page directly on SQLite and PostgreSQL.

Over 400 lines: the browser tests share one live server and its helpers.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import event, select

from browser import PASSWORD, USER, log_in, screenshot, start_ui_server
from conftest import LiveServer
from dicom_clients import dicom_mpps, findscu_files
from hl7_clients import MLLPClient, Receiver, ack_code, fields, order, wait_for
from worklist_mpps.config import HL7Destination
from worklist_mpps.db.models import (
    HL7Message,
    MPPSTracking,
    OutboxMessage,
    WorklistItem,
    mpps_worklist_links,
)
from worklist_mpps.delivery.hl7_out import build_message
from worklist_mpps.services import audit, item_view, schedule
from worklist_mpps.services.audit import Actor

TODAY = dt.date.today()
_numbers = itertools.count(1)


# --- a live server with a login ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    live = start_ui_server(tmp_path_factory.mktemp("ui-items"), None, "--load-sample-data", "false")
    try:
        yield live
    finally:
        live.stop()


def api(server: LiveServer, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(
        method, server.http_url + "/api" + path, auth=(USER, PASSWORD), timeout=10, **kwargs
    )


def new_item(server: LiveServer, accession: str, **fields) -> dict:
    """An item scheduled through the API (the setup of a test about something else)."""
    body = {
        "accession_number": accession,
        "patient": {"patient_id": f"P-{accession}", "patient_name": "Dvořák^Antonín"},
        "modality": "US",
        "scheduled_station_ae_title": "US01",
        "sps_start_date": TODAY.strftime("%Y%m%d"),
        "sps_start_time": "0930",
        "sps_id": "S1",
        **fields,
    }
    rsp = api(server, "POST", "/worklist-items", json=body)
    assert rsp.status_code == 201, rsp.text
    return rsp.json()


def stored(server: LiveServer, accession: str) -> list[dict]:
    rsp = api(server, "GET", "/worklist-items", params={"accession": accession})
    assert rsp.status_code == 200, rsp.text
    return rsp.json()["items"]


def findscu(server: LiveServer, tmp_path, *keys: str) -> list:
    """DCMTK findscu -W with these keys (and a few return keys)."""
    out = tmp_path / f"findscu-{next(_numbers)}"
    return findscu_files(
        server.port,
        out,
        "PatientName",
        "PatientID",
        "(0040,0100)[0].Modality",
        "(0040,0100)[0].ScheduledStationAETitle",
        "(0040,0100)[0].ScheduledProcedureStepStartDate",
        "(0040,0100)[0].ScheduledProcedureStepStartTime",
        *keys,
    )


def csrf(page) -> str:
    """The session's CSRF token, as every form of the page carries it."""
    return page.get_attribute("form.who input[name=csrf]", "value")


def audit_rows(page, action: str) -> list[str]:
    return [t for t in page.locator("#audit tbody tr").all_inner_texts() if action in t]


# --- schedule through the form ----------------------------------------------------------


def test_schedule_through_the_form_then_findscu_finds_it(server, page, tmp_path):
    log_in(page, server.http_url)
    page.click("#schedule-link")  # from Today, as the front desk would
    page.wait_for_url(server.http_url + "/ui/items/new")
    assert page.input_value("#f-sps_start_date") == TODAY.isoformat()  # today by default
    page.fill("#f-patient_id", "P-FORM1")
    page.fill("#f-patient_name", "山田^太郎")
    page.fill("#f-accession_number", "FORM1")
    page.fill("#f-requested_procedure_description", "CT Thorax")
    page.fill("#f-modality", "CT")
    page.fill("#f-scheduled_station_ae_title", "CT01")
    page.fill("#f-sps_start_time", "14:30")
    page.fill("#f-sps_id", "SPS-F1")
    page.click("form.item-form button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/items/\d+\?done=created$"))

    assert "山田 太郎" in page.inner_text("h1")
    assert page.inner_text("#item-status .badge") == "SCHEDULED"
    assert "Item scheduled." in page.inner_text("[role=status]")
    [created] = audit_rows(page, "item.create")
    assert USER in created and "FORM1" in created

    [ds] = findscu(server, tmp_path, "AccessionNumber=FORM1")
    assert str(ds.PatientName) == "山田^太郎"
    assert ds.PatientID == "P-FORM1"
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT"
    assert sps.ScheduledStationAETitle == "CT01"
    assert sps.ScheduledProcedureStepStartDate == TODAY.strftime("%Y%m%d")
    assert sps.ScheduledProcedureStepStartTime.startswith("1430")


def test_form_errors_are_shown_next_to_their_field_and_nothing_is_stored(server, page):
    new_item(server, "DUP1", sps_id="S9")
    log_in(page, server.http_url)
    page.goto(server.http_url + "/ui/items/new")
    page.fill("#f-patient_name", "Dvořák^Antonín")
    page.fill("#f-accession_number", "BAD1")
    page.fill("#f-modality", "MR")
    page.fill("#f-sps_start_date", "2026-02-31")
    page.fill("#f-sps_start_time", "08:00")

    def submit() -> int:
        with page.expect_response(
            lambda r: r.url.endswith("/ui/items") and r.request.method == "POST"
        ) as answer:
            page.click("form.item-form button[type=submit]")
        return answer.value.status

    # a required field missing (the API's model: patient.patient_id)
    assert submit() == 422
    assert page.inner_text("#e-patient_id") == "is required"
    assert "e-patient_id" in page.get_attribute("#f-patient_id", "aria-describedby").split()
    assert page.get_attribute("#f-patient_id", "aria-invalid") == "true"
    # what was typed is still there
    assert page.input_value("#f-patient_name") == "Dvořák^Antonín"
    assert page.input_value("#f-sps_start_date") == "2026-02-31"

    # a date that does not exist (the one date validator: matching.normalize_date)
    page.fill("#f-patient_id", "P-BAD1")
    assert submit() == 422
    assert "no such day" in page.inner_text("#e-sps_start_date")
    assert "e-sps_start_date" in page.get_attribute("#f-sps_start_date", "aria-describedby")
    assert page.locator("#e-patient_id").count() == 0
    assert "Start date" in page.inner_text("#form-errors")  # the summary names the field
    page.locator("#f-sps_start_date").scroll_into_view_if_needed()
    screenshot(page, "schedule-form")
    assert stored(server, "BAD1") == []
    page.set_viewport_size({"width": 768, "height": 1024})  # a tablet: no sideways scrolling
    assert page.evaluate("document.documentElement.scrollWidth") <= 768

    # an accession number and step ID in use: the API's Conflict message, 409
    page.fill("#f-sps_start_date", TODAY.isoformat())
    page.fill("#f-accession_number", "DUP1")
    page.fill("#f-sps_id", "S9")
    assert submit() == 409
    assert "has this accession number and step ID" in page.inner_text("#e-accession_number")
    assert len(stored(server, "DUP1")) == 1


# --- actions on an item's page ----------------------------------------------------------


def test_cancel_with_a_reason_leaves_the_default_worklist(server, page, tmp_path):
    item = new_item(server, "CANC1")
    assert len(findscu(server, tmp_path, "AccessionNumber=CANC1")) == 1
    log_in(page, server.http_url)
    url = f"{server.http_url}/ui/items/{item['id']}"
    page.goto(url)

    # the reason is required (the browser asks too: this is the server's check)
    rsp = page.request.post(url + "/cancel", form={"csrf": csrf(page), "reason": "  "})
    assert rsp.status == 422
    assert "a reason is required" in rsp.text()
    assert stored(server, "CANC1")[0]["sps_status"] == "SCHEDULED"

    page.fill("#cancel-reason", "patient did not come")
    page.click("#cancel-form button[type=submit]")
    page.wait_for_url(url + "?done=cancelled")
    assert page.inner_text("#item-status .badge") == "DISCONTINUED"
    assert "patient did not come" in page.inner_text("#item-status")
    [cancel] = audit_rows(page, "item.cancel")
    assert USER in cancel and "patient did not come" in cancel
    assert page.locator("#cancel-form").count() == 0  # final: no more actions

    assert findscu(server, tmp_path, "AccessionNumber=CANC1") == []  # default statuses
    [ds] = findscu(
        server,
        tmp_path,
        "AccessionNumber=CANC1",
        "(0040,0100)[0].ScheduledProcedureStepStatus=DISCONTINUED",
    )
    assert ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "DISCONTINUED"


def test_status_by_hand_in_progress_then_completed_with_the_users_name(server, page):
    item = new_item(server, "MAN1")
    log_in(page, server.http_url)
    url = f"{server.http_url}/ui/items/{item['id']}"
    page.goto(url)
    options = page.locator("#st-status option").all_inner_texts()
    assert options == ["IN PROGRESS", "DISCONTINUED"]

    # with the keyboard: choose, type the reason, Enter submits
    page.focus("#st-status")
    page.keyboard.press("Home")
    page.keyboard.press("Tab")
    page.keyboard.type("US01 sends no MPPS")
    page.keyboard.press("Enter")
    page.wait_for_url(url + "?done=status")
    assert page.inner_text("#item-status .badge") == "IN PROGRESS"

    assert page.locator("#st-status option").all_inner_texts() == ["COMPLETED", "DISCONTINUED"]
    page.select_option("#st-status", "COMPLETED")
    page.fill("#st-reason", "exam done, images sent")
    page.click("#status-form button[type=submit]")
    page.wait_for_url(url + "?done=status")
    assert page.inner_text("#item-status .badge") == "COMPLETED"
    assert page.locator("#status-form").count() == 0

    rows = audit_rows(page, "item.status")
    assert len(rows) == 2
    assert all(USER in r for r in rows)
    assert "SCHEDULED" in rows[0] and "IN PROGRESS" in rows[0] and "US01 sends no MPPS" in rows[0]
    assert "COMPLETED" in rows[1] and "exam done, images sent" in rows[1]

    # a final step does not move (posted by hand: the form is gone)
    rsp = page.request.post(
        url + "/status", form={"csrf": csrf(page), "status": "IN PROGRESS", "reason": "again"}
    )
    assert rsp.status == 422
    assert "a COMPLETED step can become nothing" in rsp.text()
    assert stored(server, "MAN1")[0]["sps_status"] == "COMPLETED"


def test_item_page_shows_an_mpps_from_dicom_mpps_and_the_audit(server, page):
    item = new_item(
        server, "MPPS1", modality="CT", scheduled_station_ae_title="CT01", sps_id="SPS-M1"
    )
    pacs = f"pacs://127.0.0.1:{server.port}"
    uid = dicom_mpps("create", pacs, "--aet", "CT01", "--from-worklist", "--accession", "MPPS1")
    dicom_mpps(
        "update",
        pacs,
        "--aet",
        "CT01",
        "--mpps-uid",
        uid,
        "--status",
        "COMPLETED",
        "--series-uid",
        "1.2.826.0.1.3680043.10.511.1",
        "--image-uid",
        "1.2.826.0.1.3680043.10.511.1.1",
        "--image-uid",
        "1.2.826.0.1.3680043.10.511.1.2",
    )
    log_in(page, server.http_url)
    page.goto(f"{server.http_url}/ui/items/{item['id']}")
    assert "Dvořák, Antonín" in page.inner_text("h1")
    assert page.inner_text("#item-status .badge") == "COMPLETED"  # driven by the MPPS
    [step] = page.locator("#mpps li").all_inner_texts()
    assert "COMPLETED" in step and "1 series, 2 images" in step and uid in step
    assert "at CT01" in step
    assert audit_rows(page, "mpps.create")[0].startswith(tuple("0123456789"))
    assert "CT01" in audit_rows(page, "mpps.create")[0]
    assert "CT01" in audit_rows(page, "mpps.update")[0]
    assert USER in audit_rows(page, "item.create")[0]
    screenshot(page, "item")

    # readable at tablet width: the actions go below, nothing wider than the screen
    page.set_viewport_size({"width": 768, "height": 1024})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 768, width


def test_reschedule_and_edit(server, page, tmp_path):
    item = new_item(server, "RES1")
    log_in(page, server.http_url)
    url = f"{server.http_url}/ui/items/{item['id']}"
    page.goto(url)
    tomorrow = TODAY + dt.timedelta(days=1)
    page.fill("#rs-date", tomorrow.isoformat())
    page.fill("#rs-time", "16:45")
    page.fill("#rs-station", "US02")
    page.click("#reschedule-form button[type=submit]")
    page.wait_for_url(url + "?done=rescheduled")
    [row] = stored(server, "RES1")
    assert (row["sps_start_date"], row["sps_start_time"]) == (tomorrow.strftime("%Y%m%d"), "164500")
    assert row["scheduled_station_ae_title"] == "US02"
    assert (
        findscu(server, tmp_path, "AccessionNumber=RES1")[0]["ScheduledProcedureStepSequence"][
            0
        ].ScheduledStationAETitle
        == "US02"
    )

    page.fill("#rs-time", "25:00")
    with page.expect_response(lambda r: r.url.endswith("/reschedule")) as answer:
        page.click("#reschedule-form button[type=submit]")
    assert answer.value.status == 422
    assert "no such time" in page.inner_text("#e-rs_sps_start_time")
    assert page.input_value("#rs-time") == "25:00"

    page.goto(url + "/edit")
    assert page.input_value("#f-accession_number") == "RES1"
    page.fill("#f-sps_description", "Abdomen ultrasound")
    page.fill("#f-rp_code_value", "US-ABD")
    page.fill("#f-rp_code_scheme", "99LOCAL")
    page.click("form.item-form button[type=submit]")
    page.wait_for_url(url + "?done=updated")
    [row] = stored(server, "RES1")
    assert row["sps_description"] == "Abdomen ultrasound"
    [code] = row["requested_procedure_codes"]
    assert (code["value"], code["scheme"]) == ("US-ABD", "99LOCAL")
    assert "US-ABD (99LOCAL)" in page.inner_text(".facts")
    assert len(audit_rows(page, "item.update")) == 2


def test_an_action_without_the_csrf_token_or_a_wrong_one_is_refused(server, page):
    item = new_item(server, "CSRF1")
    log_in(page, server.http_url)
    url = f"{server.http_url}/ui/items/{item['id']}"
    page.goto(url)
    for form in (
        {"status": "IN PROGRESS", "reason": "x"},
        {"status": "IN PROGRESS", "reason": "x", "csrf": "not-the-token"},
    ):
        rsp = page.request.post(url + "/status", form=form)
        assert rsp.status == 403, rsp.text()
    rsp = page.request.post(url + "/cancel", form={"reason": "x"})
    assert rsp.status == 403
    fields = {"patient_id": "P-CSRF2", "accession_number": "CSRF2", "modality": "CT"}
    assert page.request.post(server.http_url + "/ui/items", form=fields).status == 403
    assert stored(server, "CSRF1")[0]["sps_status"] == "SCHEDULED"
    assert stored(server, "CSRF2") == []


def test_an_unknown_item_is_a_404_page(server, page):
    log_in(page, server.http_url)
    rsp = page.goto(server.http_url + "/ui/items/987654321")
    assert rsp.status == 404
    assert "no worklist item 987654321" in page.inner_text("main")
    assert page.goto(server.http_url + "/ui/items/0").status == 422


def test_an_order_from_hl7_its_messages_and_its_status_by_hand_back_to_the_ris(tmp_path, page):
    """The HL7 table of the item page, and a status set by hand reaching the order placer
    (the same SC message an MPPS change sends, services/order_status.py)."""
    ris = Receiver().start()
    destinations = json.dumps([{"name": "ris", "host": "127.0.0.1", "port": ris.port}])
    live = start_ui_server(
        tmp_path,
        None,
        *("--load-sample-data", "false", "--hl7-enabled", "true"),
        *("--hl7-destinations", destinations, "--outbox-retry-min", "0.2"),
    )
    try:
        today = TODAY.strftime("%Y%m%d")
        with MLLPClient(live.hl7_port) as client:
            assert ack_code(client.send(order(71, start=today + "093000"))) == "AA"
        [item] = stored(live, "ACC71")
        log_in(page, live.http_url)
        url = f"{live.http_url}/ui/items/{item['id']}"
        page.goto(url)
        [row] = page.locator("#hl7 tbody tr").all_inner_texts()
        assert "ORM^O01" in row and "MSG71" in row and "NW" in row and "AA" in row
        assert not page.locator("#hl7 pre").is_visible()
        page.click("#hl7 summary")  # the raw message, unfolded
        assert "PID|1||PAT71^^^HOSP^MR" in page.inner_text("#hl7 pre")

        page.select_option("#st-status", "IN PROGRESS")
        page.fill("#st-reason", "modality without MPPS")
        page.click("#status-form button[type=submit]")
        page.wait_for_url(url + "?done=status")
        assert wait_for(lambda: ris.messages), live.log()
        orc = fields(ris.raw[0].replace("\n", "\r").encode(), "ORC")
        assert orc[1] == "SC" and orc[2].startswith("PLC71") and orc[5] == "IP", ris.raw[0]

        def delivered() -> bool:
            page.goto(url)
            return "delivered" in page.inner_text("#outbox")

        assert wait_for(delivered), live.log()
        assert "hl7:ris" in page.inner_text("#outbox") and "SC^IP" in page.inner_text("#outbox")
        page.click("#hl7 summary")
        page.locator("#h-hl7").scroll_into_view_if_needed()
        screenshot(page, "item-order")
    finally:
        live.stop()
        ris.stop()


# --- services, called directly ----------------------------------------------------------

ACTOR = Actor("tech", "127.0.0.1", "HTTP")


def schedule_one(db, accession: str = "A1", **fields) -> dict:
    return schedule.create_item(
        db,
        ACTOR,
        {"patient_id": f"P-{accession}", "patient_name": "山田^太郎"},
        {"accession_number": accession, "sps_id": "S1", "modality": "US", **fields},
    )


def test_set_status_follows_the_step_state_machine(db):
    item = schedule_one(db)
    with pytest.raises(schedule.Invalid, match="a reason is required"):
        schedule.set_status(db, ACTOR, item["id"], "IN PROGRESS", "  ")
    with pytest.raises(schedule.Invalid, match="SCHEDULED step can become IN PROGRESS or"):
        schedule.set_status(db, ACTOR, item["id"], "COMPLETED", "skipped a step")
    with pytest.raises(schedule.Invalid):
        schedule.set_status(db, ACTOR, item["id"], "SCHEDULED", "same")
    with pytest.raises(schedule.NotFound):
        schedule.set_status(db, ACTOR, 999999, "IN PROGRESS", "x")
    out = schedule.set_status(db, ACTOR, item["id"], "IN PROGRESS", "no MPPS from US01")
    assert out["sps_status"] == "IN PROGRESS" and out["status_reason"] is None
    with pytest.raises(schedule.Invalid):
        schedule.set_status(db, ACTOR, item["id"], "SCHEDULED", "back")
    out = schedule.set_status(db, ACTOR, item["id"], "COMPLETED", "done")
    assert out["sps_status"] == "COMPLETED"
    for status in schedule.STEP_STATUSES:  # final (PS3.4 F.7.2.1)
        with pytest.raises(schedule.Invalid, match="COMPLETED step can become nothing"):
            schedule.set_status(db, ACTOR, item["id"], status, "again")
    events = audit.query(db, action="item.status", target=f"item:{item['id']}")
    assert [e["detail"] for e in reversed(events)] == [
        {"from": "SCHEDULED", "to": "IN PROGRESS", "reason": "no MPPS from US01"},
        {"from": "IN PROGRESS", "to": "COMPLETED", "reason": "done"},
    ]
    assert {e["actor"] for e in events} == {"tech"}

    other = schedule_one(db, "A2")
    out = schedule.set_status(db, ACTOR, other["id"], "DISCONTINUED", "wrong  patient\n")
    assert (out["sps_status"], out["status_reason"]) == ("DISCONTINUED", "wrong patient")


def test_set_status_of_an_order_item_queues_its_hl7_status(db):
    order = schedule_one(db, "ORD1", placer_order_number="PO-1", filler_order_number="FO-1")
    plain = schedule_one(db, "NOORD")
    targets = ["orthanc", "hl7:ris"]
    schedule.set_status(db, ACTOR, order["id"], "IN PROGRESS", "started by hand", targets)
    schedule.set_status(db, ACTOR, plain["id"], "IN PROGRESS", "started by hand", targets)
    schedule.set_status(db, ACTOR, order["id"], "DISCONTINUED", "stopped", ["hl7:ris"])
    with db.read() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        queued = [(r.target, r.mpps_uid, r.event, r.pps_status) for r in rows]
        payloads = [json.loads(r.payload) for r in rows]
    key = f"item:{order['id']}"
    assert queued == [
        ("hl7:ris", key, "SC^IP", "IN PROGRESS"),
        ("hl7:ris", key, "SC^DC", "DISCONTINUED"),
    ]
    assert payloads[0]["mpps"] is None and payloads[0]["placer_order_number"] == "PO-1"
    assert payloads[0]["patient"]["name"] == "山田^太郎"
    text, _ = build_message(payloads[1], HL7Destination("ris", "127.0.0.1", 2575), "W1", "WM")
    assert "ORC|SC|PO-1|FO-1||DC" in text
    assert "|^stopped" in text  # ORC-16: the reason given by hand
    assert "OBX" not in text  # no performed series or image counts without an MPPS


def test_a_cancel_made_here_tells_the_order_placer_with_its_reason(db):
    """The page's and the API's cancel of an item from an HL7 order queue ORC-5 DC with the
    reason in ORC-16; a cancel without targets (the order feed's own) queues nothing."""
    order = schedule_one(db, "ORD2", placer_order_number="PO-2", filler_order_number="FO-2")
    fed = schedule_one(db, "ORD3", placer_order_number="PO-3")
    schedule.cancel_item(db, ACTOR, order["id"], "patient declined", ["orthanc", "hl7:ris"])
    schedule.cancel_item(db, ACTOR, order["id"], "again", ["hl7:ris"])  # already DISCONTINUED
    schedule.cancel_item(db, ACTOR, fed["id"], "placer cancelled")
    with db.read() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        queued = [(r.target, r.mpps_uid, r.event) for r in rows]
        payload = json.loads(rows[0].payload) if rows else {}
    assert queued == [("hl7:ris", f"item:{order['id']}", "SC^DC")]
    text, _ = build_message(payload, HL7Destination("ris", "127.0.0.1", 2575), "W1", "WM")
    assert "ORC|SC|PO-2|FO-2||DC" in text
    assert "|^patient declined" in text


def add_mpps(session, item_id: int, uid: str, start: str | None, status: str = "COMPLETED"):
    session.add(
        MPPSTracking(
            sop_instance_uid=uid,
            status=status,
            start_datetime=start,
            series_count=1,
            instance_count=3,
            dataset=b"",
            completeness="incomplete",
            received_count=2,
            missing_instances=["1.2.3.9"],
        )
    )
    session.flush()
    mpps_id = session.scalar(select(MPPSTracking.id).where(MPPSTracking.sop_instance_uid == uid))
    session.execute(mpps_worklist_links.insert().values(mpps_pk=mpps_id, item_pk=item_id))


def hl7(session, control_id: str, **fields) -> None:
    session.add(
        HL7Message(
            sending_application="RIS",
            control_id=control_id,
            message_type=fields.pop("message_type", "ORM^O01"),
            ack_code=fields.pop("ack_code", "AA"),
            raw=f"MSH|^~\\&|RIS|||||20261201||ORM^O01|{control_id}|P|2.3.1\rPID|||X".encode(),
            ack=b"MSH|^~\\&\rMSA|AA",
            **fields,
        )
    )


def test_item_page_has_everything_in_a_bounded_number_of_queries(db):
    item = schedule_one(db, "VIEW1", placer_order_number="PO-V")
    other = schedule_one(db, "VIEW2")
    item_id = item["id"]
    with db.write() as session:
        add_mpps(session, item_id, "1.2.3.2", "20261201100000")
        add_mpps(session, item_id, "1.2.3.1", "20261201090000", "DISCONTINUED")
        add_mpps(session, other["id"], "1.2.3.3", "20261201080000")
        hl7(session, "C1", placer_order_number="PO-V", order_control="NW")
        hl7(session, "C2", patient_id="P-VIEW1", item_ids=[other["id"], item_id],
            message_type="ADT^A08")  # fmt: skip
        hl7(session, "C3", patient_id="P-VIEW1", item_ids=[item_id + 1000])
        hl7(session, "C4", placer_order_number="PO-OTHER", item_ids=[other["id"]])
        audit.record(session, ACTOR, "mpps.create", "1.2.3.1", {"status": "IN PROGRESS"})
        audit.record(session, ACTOR, "mpps.create", "1.2.3.3", {"status": "IN PROGRESS"})
        for key in ("1.2.3.1", f"item:{item_id}", "1.2.3.3"):
            session.add(
                OutboxMessage(target="hl7:ris", mpps_uid=key, event="N-SET", pps_status="X")
            )

    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        page = item_view.item_page(db, item_id)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 5, selects

    assert page["accession_number"] == "VIEW1" and page["patient"]["patient_name"] == "山田^太郎"
    assert [m["uid"] for m in page["mpps"]] == ["1.2.3.1", "1.2.3.2"]  # by start
    assert page["mpps"][0]["missing"] == ["1.2.3.9"] and page["mpps"][0]["received"] == 2
    assert [h["control_id"] for h in page["hl7"]] == ["C1", "C2"]
    assert page["hl7"][0]["text"].startswith("MSH|") and "\nPID" in page["hl7"][0]["text"]
    assert [(e["action"], e["target"]) for e in page["audit"]] == [
        ("item.create", f"item:{item_id}"),
        ("mpps.create", "1.2.3.1"),
    ]
    assert [d["key"] for d in page["outbox"]] == ["1.2.3.1", f"item:{item_id}"]
    with pytest.raises(schedule.NotFound):
        item_view.item_page(db, 424242)
    with db.read() as session:  # nothing was changed by reading
        assert session.get(WorklistItem, item_id).sps_status == "SCHEDULED"
