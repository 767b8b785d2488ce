"""The Problems view (issue 15 deliverable 5) in a real browser, against live servers and
real peers: an MPPS that matched no order is linked through the page, a delivery refused
by a downstream MPPS peer is retried, a refused HL7 message shows its reason and text,
findscu's query shows under its calling AE title. The services are called directly too."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from browser import PASSWORD, USER, log_in, login_env, screenshot
from conftest import LiveServer, dcmtk, free_port, wait_for
from dicom_clients import associate, find, worklist_query
from hl7_clients import MLLPClient, ack_code, order
from worklist_mpps.client.messages import ScheduledStep, n_create
from worklist_mpps.db.engine import Database
from worklist_mpps.db.migrate import upgrade
from worklist_mpps.services import audit, links, outbox, problems, schedule
from worklist_mpps.services.audit import Actor


def api(server: LiveServer, path: str) -> dict:
    import urllib.request

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        server.http_url + path, headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as rsp:
        return json.loads(rsp.read())


def cli(server: LiveServer, *args: str) -> list[dict]:
    """``worklist-mpps ... --json`` on the server's database."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            *args,
            "--json",
            "--database-url",
            server.database_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def unscheduled_mpps(port: int, patient_id: str, modality: str, station: str) -> str:
    """An N-CREATE whose Scheduled Step Attributes name no known order (a new study UID,
    an accession nobody scheduled): the unscheduled case, PS3.4 F.7.2.1.2."""
    uid = generate_uid()
    assoc = associate(port, MPPS, ae_title=station)
    try:
        ds = n_create(
            [ScheduledStep(generate_uid(), "WALK-IN-1")],
            modality=modality,
            station_ae_title=station,
            patient_name="Dvořák^Antonín",
            patient_id=patient_id,
        )
        status = assoc.send_n_create(ds, MPPS, uid)[0].Status
    finally:
        assoc.release()
    assert status == 0
    return uid


def findscu(port: int, outdir: Path, calling: str) -> list[Path]:
    """DCMTK findscu -W from ``calling``: the response files (it must end in Success)."""
    outdir.mkdir(parents=True)
    cmd = [dcmtk("findscu"), "-v", "-W", "-aet", calling, "-aec", "WORKLISTS", "-X"]
    cmd += ["-od", str(outdir), "-k", "PatientName", "-k", "ScheduledProcedureStepSequence"]
    proc = subprocess.run([*cmd, "127.0.0.1", str(port)], capture_output=True, timeout=30)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0 and "Received Final Find Response (Success)" in text, text
    return sorted(outdir.glob("rsp*.dcm"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    """Sample worklist, HL7 order feed on, a login: the module's tests share it."""
    workdir = tmp_path_factory.mktemp("problems")
    live = LiveServer(
        workdir,
        f"sqlite:///{workdir / 'problems.db'}",
        "--load-sample-data",
        "true",
        "--hl7-enabled",
        "true",
        env=login_env(),
    ).start()
    try:
        yield live
    finally:
        live.stop()


def open_problems(page, server: LiveServer) -> None:
    log_in(page, server.http_url)
    page.goto(server.http_url + "/ui/problems")


# --- in the browser -------------------------------------------------------------------------


def test_unmatched_mpps_is_listed_and_linked_to_an_item(page, server):
    today = dt.date.today().strftime("%Y%m%d")
    items = api(server, f"/api/worklist-items?date={today}&limit=100")["items"]
    item = next(i for i in items if i["sps_status"] == "SCHEDULED")
    patient_id = item["patient"]["patient_id"]
    uid = unscheduled_mpps(server.port, patient_id, item["modality"], "WALKIN_CT")
    other = unscheduled_mpps(server.port, "NOBODY-KNOWN", "XA", "XA_ROOM")  # stays listed

    open_problems(page, server)
    row = page.locator(f"tr[data-mpps='{uid}']")
    assert row.count() == 1
    assert "Dvořák, Antonín" in row.inner_text()
    assert "WALKIN_CT" in row.inner_text() and "IN PROGRESS" in row.inner_text()
    # the candidates: the same patient's items first, this one among them
    options = row.locator("select[name=item_id] option")
    assert str(item["id"]) in [
        options.nth(n).get_attribute("value") for n in range(options.count())
    ]
    row.locator("select[name=item_id]").select_option(str(item["id"]))
    row.get_by_role("button", name="Link to order").click()
    page.wait_for_url("**/ui/problems?done=linked*")
    assert "MPPS linked" in page.locator(".notice").inner_text()
    assert page.locator(f"tr[data-mpps='{uid}']").count() == 0
    assert page.locator(f"tr[data-mpps='{other}']").count() == 1

    assert api(server, f"/api/worklist-items/{item['id']}")["sps_status"] == "IN PROGRESS"
    [event] = cli(server, "audit", "--action", "mpps.link", "--target", uid)
    assert (event["actor"], event["channel"]) == (USER, "HTTP")
    assert event["detail"]["item_id"] == item["id"]
    assert (event["detail"]["from"], event["detail"]["to"]) == ("SCHEDULED", "IN PROGRESS")

    # refusals, each with its reason on an error page: a second link of the same MPPS
    # (another tab, a stale page), an item ID that is none, no such item, no CSRF token
    csrf = page.locator("input[name=csrf]").first.input_value()
    for target, fields, status, reason in [
        (uid, {"csrf": csrf, "item_id": "1"}, 409, "already linked"),
        (other, {"csrf": csrf, "item_id_text": "abc"}, 422, "type its ID (a number)"),
        (other, {"csrf": csrf, "item_id_text": "999999"}, 404, "no worklist item 999999"),
        (other, {"csrf": csrf, "item_id_text": "9" * 30}, 404, "no worklist item 999"),
        ("1.2.3.4", {"csrf": csrf, "item_id": "1"}, 404, "no MPPS 1.2.3.4"),
        (other, {"item_id": str(item["id"])}, 403, "CSRF token"),
    ]:
        response = page.request.post(
            server.http_url + f"/ui/problems/mpps/{target}/link", form=fields
        )
        assert response.status == status and reason in response.text(), response.text()
    page.reload()
    assert page.locator(f"tr[data-mpps='{other}']").count() == 1  # none of them linked it


def test_refused_hl7_message_is_listed_with_its_reason(page, server):
    bad = order("77", control="BAD<b>1</b>", orc1="ZZ", extra="NTE|1||<script>x</script>")
    with MLLPClient(server.hl7_port) as client:
        ack = client.send(bad)
    assert ack_code(ack) in ("AE", "AR"), ack
    [message] = [m for m in cli(server, "hl7", "list") if m["control_id"] == "BAD<b>1</b>"]
    assert message["error"]

    open_problems(page, server)
    row = page.locator(f"tr[data-hl7='{message['id']}']")
    text = row.inner_text()
    assert message["error"] in text
    assert "BAD<b>1</b>" in text  # escaped, shown as written
    assert "RIS / HOSPITAL" in text and "ORM^O01" in text and "127.0.0.1" in text
    row.get_by_role("link", name="Message").click()
    raw = page.locator("pre#raw").inner_text().splitlines()
    assert raw[0].startswith("MSH|^~\\&|RIS|HOSPITAL|")
    assert [line[:3] for line in raw] == ["MSH", "PID", "ORC", "TQ1", "OBR", "NTE"]
    assert raw[-1] == "NTE|1||<script>x</script>"  # text, not markup
    assert page.locator("main script").count() == 0
    for missing in ("999999", "9" * 25):
        response = page.request.get(server.http_url + f"/ui/problems/hl7/{missing}")
        assert response.status == 404 and "no HL7 message" in response.text()


def test_stations_show_findscu_with_its_item_count(page, server, tmp_path):
    found = findscu(server.port, tmp_path / "rsp", "CT_SCANNER_1")
    assert found, "the sample worklist has today's items"
    bad = worklist_query()
    bad.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "20261399"
    statuses, _ = find(server.port, bad, ae_title="US_BROKEN")
    assert [s.Status for s in statuses] == [0xA900]
    open_problems(page, server)

    def listed() -> bool:
        page.reload()
        rows = page.locator("tr[data-station='CT_SCANNER_1'], tr[data-station='US_BROKEN']")
        return rows.count() == 2

    wait_for(listed, timeout=15, interval=0.5)  # the flush delay: 2 s
    row = page.locator("tr[data-station='CT_SCANNER_1']")
    cells = row.locator("td")
    assert row.locator("td.matches").inner_text() == str(len(found))
    assert "success" in row.inner_text()
    assert cells.nth(4).inner_text() == "WORKLISTS"  # called AE
    assert cells.nth(5).inner_text() == "127.0.0.1"
    assert cells.nth(6).inner_text() == "1"  # queries
    assert cells.nth(1).inner_text().endswith("s ago")
    refused = page.locator("tr[data-station='US_BROKEN']")
    assert refused.locator("td.matches").inner_text() == "0"
    assert "refused: identifier does not match" in refused.inner_text()
    screenshot(page, "problems")
    page.locator("#stations").scroll_into_view_if_needed()
    screenshot(page, "problems-stations")


def test_failed_delivery_is_retried_from_the_page(page, tmp_path):
    """A downstream MPPS peer that refuses (0x0124: the upstream may query only) makes the
    row failed for good; once the peer is fixed, Retry delivers it."""
    down_port = free_port()
    query_only = [{"ae_title": "UPSTREAM", "services": ["worklist"]}]  # no MPPS
    peers = [{"name": "ris", "host": "127.0.0.1", "port": down_port, "ae_title": "WORKLISTS"}]
    refusing = LiveServer(
        tmp_path,
        f"sqlite:///{tmp_path / 'down1.db'}",
        "--load-sample-data",
        "false",
        env={"WORKLIST_MPPS_DEVICES": json.dumps(query_only)},
        port=down_port,
    ).start()
    upstream = LiveServer(
        tmp_path,
        f"sqlite:///{tmp_path / 'up.db'}",
        "--ae-title",
        "UPSTREAM",
        "--load-sample-data",
        "false",
        "--outbox-retry-min",
        "0.3",
        "--outbox-retry-max",
        "1",
        env={**login_env(), "WORKLIST_MPPS_FORWARD_PEERS": json.dumps(peers)},
    ).start()
    fixed = None
    db = Database(upstream.database_url)
    try:
        uids = [unscheduled_mpps(upstream.port, f"PID-FWD{n}", "CT", "CT01") for n in (1, 2)]

        def failed() -> list[dict]:
            rows = outbox.list_messages(db, "failed")
            return rows if len(rows) == 2 else []

        second, row = wait_for(failed)  # newest first
        assert [row["mpps_uid"], second["mpps_uid"]] == uids
        assert "0x0124" in (row["last_error"] or "")

        open_problems(page, upstream)
        line = page.locator(f"tr[data-outbox='{row['id']}']")
        assert "forward:ris" in line.inner_text() and "0x0124" in line.inner_text()
        page.locator("#failed").scroll_into_view_if_needed()
        screenshot(page, "problems-failed")
        refusing.stop()
        fixed = LiveServer(
            tmp_path,
            f"sqlite:///{tmp_path / 'down2.db'}",
            "--load-sample-data",
            "false",
            port=down_port,
        ).start()
        line.get_by_role("button", name="Retry").click()
        page.wait_for_url("**/ui/problems?done=retried*")
        assert page.locator(f"tr[data-outbox='{row['id']}']").count() == 0

        def delivered(*ids: int) -> bool:
            done = {m["id"] for m in outbox.list_messages(db, "delivered")}
            return done >= set(ids)

        wait_for(lambda: delivered(row["id"]))
        assert [m["id"] for m in outbox.list_messages(db, "failed")] == [second["id"]]
        page.get_by_role("button", name="Retry all failed").click()
        page.wait_for_url("**/ui/problems?done=retried-all*")
        wait_for(lambda: delivered(row["id"], second["id"]))
        events = audit.query(db, action="outbox.retry")
        assert [(e["actor"], e["channel"], e["target"]) for e in reversed(events)] == [
            (USER, "HTTP", f"outbox:{row['id']}"),
            (USER, "HTTP", "outbox:all-failed"),
        ]
        # nothing failed any more: Retry all answers that there is nothing to retry
        response = page.request.post(
            upstream.http_url + "/ui/problems/outbox/retry-all",
            form={"csrf": page.locator("input[name=csrf]").first.input_value()},
        )
        assert response.status == 409
    finally:
        db.dispose()
        upstream.stop()
        refusing.stop()
        if fixed:
            fixed.stop()


# --- the services, called directly ----------------------------------------------------------


def test_link_mpps_service(db_url, tmp_path):
    """links.link_mpps: refusals, the status change, the order placer's status message
    (queued like a matched MPPS would have), one audit event."""
    from worklist_mpps.services import mpps

    db = Database(db_url)
    upgrade(db.engine)
    try:
        item = schedule.create_item(
            db,
            None,
            {"patient_id": "P-LINK", "patient_name": "Yamada^Taro"},
            {
                "accession_number": "ACC-L",
                "sps_id": "SPS-L",
                "modality": "CT",
                "sps_start_date": dt.date.today().strftime("%Y%m%d"),
                "sps_start_time": "090000",
                "placer_order_number": "PLC-L",
            },
        )
        targets = ["orthanc", "hl7:ris"]
        ds = n_create(
            [ScheduledStep(generate_uid(), "NOPE")],
            modality="CT",
            station_ae_title="CT9",
            patient_id="P-LINK",
        )
        uid = mpps.create(db, ds, generate_uid(), "CT9", targets=targets).uid
        section = problems.unmatched_mpps(db)
        assert [r["uid"] for r in section.rows] == [uid] and section.total == 1
        assert [c["id"] for c in section.rows[0]["candidates"]] == [item["id"]]

        actor = Actor("operator", "127.0.0.1:1", "HTTP")
        with pytest.raises(links.LinkError) as no_mpps:
            links.link_mpps(db, actor, "1.2.3.999", item["id"], targets)
        for item_id in (999_999, 2**63, 0):  # none, past the 32-bit id (PostgreSQL), none
            with pytest.raises(links.LinkError) as no_item:
                links.link_mpps(db, actor, uid, item_id, targets)
            assert no_item.value.not_found
        assert no_mpps.value.not_found

        [change] = links.link_mpps(db, actor, uid, item["id"], targets)
        assert (change.old, change.new) == ("SCHEDULED", "IN PROGRESS")
        assert problems.unmatched_mpps(db).total == 0
        status_rows = [m for m in outbox.list_messages(db) if m["target"] == "hl7:ris"]
        assert [(m["mpps_uid"], m["event"]) for m in status_rows] == [
            (f"item:{item['id']}", "SC^IP")
        ]
        [event] = audit.query(db, action="mpps.link")
        assert (event["actor"], event["target"], event["detail"]["status_messages_queued"]) == (
            "operator",
            uid,
            1,
        )
        with pytest.raises(links.LinkError) as twice:
            links.link_mpps(db, actor, uid, item["id"], targets)
        assert not twice.value.not_found and "already linked" in twice.value.message
    finally:
        db.dispose()


def test_problem_sections_are_bounded(tmp_path):
    """Each section shows at most ``limit`` rows, newest first, and tells the total."""
    db = Database(f"sqlite:///{tmp_path / 'bounded.db'}")
    upgrade(db.engine)
    try:
        with db.write() as session:
            outbox.enqueue(session, ["orthanc"] * 5, "1.2.3", "N-CREATE", "IN PROGRESS", None)
        with db.write() as session:
            from sqlalchemy import update

            from worklist_mpps.db.models import OutboxMessage

            session.execute(update(OutboxMessage).values(state="failed", last_error="HTTP 500"))
        section = problems.failed_deliveries(db, limit=3)
        assert section.total == 5
        assert [r["id"] for r in section.rows] == sorted(
            (r["id"] for r in section.rows), reverse=True
        )
        assert len(section.rows) == 3
        assert (
            problems.ago(dt.datetime(2026, 1, 1, 12, 0, 0), dt.datetime(2026, 1, 1, 14, 5)) == "2 h"
        )
    finally:
        db.dispose()
