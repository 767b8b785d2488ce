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
- on COMPLETED the SOP Instance UIDs the MPPS references are compared with
  the instances Orthanc holds; expected / received / missing go to our
  database and to the study, re-checked until complete or
  ``completeness_timeout``.

Credentials come from the configuration and are never logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests
from pydicom import Dataset
from sqlalchemy import select

from worklist_mpps.config import Config
from worklist_mpps.db.engine import Database
from worklist_mpps.db.models import MPPSTracking, OutboxMessage, utcnow
from worklist_mpps.delivery.worker import Failed, Retry, age_seconds
from worklist_mpps.services.dicom import decode_dataset

log = logging.getLogger("worklist_mpps.delivery.orthanc")

METADATA = {  # name -> what it holds; declare these as UserMetadata in orthanc.json
    "MppsStatus": "IN PROGRESS, COMPLETED or DISCONTINUED",
    "MppsInstanceUID": "SOP Instance UID of the MPPS",
    "MppsCompleteness": "complete, incomplete or checking",
    "MppsExpected": "number of instances the MPPS references",
    "MppsReceived": "how many of them Orthanc holds",
    "MppsMissing": "JSON list of the SOP Instance UIDs not in Orthanc",
    "MppsDiscontinuationReason": "code and meaning (CID 9300)",
}
LABELS = ("mpps-in-progress", "mpps-completed", "mpps-discontinued", "mpps-incomplete")
RECHECK_SECONDS = 15.0


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

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
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

    def set_label(self, study_id: str, label: str) -> None:
        for other in LABELS:
            if other != label:
                self._call("DELETE", f"/studies/{study_id}/labels/{other}")
        self._call("PUT", f"/studies/{study_id}/labels/{label}")


def referenced_instances(ds) -> list[str]:  # noqa: ANN001
    """SOP Instance UIDs of every image and non-image the MPPS references."""
    uids = []
    for series in ds.get("PerformedSeriesSequence") or []:
        for keyword in (
            "ReferencedImageSequence",
            "ReferencedNonImageCompositeSOPInstanceSequence",
        ):
            uids += [
                str(r.ReferencedSOPInstanceUID)
                for r in series.get(keyword) or []
                if r.get("ReferencedSOPInstanceUID")
            ]
    return list(dict.fromkeys(uids))


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

    def _studies(self, ds) -> list[str]:  # noqa: ANN001
        """Orthanc IDs of the studies the MPPS is about."""
        found = []
        for item in ds.get("ScheduledStepAttributesSequence") or []:
            uid = item.get("StudyInstanceUID")
            study = self.client.lookup(str(uid), "Study") if uid else None
            if study and study not in found:
                found.append(study)
        if not found:  # the modality may have used a study UID of its own
            for series in ds.get("PerformedSeriesSequence") or []:
                series_id = self.client.lookup(str(series.SeriesInstanceUID), "Series")
                study = self.client.parent_study(series_id) if series_id else None
                if study and study not in found:
                    found.append(study)
        return found

    def deliver(self, message: OutboxMessage) -> str | None:
        with self.db.read() as session:
            record = session.scalars(
                select(MPPSTracking).where(MPPSTracking.sop_instance_uid == message.mpps_uid)
            ).one()
            status, reason = record.status, record.discontinuation_reason
            ds = decode_dataset(record.dataset)
        studies = self._studies(ds)
        if not studies:
            if age_seconds(message) > self.config.orthanc_study_timeout:
                raise Failed(
                    "the study never appeared in Orthanc within "
                    f"{self.config.orthanc_study_timeout:g} s"
                )
            raise Retry("study not in Orthanc yet", after=self._recheck)
        completeness = None
        if status == "COMPLETED":
            completeness = self._completeness(message, ds, studies)
        for study in studies:
            self.client.set_metadata(study, "MppsStatus", status)
            self.client.set_metadata(study, "MppsInstanceUID", message.mpps_uid)
            if reason:
                self.client.set_metadata(study, "MppsDiscontinuationReason", reason)
            if completeness is not None:
                state, expected, missing = completeness
                self.client.set_metadata(study, "MppsExpected", str(len(expected)))
                self.client.set_metadata(study, "MppsReceived", str(len(expected) - len(missing)))
                self.client.set_metadata(study, "MppsMissing", json.dumps(missing))
                # last: whoever sees the new state sees its counts and missing list too
                self.client.set_metadata(study, "MppsCompleteness", state)
            if self.client.has_labels:
                label = (
                    "mpps-incomplete"
                    if completeness and completeness[0] == "incomplete"
                    else "mpps-" + status.lower().replace(" ", "-")
                )
                self.client.set_label(study, label)
        if completeness is not None and completeness[0] == "checking":
            raise Retry(
                f"{len(completeness[2])} of {len(completeness[1])} instances not in Orthanc yet",
                after=self._recheck,
            )
        note = f"study {', '.join(studies)} {status}"
        if completeness is not None:
            note += (
                f", {completeness[0]} {len(completeness[1]) - len(completeness[2])}"
                f"/{len(completeness[1])}"
            )
        return note

    def _completeness(
        self,
        message: OutboxMessage,
        ds: Dataset,
        studies: list[str],
    ) -> tuple[str, list[str], list[str]]:
        """(complete | checking | incomplete, expected UIDs, missing UIDs), also stored."""
        expected = referenced_instances(ds)
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
        with self.db.write() as session:
            record = session.scalars(
                select(MPPSTracking).where(MPPSTracking.sop_instance_uid == message.mpps_uid)
            ).one()
            record.completeness = state
            record.received_count = len(expected) - len(missing)
            record.missing_instances = missing
            record.completeness_checked_at = utcnow()
        return state, expected, missing
