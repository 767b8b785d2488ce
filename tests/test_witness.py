"""Orthanc as witness (issue 16, deliverables 1 and 2) against a real Orthanc (Debian's
package) and live servers: a study for an item whose modality sent no MPPS completes it
after the delay (emulated MPPS, the Orthanc metadata, findscu no longer lists it); an item
with a real MPPS is untouched; studies without an order are listed and linked; a restart
resumes the change feed from its cursor; two instances on one PostgreSQL follow it once.
The services are called directly too."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from browser import PASSWORD as WEB_PASSWORD
from browser import USER as WEB_USER
from browser import login_env
from conftest import LiveServer, wait_for
from dicom_clients import dicom_mpps, findscu_files
from orthanc_server import PASSWORD, USER, Orthanc, new_uids
from worklist_mpps.db.engine import Database
from worklist_mpps.db.migrate import upgrade
from worklist_mpps.services import audit, leases, mpps, schedule

TODAY = dt.date.today().strftime("%Y%m%d")


# --- helpers --------------------------------------------------------------------------------


def upload(
    orthanc: Orthanc,
    study: str,
    series: str,
    sop: str,
    patient_id: str = "PID-W",
    accession: str = "",
) -> None:
    """One CT instance into Orthanc over its REST API (with an Accession Number)."""
    tags = {"PatientName": "Witness^Wanda", "AccessionNumber": accession}
    tags |= {"StudyDate": TODAY, "StudyTime": "101500", "SeriesDescription": "Axial"}
    orthanc.upload(study, series, sop, patient_id, **tags)


def new_item(db: Database, accession: str, patient_id: str = "PID-W", **extra: str) -> dict:
    return schedule.create_item(
        db,
        None,
        {"patient_id": patient_id, "patient_name": "Witness^Wanda"},
        {
            "accession_number": accession,
            "sps_id": "S-" + accession,
            "requested_procedure_id": "RP-" + accession,
            "modality": "CT",
            "scheduled_station_ae_title": "CT01",
            "sps_start_date": TODAY,
            "sps_start_time": "100000",
            **extra,
        },
    )


def item_status(db: Database, item_id: int) -> str:
    return schedule.get_item(db, item_id)["sps_status"]


def api(server: LiveServer, path: str, body: dict | None = None) -> tuple[int, dict]:
    token = base64.b64encode(f"{WEB_USER}:{WEB_PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        server.http_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def cli(url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("WORKLIST_MPPS_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "worklist_mpps", *args, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def stable_audits(db: Database, orthanc_id: str) -> list[dict]:
    return audit.query(db, action="study.stable", target=f"study:{orthanc_id}")


def findscu_accessions(port: int, outdir: Path) -> list[str]:
    """The accession numbers a default worklist query returns (DCMTK findscu)."""
    found = findscu_files(
        port, outdir, "AccessionNumber", "PatientName", "ScheduledProcedureStepSequence"
    )
    return [str(ds.get("AccessionNumber", "")) for ds in found]


def witness_flags(orthanc: Orthanc, *extra: str) -> list[str]:
    return [
        "--load-sample-data",
        "false",
        "--orthanc-url",
        orthanc.url,
        "--orthanc-username",
        USER,
        "--orthanc-changes-interval",
        "0.5",
        "--outbox-retry-min",
        "0.3",
        "--outbox-retry-max",
        "1",
        *extra,
    ]


SERVER_ENV = {"WORKLIST_MPPS_ORTHANC_PASSWORD": PASSWORD, **login_env()}


@pytest.fixture
def orthanc(tmp_path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def emulating(orthanc, tmp_path) -> Iterator[tuple[LiveServer, Database]]:
    """A server emulating MPPS after 1 s, reading the feed every 0.5 s; its database."""
    url = f"sqlite:///{tmp_path / 'witness.db'}"
    server = LiveServer(
        tmp_path,
        url,
        *witness_flags(
            orthanc, "--orthanc-emulate-mpps", "true", "--orthanc-emulate-mpps-delay", "1"
        ),
        env=SERVER_ENV,
    ).start()
    db = Database(url)
    try:
        yield server, db
    finally:
        server.stop()
        db.dispose()


# --- live: emulation ------------------------------------------------------------------------


def test_a_study_without_mpps_completes_its_item_and_a_real_mpps_is_untouched(
    emulating, orthanc, tmp_path
):
    server, db = emulating
    silent = new_item(db, "ACC-SILENT")  # its modality sends no MPPS
    talking = new_item(db, "ACC-TALK")  # its modality does
    assert sorted(findscu_accessions(server.port, tmp_path / "before")) == [
        "ACC-SILENT",
        "ACC-TALK",
    ]
    real = dicom_mpps(
        "create",
        f"pacs://WORKLISTS@127.0.0.1:{server.port}",
        "--aet",
        "CT01",
        "--study-uid",
        talking["study_instance_uid"],
        "--accession",
        "ACC-TALK",
        "--patient-id",
        "PID-W",
        "--modality",
        "CT",
    )
    assert item_status(db, talking["id"]) == "IN PROGRESS"

    talk_series, talk_image = new_uids(2)
    upload(orthanc, talking["study_instance_uid"], talk_series, talk_image)  # first in the feed
    series, images = generate_uid(), new_uids(2)
    for image in images:
        upload(orthanc, silent["study_instance_uid"], series, image)

    wait_for(lambda: item_status(db, silent["id"]) == "COMPLETED", timeout=45)
    [step] = [m for m in mpps.list_steps(db) if m["worklist_items"] == ["ACC-SILENT/S-ACC-SILENT"]]
    assert step["emulated"] and step["status"] == "COMPLETED"
    assert (step["pps_id"], step["series"], step["instances"]) == ("EMULATED", 1, 2)
    _, ds = mpps.show_step(db, step["sop_instance_uid"])
    [ssas] = ds.ScheduledStepAttributesSequence
    assert (ssas.StudyInstanceUID, ssas.AccessionNumber, ssas.ScheduledProcedureStepID) == (
        silent["study_instance_uid"],
        "ACC-SILENT",
        "S-ACC-SILENT",
    )
    assert ssas.RequestedProcedureID == "RP-ACC-SILENT"
    assert sorted(
        r.ReferencedSOPInstanceUID for r in ds.PerformedSeriesSequence[0].ReferencedImageSequence
    ) == sorted(images)
    for action in ("mpps.create", "mpps.update"):
        [event] = audit.query(db, action=action, target=step["sop_instance_uid"])
        assert (event["actor"], event["channel"]) == ("orthanc", "ORTHANC")
    # the MPPS path followed: the Orthanc study has the MPPS state and completeness
    meta = wait_for(
        lambda: (
            (m := orthanc.metadata(silent["study_instance_uid"])).get("MppsCompleteness")
            == "complete"
            and m
        ),
        timeout=30,
    )
    assert (meta["MppsStatus"], meta["MppsInstanceUID"]) == ("COMPLETED", step["sop_instance_uid"])
    assert findscu_accessions(server.port, tmp_path / "after") == ["ACC-TALK"]

    # the talking modality's study was stable (and due) no later than the silent one's:
    # its item still follows its real MPPS only
    assert item_status(db, talking["id"]) == "IN PROGRESS"
    steps = [m for m in mpps.list_steps(db) if m["worklist_items"] == ["ACC-TALK/S-ACC-TALK"]]
    assert [(m["sop_instance_uid"], m["emulated"]) for m in steps] == [(real, False)]
    talk_study = orthanc.study_id(talking["study_instance_uid"])
    [stable] = stable_audits(db, talk_study)
    assert stable["detail"]["state"] == "matched"
    assert server.proc is not None and server.proc.poll() is None
    assert PASSWORD not in server.log()


def test_studies_without_an_order_are_listed_and_linked(emulating, orthanc, tmp_path):
    server, db = emulating
    walk_in, other = new_uids(2)
    upload(orthanc, walk_in, generate_uid(), generate_uid(), "PID-U1", accession="WALK-1")
    upload(orthanc, other, generate_uid(), generate_uid(), "PID-U2")
    walk_id, other_id = orthanc.study_id(walk_in), orthanc.study_id(other)

    def listed() -> list[str]:
        status, body = api(server, "/api/studies/unmatched")
        assert status == 200, body
        return [s["orthanc_id"] for s in body["studies"]]

    wait_for(lambda: {walk_id, other_id} <= set(listed()), timeout=30)
    rows = json.loads(cli(server.database_url, "unmatched", "--json").stdout)
    row = next(r for r in rows if r["orthanc_id"] == walk_id)
    assert (row["accession_number"], row["patient_id"], row["instances"]) == ("WALK-1", "PID-U1", 1)
    table = cli(server.database_url, "unmatched").stdout
    assert walk_id in table and "WALK-1" in table

    # the order came afterwards: link through the API (the server completes the item)
    item = new_item(db, "ACC-LATE", patient_id="PID-U1")
    assert api(server, f"/api/studies/{walk_id}/link", {"item_id": item["id"]})[0] == 200
    wait_for(lambda: item_status(db, item["id"]) == "COMPLETED", timeout=30)
    [event] = audit.query(db, action="study.link", target=f"study:{walk_id}")
    assert (event["actor"], event["channel"], event["detail"]["item_id"]) == (
        WEB_USER,
        "HTTP",
        item["id"],
    )
    assert walk_id not in listed()
    status, body = api(server, f"/api/studies/{walk_id}/link", {"item_id": item["id"]})
    assert status == 409 and "already linked" in json.dumps(body)
    unknown = "-".join(["0" * 8] * 5)
    assert api(server, f"/api/studies/{unknown}/link", {"item_id": item["id"]})[0] == 404
    assert api(server, "/api/studies/no%0D/link", {"item_id": item["id"]})[0] == 422
    assert api(server, f"/api/studies/{other_id}/link", {"item_id": 999_999})[0] == 404

    # the CLI, with the Orthanc connection: completed at once
    second = new_item(db, "ACC-LATE2", patient_id="PID-U2")
    done = cli(
        server.database_url,
        "link",
        "--study",
        other_id,
        "--item",
        str(second["id"]),
        "--json",
        "--orthanc-url",
        orthanc.url,
        "--orthanc-username",
        USER,
        env={"WORKLIST_MPPS_ORTHANC_PASSWORD": PASSWORD},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completion"] == "done"
    assert item_status(db, second["id"]) == "COMPLETED"
    assert cli(server.database_url, "link", "--study", other_id, "--item", "1").returncode == 1

    # an unscheduled MPPS, linked through the API
    unscheduled = dicom_mpps(
        "create",
        f"pacs://WORKLISTS@127.0.0.1:{server.port}",
        "--aet",
        "CT01",
        "--study-uid",
        generate_uid(),
        "--accession",
        "NOBODY",
        "--patient-id",
        "PID-U3",
    )
    third = new_item(db, "ACC-U3", patient_id="PID-U3")
    status, body = api(server, f"/api/mpps/{unscheduled}/link", {"item_id": third["id"]})
    assert status == 200, body
    assert body["status_changes"] == [
        {"item_id": third["id"], "from": "SCHEDULED", "to": "IN PROGRESS"}
    ]
    assert api(server, f"/api/mpps/{unscheduled}/link", {"item_id": third["id"]})[0] == 409
    [event] = audit.query(db, action="mpps.link", target=unscheduled)
    assert event["actor"] == WEB_USER
    # ... and one through the CLI
    again = dicom_mpps(
        "create",
        f"pacs://WORKLISTS@127.0.0.1:{server.port}",
        "--aet",
        "CT01",
        "--study-uid",
        generate_uid(),
        "--accession",
        "NOBODY2",
        "--patient-id",
        "PID-U4",
    )
    fourth = new_item(db, "ACC-U4", patient_id="PID-U4")
    done = cli(server.database_url, "link", "--mpps", again, "--item", str(fourth["id"]), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status_changes"] == [
        {"item_id": fourth["id"], "from": "SCHEDULED", "to": "IN PROGRESS"}
    ]
    assert audit.query(db, action="mpps.link", target=again)[0]["channel"] == "CLI"
    refused = cli(server.database_url, "link", "--mpps", again, "--item", str(fourth["id"]))
    assert refused.returncode == 1 and "already linked" in refused.stderr


def test_the_problems_page_links_a_study_without_an_order(emulating, orthanc, page):
    """The operator page's "Studies without an order": listed, linked with its form."""
    from browser import log_in

    server, db = emulating
    study = generate_uid()
    upload(orthanc, study, generate_uid(), generate_uid(), "PID-P1", accession="WALK-P")
    orthanc_id = orthanc.study_id(study)
    wait_for(lambda: stable_audits(db, orthanc_id), timeout=30)
    item = new_item(db, "ACC-PAGE", patient_id="PID-P1")
    log_in(page, server.http_url)
    page.goto(server.http_url + "/ui/problems")
    row = page.locator(f'#studies tr[data-study="{orthanc_id}"]')
    assert "WALK-P" in row.inner_text() and "PID-P1" in row.inner_text()
    row.locator("select[name=item_id]").select_option(str(item["id"]))  # a candidate
    row.get_by_role("button", name="Link to order").click()
    page.wait_for_url("**/ui/problems?done=study-linked#studies")
    assert page.locator(f'#studies tr[data-study="{orthanc_id}"]').count() == 0
    wait_for(lambda: item_status(db, item["id"]) == "COMPLETED", timeout=30)
    [event] = audit.query(db, action="study.link", target=f"study:{orthanc_id}")
    assert event["actor"] == WEB_USER


# --- live: the cursor -----------------------------------------------------------------------


def test_a_restart_resumes_the_feed_from_its_cursor(orthanc, tmp_path):
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    before = new_uids(3)  # in Orthanc before the first start: history, not followed
    upload(orthanc, before[0], before[1], before[2])
    old_id = orthanc.study_id(before[0])
    wait_for(lambda: orthanc.http.get(f"{orthanc.url}/studies/{old_id}").json()["IsStable"])
    server = LiveServer(tmp_path, url, *witness_flags(orthanc), env=SERVER_ENV).start()
    db = Database(url)
    try:
        first = new_uids(3)
        upload(orthanc, *first)
        first_id = orthanc.study_id(first[0])
        wait_for(lambda: stable_audits(db, first_id), timeout=30)
        assert leases.holder_of(db, "orthanc-changes") is not None
        server.stop()
        assert leases.holder_of(db, "orthanc-changes") is None  # released at SIGTERM
        assert "Shutting down" in server.log()

        meanwhile = [new_uids(3) for _ in range(3)]
        for study in meanwhile:
            upload(orthanc, *study)
        ids = [orthanc.study_id(s[0]) for s in meanwhile]
        for orthanc_id in ids:  # stable in Orthanc while nobody follows the feed
            wait_for(
                lambda i=orthanc_id: orthanc.http.get(f"{orthanc.url}/studies/{i}").json()[
                    "IsStable"
                ]
            )
        assert not any(stable_audits(db, i) for i in ids)

        server.start()
        after = new_uids(3)
        upload(orthanc, *after)
        after_id = orthanc.study_id(after[0])
        wait_for(lambda: stable_audits(db, after_id), timeout=30)
        for orthanc_id in [first_id, *ids, after_id]:
            assert len(stable_audits(db, orthanc_id)) == 1, orthanc_id
        assert stable_audits(db, old_id) == []  # a first start follows from Orthanc's Last
        seqs = [stable_audits(db, i)[0]["detail"]["seq"] for i in [first_id, *ids, after_id]]
        assert seqs == sorted(seqs)
        [start] = audit.query(db, action="witness.start")
        assert start["actor"] == "orthanc"
    finally:
        server.stop()
        db.dispose()


def test_two_instances_on_one_postgresql_follow_the_feed_once(orthanc, pg_url, tmp_path):
    upgraded = cli(pg_url, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    db = Database(pg_url)
    servers = [
        LiveServer(
            tmp_path,
            pg_url,
            *witness_flags(
                orthanc, "--orthanc-emulate-mpps", "true", "--orthanc-emulate-mpps-delay", "1"
            ),
            env=SERVER_ENV,
        )
        for _ in range(2)
    ]
    try:
        for server in servers:
            server.start()
        items = [new_item(db, f"ACC-PG{n}") for n in range(6)]
        for item in items:
            series, image = new_uids(2)
            upload(orthanc, item["study_instance_uid"], series, image)
        for item in items:
            wait_for(lambda i=item: item_status(db, i["id"]) == "COMPLETED", timeout=45)
        time.sleep(2)  # both instances had passes enough to do anything twice
        steps = mpps.list_steps(db, limit=100)
        for item in items:
            label = f"{item['accession_number']}/S-{item['accession_number']}"
            mine = [m for m in steps if label in m["worklist_items"]]
            assert [(m["emulated"], m["status"]) for m in mine] == [(True, "COMPLETED")]
            orthanc_id = orthanc.study_id(item["study_instance_uid"])
            assert len(stable_audits(db, orthanc_id)) == 1
            assert len(audit.query(db, action="study.complete", target=f"study:{orthanc_id}")) == 1
        for server in servers:
            assert server.proc is not None and server.proc.poll() is None
        # one instance held the lease and did it all; the other only waited
        followers = [s for s in servers if "Orthanc witness: stable study" in s.log()]
        completers = [s for s in servers if "completed its item" in s.log()]
        assert len(followers) == 1 and completers == followers
        assert leases.holder_of(db, "orthanc-changes") is not None
    finally:
        for server in servers:
            server.stop()
        db.dispose()


# --- the services, called directly ----------------------------------------------------------


def _content(study_uid: str, orthanc_id: str, accession: str = "", n: int = 2):
    from worklist_mpps.services.witness_mpps import SeriesContent, StudyContent

    series = SeriesContent(
        generate_uid(), "CT", "Axial", "", [(CTImageStorage, generate_uid()) for _ in range(n)]
    )
    return StudyContent(
        orthanc_id, study_uid, accession, "PID-S", "Svc^Pat", TODAY, "101500", "Head", [series]
    )


@pytest.fixture
def sdb(db_url) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database.engine)
    yield database
    database.dispose()


def test_matching_and_the_cursor_service(sdb):
    from worklist_mpps.services import witness
    from worklist_mpps.services.audit import Actor

    actor = Actor("orthanc", "127.0.0.1", "ORTHANC")
    assert witness.cursor(sdb) is None
    assert witness.init_cursor(sdb, 10, actor) == 10
    assert witness.init_cursor(sdb, 99, actor) == 10  # the stored one wins
    item = new_item(sdb, "ACC-M")
    by_uid = _content(item["study_instance_uid"], "o-1")
    assert witness.record_stable_study(sdb, actor, by_uid, 12, 10) == "matched"
    with pytest.raises(witness.CursorMoved):  # another instance moved it: nothing done
        witness.record_stable_study(sdb, actor, _content("1.2.3", "o-x"), 13, 10)
    assert witness.show_study(sdb, "o-x") is None
    assert witness.record_stable_study(sdb, actor, _content("1.2.3", "o-2", "ACC-M"), 13, 12) == (
        "unmatched"
    )
    by_accession = _content("1.2.4", "o-3", "ACC-M")
    assert (
        witness.record_stable_study(sdb, actor, by_accession, 14, 13, "accession_number")
        == "matched"
    )
    assert witness.record_stable_study(sdb, actor, None, 15, 14) is None  # deleted study
    witness.advance_cursor(sdb, 15, 20)
    assert witness.cursor(sdb) == 20
    assert witness.show_study(sdb, "o-1")["item_id"] == item["id"]
    listing = witness.unmatched_studies(sdb)
    assert [r["orthanc_id"] for r in listing.rows] == ["o-2"] and listing.total == 1
    assert [c["id"] for c in listing.rows[0]["candidates"]] == [item["id"]]  # same accession
    # a finished item matches no more
    schedule.cancel_item(sdb, None, item["id"])
    assert (
        witness.record_stable_study(sdb, actor, _content(item["study_instance_uid"], "o-4"), 21, 20)
        == "unmatched"
    )


def test_emulation_and_linking_services(sdb):
    from worklist_mpps.services import links, witness
    from worklist_mpps.services.audit import Actor
    from worklist_mpps.services.witness_mpps import StudyContent

    orthanc_actor = Actor("orthanc", "127.0.0.1", "ORTHANC")
    user = Actor("operator", "127.0.0.1:1", "HTTP")
    witness.init_cursor(sdb, 0, orthanc_actor)
    silent = new_item(sdb, "ACC-E1", placer_order_number="PLC-E1")  # from an HL7 order
    talking, later = (new_item(sdb, a) for a in ("ACC-E2", "ACC-E3"))
    contents: dict[str, StudyContent] = {}
    for n, (item, orthanc_id) in enumerate([(silent, "e-1"), (talking, "e-2")], start=1):
        contents[orthanc_id] = _content(item["study_instance_uid"], orthanc_id)
        witness.record_stable_study(sdb, orthanc_actor, contents[orthanc_id], n, n - 1)
    mpps.create(sdb, _real_mpps(talking), generate_uid(), "CT01")
    now = dt.datetime.now(dt.UTC)
    assert witness.due_studies(sdb, emulate=True, delay=60, now=now) == []
    assert witness.due_studies(sdb, emulate=False, delay=0) == []
    due = witness.due_studies(sdb, True, 60, now + dt.timedelta(seconds=61))
    assert due == ["e-1"]  # the item with a real MPPS is not due
    targets = ["orthanc", "hl7:ris"]
    uid = witness.complete_from_study(sdb, orthanc_actor, "e-1", contents["e-1"], targets)
    assert uid and item_status(sdb, silent["id"]) == "COMPLETED"
    assert witness.show_study(sdb, "e-1")["state"] == "emulated"
    assert witness.due_studies(sdb, True, 0, now + dt.timedelta(seconds=61)) == []
    rows = [(m["event"], m["pps_status"]) for m in _outbox(sdb) if m["mpps_uid"] == uid]
    assert rows == [("N-CREATE", "IN PROGRESS"), ("N-SET", "COMPLETED")]
    placer = [m["event"] for m in _outbox(sdb) if m["mpps_uid"] == f"item:{silent['id']}"]
    assert placer == ["SC^IP", "SC^CM"]  # the order placer hears of it as of a real MPPS
    assert item_status(sdb, talking["id"]) == "IN PROGRESS"

    # linking: refusals, then a study without an order completes the item at once
    walk_in = _content("1.2.826.0.1.99", "u-1")
    witness.record_stable_study(sdb, orthanc_actor, walk_in, 3, 2)
    for orthanc_id, item_id in (("nope", later["id"]), ("u-1", 999_999), ("u-1", 2**63)):
        with pytest.raises(links.LinkError) as refused:
            witness.link_study(sdb, user, orthanc_id, item_id)
        assert refused.value.not_found
    result = witness.link_study(sdb, user, "u-1", later["id"], ["orthanc"], walk_in)
    assert result["completion"] == "done" and item_status(sdb, later["id"]) == "COMPLETED"
    with pytest.raises(links.LinkError) as twice:
        witness.link_study(sdb, user, "u-1", later["id"])
    assert not twice.value.not_found
    with pytest.raises(links.LinkError):
        witness.link_study(sdb, user, "e-1", later["id"])  # emulated already
    [event] = audit.query(sdb, action="study.link")
    assert (event["actor"], event["target"]) == ("operator", "study:u-1")
    # an item with a real MPPS: linked, not completed from the study
    other = _content("1.2.826.0.1.98", "u-2")
    witness.record_stable_study(sdb, orthanc_actor, other, 4, 3)
    result = witness.link_study(sdb, user, "u-2", talking["id"], (), other)
    assert result["mpps"] is None and item_status(sdb, talking["id"]) == "IN PROGRESS"
    assert witness.due_studies(sdb, True, 0) == []


def _outbox(db: Database) -> list[dict]:
    from worklist_mpps.services import outbox

    return sorted(outbox.list_messages(db), key=lambda m: m["id"])


def _real_mpps(item: dict) -> Dataset:
    from worklist_mpps.client.messages import ScheduledStep, n_create

    return n_create(
        [ScheduledStep(item["study_instance_uid"], item["accession_number"])],
        modality="CT",
        station_ae_title="CT01",
        patient_id="PID-W",
    )
