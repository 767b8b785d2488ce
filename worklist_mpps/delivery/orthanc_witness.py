"""Orthanc's change feed, followed (issue 16, README "Orthanc as witness").

A thread in ``serve`` (when ``orthanc_url`` is set) reads ``GET /changes?since=N&limit=100``
every ``orthanc_changes_interval`` seconds. Orthanc answers ``{"Changes": [{"ChangeType",
"Date", "ID", "Path", "ResourceType", "Seq"}], "Done", "Last"}``; a ``StableStudy`` change
(the study received nothing for ``StableAge`` seconds) is read (``/studies/{id}``, its
series, its instances and one SOP Class UID per series) and handed to services/witness.py,
which records and matches it and moves the durable cursor in the same transaction. Then
the studies that are due are completed from their study (emulated MPPS).

- First start (no cursor in the database): the feed is followed from Orthanc's current
  ``Last``, so a new installation beside an Orthanc with years of studies emulates none of
  them. Orthanc's change log restarting (a new Orthanc database: ``Last`` below our cursor)
  is followed from 0, audited ``witness.restart``.
- One instance at a time: the lease ``orthanc-changes`` (services/leases.py), renewed
  every pass and at every page, released at stop; the cursor moves compare-and-set, so an
  instance that lost the lease stops without repeating anything.
- Orthanc unreachable: one log line, the next pass tries again; nothing is lost (the
  cursor has not moved).
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database
from worklist_mpps.delivery.orthanc import OrthancClient
from worklist_mpps.delivery.worker import Failed, Retry
from worklist_mpps.services import leases, witness
from worklist_mpps.services.audit import Actor
from worklist_mpps.services.witness_mpps import SeriesContent, StudyContent

log = logging.getLogger("worklist_mpps.delivery.orthanc_witness")

LEASE = "orthanc-changes"
PAGE = 100  # changes per /changes request
MAX_PAGES = 20  # pages per pass (then the emulation pass, then the next pass)


def orthanc_actor(url: str) -> Actor:
    """The audit actor of what the witness does: ``orthanc`` at Orthanc's host."""
    return Actor("orthanc", urlsplit(url).hostname, "ORTHANC")


class StudyNotFound(Exception):
    """Orthanc has no such study (deleted since its change)."""


def _get(client: OrthancClient, path: str) -> Any:
    response = client._call("GET", path)
    if response.status_code == 404:
        raise StudyNotFound(path)
    if not response.ok:
        raise Retry(f"Orthanc GET {path}: HTTP {response.status_code}")
    return (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else response.text
    )


def changes(client: OrthancClient, since: int, limit: int = PAGE) -> dict:
    """One page of Orthanc's change log after Seq ``since``."""
    return _get(client, f"/changes?since={since}&limit={limit}")


def last_change(client: OrthancClient) -> int:
    """Orthanc's newest Seq (0 for an empty log)."""
    return int(_get(client, "/changes?last").get("Last") or 0)


def study_content(client: OrthancClient, orthanc_id: str) -> StudyContent:
    """The study as Orthanc holds it: main tags, series and their instances (with one SOP
    Class UID per series, from its first instance's metadata ``SopClassUid``)."""
    study = _get(client, f"/studies/{orthanc_id}")
    tags, patient = study.get("MainDicomTags", {}), study.get("PatientMainDicomTags", {})
    series_json = _get(client, f"/studies/{orthanc_id}/series")
    instances = _get(client, f"/studies/{orthanc_id}/instances")
    by_series: dict[str, list[str]] = {}
    for instance in instances:
        uid = instance.get("MainDicomTags", {}).get("SOPInstanceUID")
        if uid:
            by_series.setdefault(instance.get("ParentSeries", ""), []).append(uid)
    series = []
    for s in sorted(series_json, key=lambda s: s.get("MainDicomTags", {}).get("SeriesNumber", "")):
        main = s.get("MainDicomTags", {})
        sop_class = ""
        if s.get("Instances"):
            try:
                sop_class = str(
                    _get(client, f"/instances/{s['Instances'][0]}/metadata/SopClassUid")
                ).strip()
            except StudyNotFound:
                sop_class = ""
        series.append(
            SeriesContent(
                series_instance_uid=main.get("SeriesInstanceUID", ""),
                modality=main.get("Modality", ""),
                description=main.get("SeriesDescription", ""),
                protocol_name=main.get("ProtocolName", ""),
                instances=[
                    (sop_class or "1.2.840.10008.5.1.4.1.1.7", uid)
                    for uid in by_series.get(s.get("ID", ""), [])
                ],
            )
        )
    return StudyContent(
        orthanc_id=orthanc_id,
        study_instance_uid=tags.get("StudyInstanceUID", ""),
        accession_number=tags.get("AccessionNumber", ""),
        patient_id=patient.get("PatientID", ""),
        patient_name=patient.get("PatientName", ""),
        study_date=tags.get("StudyDate", ""),
        study_time=tags.get("StudyTime", ""),
        description=tags.get("StudyDescription", ""),
        series=series,
    )


def fetch_study(client: OrthancClient, orthanc_id: str) -> StudyContent | None:
    """The study's content; None when Orthanc no longer has it."""
    try:
        return study_content(client, orthanc_id)
    except StudyNotFound:
        return None


class WitnessFollower:
    """The thread that follows the feed and completes the due studies."""

    def __init__(
        self,
        db: Database,
        config: Config,
        targets: list[str],
        notify: Any = lambda: None,
        client: OrthancClient | None = None,
    ) -> None:
        self.db, self.config, self.targets, self.notify = db, config, targets, notify
        self.client = client or OrthancClient(
            config.orthanc_url, config.orthanc_username, config.orthanc_password
        )
        self.actor = orthanc_actor(config.orthanc_url)
        self.holder = leases.instance_name()
        self.interval = max(0.1, config.orthanc_changes_interval)
        self.lease_seconds = max(30.0, 6 * self.interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""
        self._gone: set[str] = set()  # due studies Orthanc no longer has (logged once)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orthanc-witness", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            leases.release(self.db, LEASE, self.holder)
        except Exception as exc:  # noqa: BLE001 - a stop must not fail on the database
            log.warning("Orthanc witness: lease not released: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            behind = False
            try:
                behind = self.run_once()
                self._last_error = ""
            except (Retry, Failed) as exc:
                if str(exc) != self._last_error:  # one line per cause, not per pass
                    log.warning("Orthanc witness: %s", exc)
                self._last_error = str(exc)
            except witness.CursorMoved as exc:
                log.info("Orthanc witness: another instance follows the feed (%s)", exc)
            except Exception:
                log.exception("Orthanc witness: pass failed")
            self._stop.wait(0 if behind else self.interval)  # catching up: no pause

    def _lease(self) -> bool:
        return leases.acquire(self.db, LEASE, self.holder, self.lease_seconds)

    def run_once(self) -> bool:
        """One pass: the feed's new changes (if this instance holds the lease), then the
        studies due for completion. True when the feed has more changes waiting."""
        if not self._lease():
            return False
        behind = self.follow()
        self.complete_due()
        return behind

    def follow(self) -> bool:
        """Up to MAX_PAGES pages of changes; True when Orthanc has more."""
        seq = witness.cursor(self.db)
        if seq is None:
            seq = witness.init_cursor(self.db, last_change(self.client), self.actor)
            log.info("Orthanc witness: following Orthanc's changes from Seq %d", seq)
        for _ in range(MAX_PAGES):
            if self._stop.is_set() or not self._lease():
                return False
            page = changes(self.client, seq)
            entries = page.get("Changes") or []
            last = int(page.get("Last") or 0)
            if not entries and last < seq:
                witness.advance_cursor(
                    self.db,
                    seq,
                    0,
                    f"Orthanc's change log restarted (Last {last} < {seq})",
                    self.actor,
                )
                log.warning("Orthanc witness: Orthanc's change log restarted, from Seq 0")
                seq = 0
                continue
            stored = seq
            for change in entries:
                number = int(change["Seq"])
                if (
                    change.get("ChangeType") == "StableStudy"
                    and change.get("ResourceType", "Study") == "Study"
                ):
                    content = fetch_study(self.client, change["ID"])
                    state = witness.record_stable_study(
                        self.db,
                        self.actor,
                        content,
                        number,
                        stored,
                        self.config.orthanc_match_by,
                    )
                    log.info(
                        "Orthanc witness: stable study %s (Seq %d): %s",
                        change["ID"],
                        number,
                        state or "gone from Orthanc",
                    )
                    stored = number
                seq = max(seq, number)
            if seq != stored:
                witness.advance_cursor(self.db, stored, seq)
            if page.get("Done", True) or not entries:
                return False
        return True

    def complete_due(self) -> None:
        due = witness.due_studies(
            self.db, self.config.orthanc_emulate_mpps, self.config.orthanc_emulate_mpps_delay
        )
        for orthanc_id in due:
            if self._stop.is_set() or not self._lease():
                return
            content = fetch_study(self.client, orthanc_id)
            if content is None:
                if orthanc_id not in self._gone:  # once, not at every pass
                    log.warning("Orthanc witness: study %s is gone from Orthanc", orthanc_id)
                    self._gone.add(orthanc_id)
                continue
            uid = witness.complete_from_study(
                self.db,
                self.actor,
                orthanc_id,
                content,
                self.targets,
                self.config.uid_prefix,
                self.config.orthanc_match_by,
            )
            if uid:
                log.info("Orthanc witness: study %s completed its item, MPPS %s", orthanc_id, uid)
                self.notify()
