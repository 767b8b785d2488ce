"""SQLAlchemy 2 typed models.

One ``WorklistItem`` row is one Scheduled Procedure Step (PS3.4 K.6.1: each
C-FIND response carries one item of the Scheduled Procedure Step Sequence)
together with its Requested Procedure and Imaging Service Request attributes.
Empty DICOM values are stored as NULL, so SQL comparison never matches them
against a non-empty key (PS3.4 K.2.2.1.1.1 / C.2.2.2).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false

STEP_STATUSES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED")
FINAL_STATUSES = ("COMPLETED", "DISCONTINUED")


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """Times are stored as UTC; SQLite hands them back without their zone."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Patient(Base):
    """Patient Identification and Demographic modules (Table K.6-1)."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    # Case- and accent-folded name for Person Name matching (see matching.fold_pn).
    patient_name_folded: Mapped[str | None] = mapped_column(String(324), index=True)
    birth_date: Mapped[str | None] = mapped_column(String(8), index=True)
    sex: Mapped[str | None] = mapped_column(String(16), index=True)
    weight: Mapped[str | None] = mapped_column(String(16))
    medical_alerts: Mapped[str | None] = mapped_column(String(64), index=True)
    allergies: Mapped[str | None] = mapped_column(String(64), index=True)
    pregnancy_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    items: Mapped[list[WorklistItem]] = relationship(back_populates="patient")


class WorklistItem(Base):
    """One Scheduled Procedure Step with its Requested Procedure (PS3.4 K.6.1)."""

    __tablename__ = "worklist_items"
    __table_args__ = (
        UniqueConstraint("accession_number", "sps_id"),
        # The selective query of a modality: status + modality + station + start.
        Index(
            "ix_worklist_items_selective",
            "sps_status",
            "modality",
            "scheduled_station_ae_title",
            "sps_start",
        ),
        Index("ix_worklist_items_status_start", "sps_status", "sps_start"),
        Index("ix_worklist_items_status_start_utc", "sps_status", "sps_start_utc"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)

    # Imaging Service Request
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    # (0040,2016) / (0040,2017): ORC-2 / ORC-3 of the HL7 order (IHE RAD TF-2 4.4.4.1.2.1)
    placer_order_number: Mapped[str | None] = mapped_column(String(64), index=True)
    filler_order_number: Mapped[str | None] = mapped_column(String(64), index=True)
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    referring_physician_name_folded: Mapped[str | None] = mapped_column(String(324), index=True)
    requesting_physician: Mapped[str | None] = mapped_column(String(324))
    requesting_physician_folded: Mapped[str | None] = mapped_column(String(324), index=True)
    # Requested Procedure
    requested_procedure_id: Mapped[str | None] = mapped_column(String(16), index=True)
    requested_procedure_description: Mapped[str | None] = mapped_column(String(64), index=True)
    requested_procedure_priority: Mapped[str | None] = mapped_column(String(16), index=True)
    requested_procedure_codes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    # Visit
    admission_id: Mapped[str | None] = mapped_column(String(64), index=True)
    current_patient_location: Mapped[str | None] = mapped_column(String(64), index=True)
    # Scheduled Procedure Step
    sps_id: Mapped[str | None] = mapped_column(String(16), index=True)
    sps_description: Mapped[str | None] = mapped_column(String(64), index=True)
    sps_status: Mapped[str] = mapped_column(String(16), default="SCHEDULED", index=True)
    # why the step was discontinued (a cancel's reason, HL7 ORC-16); None otherwise
    status_reason: Mapped[str | None] = mapped_column(String(250))
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    scheduled_station_ae_title: Mapped[str | None] = mapped_column(String(16), index=True)
    scheduled_station_name: Mapped[str | None] = mapped_column(String(16), index=True)
    sps_location: Mapped[str | None] = mapped_column(String(16), index=True)
    sps_start_date: Mapped[str | None] = mapped_column(String(8), index=True)
    sps_start_time: Mapped[str | None] = mapped_column(String(6), index=True)
    # YYYYMMDDHHMMSS, for combined date+time range matching (PS3.4 C.2.2.2.5.1).
    sps_start: Mapped[str | None] = mapped_column(String(14), index=True)
    # The same instant in UTC, for queries carrying Timezone Offset From UTC (0008,0201):
    # dates and times above are the server's local time (timezone_offset; PS3.3 C.12.1.1.8)
    sps_start_utc: Mapped[str | None] = mapped_column(String(14), index=True)
    scheduled_performing_physician_name: Mapped[str | None] = mapped_column(String(324))
    scheduled_performing_physician_name_folded: Mapped[str | None] = mapped_column(
        String(324), index=True
    )
    scheduled_protocol_codes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    pre_medication: Mapped[str | None] = mapped_column(String(64), index=True)
    requested_contrast_agent: Mapped[str | None] = mapped_column(String(64), index=True)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    patient: Mapped[Patient] = relationship(back_populates="items")
    mpps: Mapped[list[MPPSTracking]] = relationship(
        secondary="mpps_worklist_links", back_populates="worklist_items"
    )


mpps_worklist_links = Table(
    "mpps_worklist_links",
    Base.metadata,
    Column("mpps_pk", ForeignKey("mpps.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "item_pk", ForeignKey("worklist_items.id", ondelete="CASCADE"), primary_key=True, index=True
    ),
)


class MPPSTracking(Base):
    """One Modality Performed Procedure Step (PS3.4 Annex F).

    ``dataset`` holds the whole attribute list as DICOM (Explicit VR Little
    Endian, with its Specific Character Set); the other columns are indexed
    copies for listing and linking.
    """

    __tablename__ = "mpps"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    station_ae_title: Mapped[str | None] = mapped_column(String(16), index=True)
    pps_id: Mapped[str | None] = mapped_column(String(16))
    # start and end in the server's local time (comparable with the worklist's); the
    # data set keeps them as sent, with its Timezone Offset From UTC (0008,0201) if any,
    # which is copied here (PS3.3 C.12.1.1.8: it applies to every date and time)
    start_datetime: Mapped[str | None] = mapped_column(String(14), index=True)
    end_datetime: Mapped[str | None] = mapped_column(String(14), index=True)
    timezone_offset: Mapped[str | None] = mapped_column(String(5))
    series_count: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    discontinuation_reason: Mapped[str | None] = mapped_column(String(64))
    # Completeness against the PACS (Orthanc): complete | incomplete | checking
    completeness: Mapped[str | None] = mapped_column(String(16))
    received_count: Mapped[int | None] = mapped_column(Integer)
    missing_instances: Mapped[list[str] | None] = mapped_column(JSON)
    completeness_checked_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), index=True
    )
    dataset: Mapped[bytes] = mapped_column(LargeBinary)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    # made by worklist-mpps from a stable study in Orthanc, for a modality that sends no
    # MPPS (services/witness.py; README "Orthanc as witness"), not received from one
    emulated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Incremented on every change; used for optimistic checks and ordering.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    worklist_items: Mapped[list[WorklistItem]] = relationship(
        secondary="mpps_worklist_links", back_populates="mpps"
    )


class AppState(Base):
    """Small key/value facts about this database (e.g. sample data loaded once)."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(String(255))


class Heartbeat(Base):
    """The one row the health probe updates (health.py): proof that the database takes a
    committed write. Several instances on one database update the same row."""

    __tablename__ = "heartbeat"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    beats: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    instance: Mapped[str | None] = mapped_column(String(120))


OUTBOX_STATES = ("pending", "delivered", "failed", "superseded")


class OutboxMessage(Base):
    """A notification of an MPPS change for one target, written in the change's transaction.

    Delivered by the outbox worker in id order per (target, MPPS instance), with
    retry and backoff; ``claimed_until`` lets several server processes share the
    table without delivering a row twice at once.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_target_mpps_id", "target", "mpps_uid", "id"),
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(80))
    mpps_uid: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))  # N-CREATE | N-SET
    pps_status: Mapped[str] = mapped_column(String(16))  # status after the change
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)  # the request's attributes
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


HL7_ACK_CODES = ("AA", "AE", "AR")


class HL7Message(Base):
    """One HL7 v2 message received on the order feed, with the ACK it got.

    Written in the transaction of the change it made (AA), or alone when nothing was
    applied (AE, AR). (sender, MSH-10) is unique among processed messages: a message
    resent after a lost ACK finds its row and gets the same ACK, with no second effect
    (HL7 v2.5.1 2.10.2: the receiver's duplicate detection by Message Control ID).
    """

    __tablename__ = "hl7_messages"
    __table_args__ = (
        UniqueConstraint("sending_application", "sending_facility", "control_id"),
        Index("ix_hl7_messages_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    address: Mapped[str | None] = mapped_column(String(128))
    sending_application: Mapped[str] = mapped_column(String(180), default="")  # MSH-3
    sending_facility: Mapped[str] = mapped_column(String(180), default="")  # MSH-4
    # MSH-10; NULL for input that had no readable MSH (never a duplicate of anything)
    control_id: Mapped[str | None] = mapped_column(String(199))
    message_type: Mapped[str | None] = mapped_column(String(40), index=True)  # MSH-9
    version: Mapped[str | None] = mapped_column(String(20))  # MSH-12
    order_control: Mapped[str | None] = mapped_column(String(40))  # ORC-1 values
    placer_order_number: Mapped[str | None] = mapped_column(String(64), index=True)
    filler_order_number: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    ack_code: Mapped[str] = mapped_column(String(2), index=True)  # AA | AE | AR
    error: Mapped[str | None] = mapped_column(String(500))  # why AE/AR
    item_ids: Mapped[list[int] | None] = mapped_column(JSON)  # the worklist items touched
    raw: Mapped[bytes] = mapped_column(LargeBinary)  # the message as received
    ack: Mapped[bytes] = mapped_column(LargeBinary)  # the ACK as sent, without MLLP framing


class AuditEvent(Base):
    """Who changed what, and when: written in the transaction of the change."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_target_at", "target", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    channel: Mapped[str] = mapped_column(String(16))  # DIMSE | HTTP | CLI
    actor: Mapped[str] = mapped_column(String(128), index=True)  # calling AE / HTTP user
    address: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(String(80))  # MPPS UID, item or patient id
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class WebSession(Base):
    """A login of the operator page (services/web_sessions.py). The cookie carries a random
    token; only its SHA-256 is stored, so a copy of the database logs nobody in. Several
    instances on one database share the sessions."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(128))
    csrf: Mapped[str] = mapped_column(String(64))  # the token every form post carries
    address: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class StationQuery(Base):
    """The last Modality Worklist query of each calling AE title (the Problems view's
    "which stations queried when"): when, from where, to which called AE, how many items
    it got and its final status (PS3.4 K.4.1.3: 0x0000, 0xA700, 0xA900, 0xC000 ...)."""

    __tablename__ = "station_queries"

    calling_ae_title: Mapped[str] = mapped_column(String(16), primary_key=True)
    called_ae_title: Mapped[str | None] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(128))
    last_query_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_matches: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int] = mapped_column(Integer, default=0)
    query_count: Mapped[int] = mapped_column(Integer, default=0)


class Lease(Base):
    """A job that one instance at a time runs when several share the database (the Orthanc
    change feed, the expiry and purge timer): held by ``holder`` until ``until``, then
    anyone's (services/leases.py)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


STUDY_STATES = ("unmatched", "matched", "emulated", "linked")


class OrthancStudy(Base):
    """A stable study seen in Orthanc's change feed (``StableStudy``), with what the
    reconciliation made of it: ``matched`` to an item (by Study Instance UID or Accession
    Number), ``emulated`` (an MPPS was made from it), ``linked`` by hand, or
    ``unmatched`` (a study without an order: listed for the PACS administrator)."""

    __tablename__ = "orthanc_studies"

    orthanc_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    modalities: Mapped[str | None] = mapped_column(String(64))
    series_count: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), index=True)
    item_pk: Mapped[int | None] = mapped_column(
        ForeignKey("worklist_items.id", ondelete="SET NULL"), index=True
    )
    change_seq: Mapped[int] = mapped_column(Integer)  # the /changes Seq it came with
    stable_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
