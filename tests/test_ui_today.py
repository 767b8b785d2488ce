"""The Today view (issue 15 item 2) and its print view, in headless Chromium against a live
server: login, the day's items, filters, the name search (folded like worklist matching),
an MPPS from ``dicom-mpps`` turning a row IN PROGRESS then COMPLETED without a reload, the
rows endpoint's change token, the print view and a tablet viewport. The day's data comes
from services/today.py, tested directly on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, insert, select, update

from browser import PASSWORD, USER, log_in, screenshot, start_ui_server
from dicom_clients import dicom_mpps
from worklist_mpps.db.models import AuditEvent, MPPSTracking, mpps_worklist_links, utcnow
from worklist_mpps.services import schedule
from worklist_mpps.services.today import DayFilters, change_token, day_view

ROOT = Path(__file__).resolve().parent.parent
TODAY = dt.date.today()
DAY = TODAY.strftime("%Y%m%d")


def uniq(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8].upper()


def item_body(name: str, modality: str, station: str, time: str, **extra) -> dict:
    """A POST /api/worklist-items body for today (tests/test_http_api.py's shape)."""
    return {
        "accession_number": uniq("T"),
        "sps_id": uniq("S"),
        "requested_procedure_id": uniq("RP"),
        "requested_procedure_description": f"{modality} exam",
        "requested_procedure_priority": "ROUTINE",
        "modality": modality,
        "scheduled_station_ae_title": station,
        "sps_start_date": DAY,
        "sps_start_time": time,
        "patient": {
            "patient_id": uniq("P"),
            "patient_name": name,
            "birth_date": "19800101",
            "sex": "O",
        },
        **extra,
    }


def api_create(server, body: dict) -> dict:
    response = requests.post(
        server.http_url + "/api/worklist-items", json=body, auth=(USER, PASSWORD), timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, rows polled every second, with today's items."""
    work = tmp_path_factory.mktemp("ui-today")
    srv = start_ui_server(work, None, "--ui-refresh-seconds", "1", "--load-sample-data", "false")
    try:
        srv.items = {  # type: ignore[attr-defined]
            "dvorak": api_create(srv, item_body("Dvořák^Antonín", "CT", "TODAYCT1", "0800")),
            "yamada": api_create(
                srv, item_body("Yamada^Taro=山田^太郎=やまだ^たろう", "MR", "TODAYMR1", "0900")
            ),
            "smith": api_create(srv, item_body("Smith^John", "US", "TODAYUS1", "1000")),
            "lee": api_create(srv, item_body("Lee^Ann", "CT", "TODAYCT2", "1100")),
        }
        yield srv
    finally:
        srv.stop()


def row(page, item: dict):
    return page.locator(f"#row-{item['id']}")


# --- the browser --------------------------------------------------------------------------


def test_login_sees_today_and_filters_by_modality_and_name(page, server):
    items = server.items
    log_in(page, server.http_url)
    for item in items.values():
        assert row(page, item).is_visible()
    assert "Dvořák, Antonín" in row(page, items["dvorak"]).inner_text()
    yamada = row(page, items["yamada"]).inner_text()
    assert "山田 太郎" in yamada and "Yamada, Taro" in yamada
    assert page.locator("#counts [data-status=SCHEDULED]").inner_text() == "4"

    # modality CT: the select submits its form on change (app.js data-autosubmit)
    page.select_option("#f-modality", "CT")
    page.wait_for_url(re.compile(r"modality=CT"))
    assert row(page, items["dvorak"]).is_visible() and row(page, items["lee"]).is_visible()
    assert row(page, items["yamada"]).count() == 0 and row(page, items["smith"]).count() == 0

    # the name search folds case and accents like worklist matching: "dvorak" finds Dvořák
    page.goto(server.http_url + "/")
    page.fill("#f-q", "dvorak")
    page.press("#f-q", "Enter")
    page.wait_for_url(re.compile(r"q=dvorak"))
    assert page.locator("tbody#rows tr").count() == 1
    assert row(page, items["dvorak"]).is_visible()
    page.fill("#f-q", "山田")
    page.press("#f-q", "Enter")
    page.wait_for_load_state()
    assert page.locator("tbody#rows tr").count() == 1
    assert row(page, items["yamada"]).is_visible()
    # each row links to its item's page, reachable by Tab
    link = page.locator(f"#item-{items['yamada']['id']}")
    assert link.get_attribute("href") == f"/ui/items/{items['yamada']['id']}"


def test_mpps_turns_the_row_in_progress_then_completed_without_reload(page, server):
    from playwright.sync_api import expect

    item = api_create(server, item_body("Live^Row", "CT", "TODAYCT9", "1200"))
    log_in(page, server.http_url)
    status = row(page, item).locator("td.status .badge")
    expect(status).to_have_text("SCHEDULED")
    link = page.locator(f"#item-{item['id']}")
    link.focus()
    page.evaluate("window.__marker = 1")

    url = f"pacs://127.0.0.1:{server.port}"
    uid = dicom_mpps(
        "create",
        url,
        "--aet",
        "TODAYCT9",
        "--from-worklist",
        "--accession",
        item["accession_number"],
    )
    expect(status).to_have_text("IN PROGRESS", timeout=15_000)
    expect(row(page, item).locator("td.mpps")).to_contain_text("in progress")

    dicom_mpps(
        "update",
        url,
        "--aet",
        "TODAYCT9",
        "--mpps-uid",
        uid,
        "--status",
        "COMPLETED",
        "--study-uid",
        item["study_instance_uid"],
        "--series-uid",
        "1.2.826.0.1.3680043.10.9.1",
        "--image-uid",
        "1.2.826.0.1.3680043.10.9.1.1",
        "--image-uid",
        "1.2.826.0.1.3680043.10.9.1.2",
    )
    expect(status).to_have_text("COMPLETED", timeout=15_000)
    expect(row(page, item).locator("td.mpps")).to_contain_text("1 series, 2 images")
    expect(page.locator("#counts [data-status=COMPLETED]")).to_have_text("1")
    assert page.evaluate("window.__marker") == 1  # the same document: no reload
    screenshot(page, "today")
    # the swap kept keyboard focus on the row's link
    assert page.evaluate("document.activeElement.id") == f"item-{item['id']}"


def test_print_view_and_tablet(page, server):
    items = server.items
    log_in(page, server.http_url)
    # the keyboard reaches every filter and every row's link, with a visible focus ring
    reached = []
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    wanted = ["f-date", "f-modality", "f-station", "f-status", "f-q", "print-link"]
    wanted += [f"item-{item['id']}" for item in items.values()]
    assert set(wanted) <= set(reached), reached
    page.focus(f"#item-{items['smith']['id']}")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    page.click("#print-link")
    page.wait_for_url(re.compile(r"/ui/print\?"))
    text = page.locator("table.print").inner_text()
    assert "Dvořák, Antonín" in text and "山田 太郎" in text
    assert page.locator("header.bar").count() == 0  # no navigation on paper
    screenshot(page, "print")
    page.emulate_media(media="print")
    assert not page.locator(".print-tools").is_visible()  # the on-screen link is not printed
    page.emulate_media(media="screen")

    page.set_viewport_size({"width": 768, "height": 1024})
    page.goto(server.http_url + "/")
    assert row(page, items["smith"]).count() == 1
    overflow = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.querySelector('header.bar').scrollWidth,"
        " document.querySelector('form.filters').scrollWidth]"
    )
    page_width, viewport, header, filters = overflow
    assert page_width <= viewport and header <= viewport and filters <= viewport, overflow
    screenshot(page, "today-tablet")


def test_an_ended_session_takes_the_page_to_the_login_form(page, server):
    """The rows poll of a page whose session has ended is redirected to the login form:
    the page goes there (and back to this view after the login), the form is never
    swapped into the table."""
    log_in(page, server.http_url)
    page.goto(server.http_url + "/?modality=CT")
    page.context.clear_cookies()
    page.wait_for_url(re.compile(r"/ui/login\?next="), timeout=15_000)
    assert page.locator("tbody#rows").count() == 0
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/\?modality=CT"))
    assert page.locator(f"#row-{server.items['lee']['id']}").is_visible()


# --- plain HTTP ---------------------------------------------------------------------------


def test_rows_endpoint_answers_204_until_something_changes(server):
    session = requests.Session()
    response = session.post(
        server.http_url + "/ui/login",
        data={"username": USER, "password": PASSWORD, "next": "/"},
        timeout=10,
    )
    assert response.status_code == 200 and response.url == server.http_url + "/", response.text
    token = re.search(r'data-token="([^"]+)"', response.text).group(1)
    rows = server.http_url + f"/ui/today/rows?date={TODAY.isoformat()}"
    response = session.get(rows + f"&v={token}", timeout=10)
    assert response.status_code == 204, response.text
    assert session.get(rows + f"&v={token}", timeout=10).status_code == 204

    item = api_create(server, item_body("Token^Change", "DX", "TODAYDX1", "1300"))
    response = session.get(rows + f"&v={token}", timeout=10)
    assert response.status_code == 200
    assert f'id="row-{item["id"]}"' in response.text
    new = re.search(r'data-token="([^"]+)"', response.text).group(1)
    assert new != token
    assert session.get(rows + f"&v={new}", timeout=10).status_code == 204
    # bad filters are a precise 400, not a 500
    bad = session.get(server.http_url + "/?date=2026-13-45", timeout=10)
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text
    assert session.get(server.http_url + "/?status=DONE", timeout=10).status_code == 400
    assert session.get(server.http_url + "/ui/print?date=0001-01-01", timeout=10).status_code == 400


# --- the service --------------------------------------------------------------------------


def test_day_view_filters(db):
    def add(name: str, pid: str, modality: str, station: str, time: str, day: str = DAY) -> int:
        body = item_body(name, modality, station, time, sps_start_date=day)
        patient = {**body.pop("patient"), "patient_id": pid}
        return schedule.create_item(db, None, patient, body)["id"]

    dvorak = add("Dvořák^Antonín", "PX1", "CT", "SVCCT1", "0930")
    yamada = add("Yamada^Taro=山田^太郎", "PX2", "MR", "SVCMR1", "0800")
    ct2 = add("Smith^John", "PX3", "CT", "SVCCT2", "1000")
    add("Other^Day", "PX4", "CT", "SVCCT1", "0900", day="20300101")
    body = item_body("No^Time", "DX", "SVCDX1", "0000")
    del body["patient"], body["sps_start_time"]
    untimed = schedule.create_item(db, None, {"patient_id": "PX5"}, body)["id"]
    with db.write() as session:  # two MPPS for one step (PS3.4 F.7.2: several possible)
        now = utcnow()
        for n, (status, images) in enumerate((("COMPLETED", 3), ("IN PROGRESS", 0))):
            pk = session.execute(
                insert(MPPSTracking).values(
                    sop_instance_uid=f"1.2.3.{n}",
                    status=status,
                    start_datetime=f"{DAY}09{n}000",
                    series_count=1,
                    instance_count=images,
                    dataset=b"",
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            session.execute(insert(mpps_worklist_links).values(mpps_pk=pk, item_pk=dvorak))
    token = change_token(db)

    view = day_view(db, TODAY)
    # by scheduled time, a step without a time last
    assert [r.id for r in view.rows] == [yamada, dvorak, ct2, untimed]
    assert view.counts == {"SCHEDULED": 4, "IN PROGRESS": 0, "COMPLETED": 0, "DISCONTINUED": 0}
    assert view.modalities == ["CT", "DX", "MR"]
    assert view.stations == ["SVCCT1", "SVCCT2", "SVCDX1", "SVCMR1"]
    [first, second] = view.rows[1].mpps
    assert (first.status, first.images, second.status) == ("COMPLETED", 3, "IN PROGRESS")
    assert view.rows[0].mpps == []

    def ids(**filters: str) -> list[int]:
        return [r.id for r in day_view(db, TODAY, DayFilters.parse(**filters)).rows]

    assert ids(modality="ct") == [dvorak, ct2]
    assert ids(station="SVCCT2") == [ct2]
    assert ids(status="scheduled") == [yamada, dvorak, ct2, untimed]
    assert ids(status="COMPLETED") == []
    assert ids(search="DVORAK") == ids(search="dvořák") == ids(search="Dvořák, Antonín") == [dvorak]
    assert ids(search="山田") == [yamada]
    assert ids(search="px3") == [ct2]
    assert ids(search="50%_") == []  # LIKE wildcards are text
    assert [r.id for r in day_view(db, dt.date(2030, 1, 1)).rows] != []
    with pytest.raises(ValueError):
        DayFilters.parse(status="DONE")
    assert change_token(db) == token
    schedule.cancel_item(db, None, ct2, "test")  # audited
    assert change_token(db) != token
    token = change_token(db)
    with db.write() as session:  # a completeness check (delivery/orthanc.py) is not audited
        session.execute(
            update(MPPSTracking)
            .where(MPPSTracking.sop_instance_uid == "1.2.3.0")
            .values(completeness="complete", received_count=3, completeness_checked_at=utcnow())
        )
    assert change_token(db) != token
    assert day_view(db, TODAY).rows[1].mpps[0].received == 3
    # PostgreSQL: a transaction may commit after one with a higher id (sequence order is
    # not commit order); the token still changes
    with db.write() as session:
        top = session.scalar(select(func.max(AuditEvent.id)))
        session.add(AuditEvent(id=top + 5, channel="CLI", actor="t", action="a", target="t"))
    token = change_token(db)
    with db.write() as session:
        session.add(AuditEvent(id=top + 2, channel="CLI", actor="t", action="a", target="t"))
    assert change_token(db) != token
    assert day_view(db, TODAY, DayFilters.parse(modality="CT")).counts["DISCONTINUED"] == 1


def test_rows_show_completeness_and_the_orthanc_explorer_link():
    """With Orthanc configured: received / expected and the missing count per MPPS, and the
    study in Orthanc Explorer 2 (its #/filtered-studies?StudyInstanceUID= route)."""
    from worklist_mpps.services.today import DayView, Progress, Row
    from worklist_mpps.web.ui import render
    from worklist_mpps.web.ui.today import explorer_link

    link = explorer_link("http://pacs:8042", "1.2.3")
    assert link == "http://pacs:8042/ui/app/#/filtered-studies?StudyInstanceUID=1.2.3&expand=study"
    assert explorer_link("https://pacs/ui/app/", "1.2.3").startswith("https://pacs/ui/app/#/")
    done = Progress("9.1", "COMPLETED", f"{DAY}090000", f"{DAY}091500", 2, 10, "incomplete", 7, 3)
    row = Row(1, DAY, "0900", "山田^太郎", "P1", None, None, "A1", "CT", None, "CT", "CT1",
              "COMPLETED", None, "1.2.3", [done])  # fmt: skip
    view = DayView(TODAY, DayFilters(), [row], dict.fromkeys(("COMPLETED",), 1), ["CT"], ["CT1"])
    values = {
        "view": view,
        "token": "t",
        "query": "",
        "refresh": "5",
        "orthanc": True,
        "filtered": False,
        "explorer": lambda uid: explorer_link("http://pacs:8042", uid),
        "day_dicom": DAY,
    }
    html = render.templates.get_template("today_rows.html").render(**values)
    assert "7 / 10" in html and "3 missing" in html and "incomplete" in html
    assert 'href="http://pacs:8042/ui/app/#/filtered-studies?StudyInstanceUID=1.2.3' in html
    assert "09:00 &ndash; 09:15" in html and "2 series, 10 images" in html
    assert "山田 太郎" in html
    values.update(orthanc=False)
    html = render.templates.get_template("today_rows.html").render(**values)
    assert "missing" not in html and "filtered-studies" not in html


# --- helpers ------------------------------------------------------------------------------
