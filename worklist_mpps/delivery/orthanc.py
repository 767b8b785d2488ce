"""Orthanc target of the outbox: the MPPS state and its completeness on the study.

Works with Orthanc 1.10 (Debian bookworm) and newer, over the REST API:

- the study is found with ``POST /tools/lookup`` (Study Instance UID of the
  Scheduled Step Attributes, else the parent study of a performed series);
  while Orthanc has no such study (images usually arrive after the N-CREATE)
  the notification stays pending, up to ``orthanc_study_timeout``;
- the state is written as study metadata (names declared as ``UserMetadata``
  in orthanc.json) and, where ``/system`` reports ``HasLabels`` (1.12+), as a
  label ``mpps-in-progress`` / ``mpps-completed`` / ``mpps-discontinued`` /
  ``mpps-incomplete``;
- the study shows the aggregate of every MPPS of the study, whatever order their
  notifications arrive in (services/study_mpps.py; ``MppsList`` lists them);
- once the aggregate is COMPLETED the SOP Instance UIDs all final MPPS reference
  are compared with the instances Orthanc holds; expected / received / missing
  go to our database and to the study, re-checked until complete or
  ``completeness_timeout``.

Credentials come from the configuration and are never logged. An Orthanc that answers
other hosts with empty credentials is refused before anything is sent to it
(:meth:`OrthancClient.check_access`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests
from sqlalchemy import select

from worklist_mpps.config import Config, redact_url
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import MPPSTracking, OutboxMessage, utcnow
from worklist_mpps.delivery.orthanc_access import OPEN_ORTHANC, open_to_anyone
from worklist_mpps.delivery.worker import Failed, Retry, age_seconds
from worklist_mpps.services.dicom import decode_dataset
from worklist_mpps.services.study_mpps import (
    Step,
    aggregate_status,
    expected_instances,
    referenced_instances,
    signature,
    study_steps,
)

__all__ = ["METADATA", "OPEN_ORTHANC", "OrthancClient", "OrthancTarget", "referenced_instances"]

log = logging.getLogger("worklist_mpps.delivery.orthanc")

METADATA = {  # name -> what it holds; declare these as UserMetadata in orthanc.json
    "MppsStatus": "IN PROGRESS, COMPLETED or DISCONTINUED",
    "MppsInstanceUID": "SOP Instance UID of the MPPS",
    "MppsCompleteness": "complete, incomplete or checking",
    "MppsExpected": "number of instances the MPPS references",
    "MppsReceived": "how many of them Orthanc holds",
    "MppsMissing": "JSON list of the SOP Instance UIDs not in Orthanc",
    "MppsDiscontinuationReason": "code and meaning (CID 9300)",
    "MppsList": 'JSON list of every MPPS of the study: {"uid", "status"[, "reason"]}',
}
# written only in some states: removed when the aggregate no longer says them
STALE_ORDER = (
    "MppsCompleteness",  # first: nobody sees a state without its counts
    "MppsExpected",
    "MppsReceived",
    "MppsMissing",
    "MppsDiscontinuationReason",
)
LABELS = ("mpps-in-progress", "mpps-completed", "mpps-discontinued", "mpps-incomplete")
RECHECK_SECONDS = 15.0
_refusal_logged: set[str] = set()  # Orthanc URLs whose refusal was logged (once each)


class OrthancError(Exception):
    pass


class OrthancClient:
    """The few REST calls the hook needs."""

    def __init__(
        self, url: str, username: str = "", password: str = "", timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        if username:
            self.http.auth = (username, password)
        self.timeout = timeout
        self._system: dict | None = None
        self._access_ok = False

    def check_access(self) -> None:
        """Refuse (Retry, nothing sent) an Orthanc that answers other hosts with empty
        credentials (delivery/orthanc_access.py says how that is seen). Checked at first
        use; a refused Orthanc is checked again at each attempt (one GET), so once fixed
        it gets the waiting notifications. The refusal is logged once per URL at ERROR."""
        if self._access_ok:
            return
        try:
            verdict = open_to_anyone(self.url, self.http.verify, self.timeout)
        except requests.RequestException as exc:
            raise Retry(f"Orthanc unreachable: {exc.__class__.__name__}") from None
        shown = redact_url(self.url)
        if verdict is None:
            log.warning("Orthanc at %s: cannot probe whether it is open to other hosts", shown)
        if not verdict:
            if self.url in _refusal_logged:
                log.info("Orthanc at %s no longer accepts empty credentials", shown)
                _refusal_logged.discard(self.url)
            self._access_ok = True
            return
        if self.url not in _refusal_logged:
            _refusal_logged.add(self.url)
            log.error(
                "Orthanc at %s accepts empty credentials from other hosts (RemoteAccessAllowed "
                "true with AuthenticationEnabled false, or an empty user in RegisteredUsers, "
                "e.g. ORTHANC_USER/ORTHANC_PASSWORD unset): anyone on the network can read "
                "and change its studies. Nothing is delivered to it until it is fixed: "
                "register a user with a password (docs/deploy-debian.md) or set "
                "RemoteAccessAllowed false; notifications wait, nothing is lost",
                shown,
            )
        raise Retry(OPEN_ORTHANC)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.check_access()
        try:
            response = self.http.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise Retry(f"Orthanc unreachable: {exc.__class__.__name__}") from None
        if response.status_code in (401, 403):
            raise Retry(f"Orthanc refused the credentials (HTTP {response.status_code})")
        if response.status_code >= 500:
            raise Retry(f"Orthanc error HTTP {response.status_code}")
        return response

    def system(self) -> dict:
        if self._system is None:
            self._system = self._call("GET", "/system").json()
        return self._system

    @property
    def has_labels(self) -> bool:
        return bool(self.system().get("HasLabels"))

    def lookup(self, uid: str, kind: str) -> str | None:
        """Orthanc ID of the study or series with this UID."""
        found = self._call("POST", "/tools/lookup", data=uid).json()
        return next((r["ID"] for r in found if r.get("Type") == kind), None)

    def parent_study(self, series_id: str) -> str | None:
        response = self._call("GET", f"/series/{series_id}")
        return response.json().get("ParentStudy") if response.ok else None

    def sop_instance_uids(self, study_id: str) -> set[str]:
        response = self._call("GET", f"/studies/{study_id}/instances")
        if not response.ok:
            return set()
        return {i.get("MainDicomTags", {}).get("SOPInstanceUID") for i in response.json()}

    def set_metadata(self, study_id: str, name: str, value: str) -> None:
        response = self._call(
            "PUT", f"/studies/{study_id}/metadata/{name}", data=value.encode("utf-8")
        )
        if response.status_code == 404:
            raise Failed(
                f"Orthanc refused metadata {name!r} (HTTP 404): declare it in "
                "UserMetadata of orthanc.json (see orthanc/orthanc.json)"
            )
        if not response.ok:
            raise Retry(f"Orthanc metadata {name}: HTTP {response.status_code}")

    def study_uid(self, study_id: str) -> str:
        response = self._call("GET", f"/studies/{study_id}")
        return response.json().get("MainDicomTags", {}).get("StudyInstanceUID", "")

    def delete_metadata(self, study_id: str, names: list[str]) -> None:
        """Remove these metadata of the study where present."""
        if not names:
            return
        present = self._call("GET", f"/studies/{study_id}/metadata")
        held = set(present.json()) if present.ok else set(names)
        for name in names:
            if name in held:
                self._call("DELETE", f"/studies/{study_id}/metadata/{name}")

    def set_label(self, study_id: str, label: str) -> None:
        for other in LABELS:
            if other != label:
                self._call("DELETE", f"/studies/{study_id}/labels/{other}")
        self._call("PUT", f"/studies/{study_id}/labels/{label}")


class OrthancTarget:
    name = "orthanc"
    supersede = True  # Orthanc shows the latest state: an older pending one is dropped
    hold_after_failure = False  # a failed row does not hold the newer states

    def __init__(self, db: Database, config: Config, client: OrthancClient | None = None) -> None:
        self.db = db
        self.config = config
        self.client = client or OrthancClient(
            config.orthanc_url, config.orthanc_username, config.orthanc_password
        )

    @property
    def _recheck(self) -> float:
        """Seconds between looks for a study or for missing images."""
        return min(RECHECK_SECONDS, self.config.outbox_retry_max)

    def _studies(self, ds) -> list[tuple[str, str]]:  # noqa: ANN001
        """(Orthanc ID, Study Instance UID) of the studies the MPPS is about."""
        found: list[tuple[str, str]] = []
        for item in ds.get("ScheduledStepAttributesSequence") or []:
            uid = item.get("StudyInstanceUID")
            study = self.client.lookup(str(uid), "Study") if uid else None
            if study and study not in [f[0] for f in found]:
                found.append((study, str(uid)))
        if not found:  # the modality may have used a study UID of its own
            for series in ds.get("PerformedSeriesSequence") or []:
                series_id = self.client.lookup(str(series.SeriesInstanceUID), "Series")
                study = self.client.parent_study(series_id) if series_id else None
                if study and study not in [f[0] for f in found]:
                    found.append((study, self.client.study_uid(study)))
        return found

    def _steps(self, message: OutboxMessage, study_uids: list[str]) -> list[Step]:
        with self.db.read() as session:
            return study_steps(session, study_uids, message.mpps_uid)

    def deliver(self, message: OutboxMessage) -> str | None:
        """Write the aggregate of every MPPS of the study (services/study_mpps.py), so the
        study never shows merely whichever notification was delivered last."""
        with self.db.read() as session:
            record = session.scalars(
                select(MPPSTracking).where(MPPSTracking.sop_instance_uid == message.mpps_uid)
            ).one()
            ds = decode_dataset(record.dataset)
        found = self._studies(ds)
        if not found:
            if age_seconds(message) > self.config.orthanc_study_timeout:
                raise Failed(
                    "the study never appeared in Orthanc within "
                    f"{self.config.orthanc_study_timeout:g} s"
                )
            raise Retry("study not in Orthanc yet", after=self._recheck)
        studies = [f[0] for f in found]
        study_uids = [f[1] for f in found]
        steps = self._steps(message, study_uids)
        status = aggregate_status(s.status for s in steps)
        completeness = None
        if status == "COMPLETED":
            completeness = self._completeness(message, steps, studies)
        reasons = [s.reason for s in steps if s.reason and s.status == "DISCONTINUED"]
        # Written in this order: a reader who sees the new MppsStatus sees the list and
        # the reason of that state; one who sees the new MppsCompleteness (last) sees all.
        values = {
            # one MPPS: its UID; several: the one started last (all of them: MppsList)
            "MppsInstanceUID": steps[-1].uid,
            "MppsList": json.dumps(
                [
                    {"uid": s.uid, "status": s.status} | ({"reason": s.reason} if s.reason else {})
                    for s in steps
                ]
            ),
        }
        if status == "DISCONTINUED" and reasons:
            values["MppsDiscontinuationReason"] = "; ".join(dict.fromkeys(reasons))
        values["MppsStatus"] = status
        if completeness is not None:
            state, expected, missing = completeness
            values["MppsExpected"] = str(len(expected))
            values["MppsReceived"] = str(len(expected) - len(missing))
            values["MppsMissing"] = json.dumps(missing)
            # last: whoever sees the new state sees its counts and missing list too
            values["MppsCompleteness"] = state
        for study in studies:
            # what an earlier state left and the aggregate no longer says (e.g. the reason
            # of a step discontinued by mistake, once another one completed)
            stale = [n for n in STALE_ORDER if n not in values]
            self.client.delete_metadata(study, stale)
            for name, value in values.items():
                self.client.set_metadata(study, name, value)
            if self.client.has_labels:
                label = (
                    "mpps-incomplete"
                    if completeness and completeness[0] == "incomplete"
                    else "mpps-" + status.lower().replace(" ", "-")
                )
                self.client.set_label(study, label)
        if signature(self._steps(message, study_uids)) != signature(steps):
            # another step of the study changed while we wrote: write the new aggregate
            raise Retry("another MPPS of the study changed meanwhile", after=0)
        if completeness is not None and completeness[0] == "checking":
            raise Retry(
                f"{len(completeness[2])} of {len(completeness[1])} instances not in Orthanc yet",
                after=self._recheck,
            )
        note = f"study {', '.join(studies)} {status}"
        if len(steps) > 1:
            note += f" ({len(steps)} MPPS)"
        if completeness is not None:
            note += (
                f", {completeness[0]} {len(completeness[1]) - len(completeness[2])}"
                f"/{len(completeness[1])}"
            )
        return note

    def _completeness(
        self,
        message: OutboxMessage,
        steps: list[Step],
        studies: list[str],
    ) -> tuple[str, list[str], list[str]]:
        """(complete | checking | incomplete, expected UIDs, missing UIDs) of the study:
        expected is the union of what every final MPPS references. Each COMPLETED MPPS
        of the study gets its own figures in our database."""
        expected = expected_instances(steps)
        held: set[str] = set()
        for study in studies:
            held |= self.client.sop_instance_uids(study)
        missing = [uid for uid in expected if uid not in held]
        if not missing:
            state = "complete"
        elif age_seconds(message) < self.config.completeness_timeout:
            state = "checking"
        else:
            state = "incomplete"
        completed = {s.uid: s for s in steps if s.status == "COMPLETED"}
        with self.db.write() as session:
            for record in session.scalars(
                select(MPPSTracking).where(MPPSTracking.sop_instance_uid.in_(completed))
            ):
                own = [u for u in completed[record.sop_instance_uid].references if u not in held]
                record.completeness = state if own else "complete"
                record.received_count = len(completed[record.sop_instance_uid].references) - len(
                    own
                )
                record.missing_instances = own
                record.completeness_checked_at = utcnow()
        return state, expected, missing
