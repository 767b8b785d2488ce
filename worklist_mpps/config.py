"""One configuration object, loaded from YAML, then environment, then CLI flags.

Precedence (highest last): dataclass defaults < YAML file (``--config``) <
environment variables ``WORKLIST_MPPS_<KEY>`` < command-line flags ``--<key>``.
A key that does not exist or a value of the wrong type fails at start with a
message naming the key.

Over 400 lines: every setting, its documented default, help text and validation live in
this one object, so that YAML, environment, flags and `config` output cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "WORKLIST_MPPS_"
DEFAULT_SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "worklist.yaml"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


# Off loopback a bearer token or password shorter than this is refused: guessable
MIN_SECRET_LENGTH = 16
MASK = "********"
# the password part of a URL's userinfo (scheme://user:PASSWORD@host): never shown. Up to
# the last "@": a password pasted without percent-encoding may hold "@", "/" or ":".
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)\S*(?=@)")


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it masked (database_url, orthanc_url)."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


@dataclass(frozen=True)
class ForwardPeer:
    """A downstream Performed Procedure Step Manager (RIS, PACS) MPPS is forwarded to."""

    name: str
    host: str
    port: int
    ae_title: str = "ANY-SCP"  # called AE title
    enabled: bool = True

    @classmethod
    def parse(cls, value: Any, where: str) -> ForwardPeer:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: each peer is a mapping name/host/port/ae_title/enabled")
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        try:
            peer = cls(
                name=str(value["name"]),
                host=str(value["host"]),
                port=int(value["port"]),
                ae_title=str(value.get("ae_title", "ANY-SCP")),
                enabled=_coerce_bool(value.get("enabled", True)),
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not peer.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}: name {peer.name!r}: letters, digits, - and _ only")
        if not (1 <= peer.port <= 65535) or not (1 <= len(peer.ae_title) <= 16):
            raise ConfigError(f"{where}: port 1..65535 and an AE title of 1 to 16 characters")
        return peer


SERVICES = ("worklist", "mpps")


@dataclass(frozen=True)
class Device:
    """A known device: its AE title, the addresses it may call from, its services."""

    ae_title: str
    hosts: tuple[str, ...] = ()  # IP addresses or networks (CIDR); empty: any address
    services: tuple[str, ...] = SERVICES

    @classmethod
    def parse(cls, value: Any, where: str) -> Device:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: each device is a mapping ae_title/hosts/services")
        unknown = set(value) - {"ae_title", "hosts", "services"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        title = str(value.get("ae_title", "")).strip()
        if not 1 <= len(title) <= 16:
            raise ConfigError(f"{where}: ae_title of 1 to 16 characters is required")
        hosts = _hosts(value.get("hosts"), where)
        services = value.get("services", list(SERVICES))
        if isinstance(services, str):
            services = [services]
        for service in services:
            if service not in SERVICES:
                raise ConfigError(f"{where}: service {service!r}: one of {', '.join(SERVICES)}")
        return cls(title, hosts, tuple(services))

    def allows_address(self, address: str) -> bool:
        return not self.hosts or _address_in(address, self.hosts)


def _hosts(value: Any, where: str) -> tuple[str, ...]:
    hosts = value or []
    if isinstance(hosts, str):
        hosts = [hosts]
    for host in hosts:
        try:
            ipaddress.ip_network(str(host), strict=False)
        except ValueError:
            raise ConfigError(f"{where}: host {host!r} is not an IP address or network") from None
    return tuple(str(h) for h in hosts)


def _address_in(address: str, hosts: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(h, strict=False) for h in hosts)


@dataclass(frozen=True)
class HL7Sender:
    """A system allowed to send orders: MSH-3 Sending Application, MSH-4 Sending Facility
    (empty: any) and the addresses it may connect from (empty: any)."""

    application: str
    facility: str = ""
    hosts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any, where: str) -> HL7Sender:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: each sender is a mapping application/facility/hosts")
        unknown = set(value) - {"application", "facility", "hosts"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        application = str(value.get("application") or "").strip()
        if not application:
            raise ConfigError(f"{where}: application (MSH-3) is required")
        facility = str(value.get("facility") or "").strip()
        return cls(application, facility, _hosts(value.get("hosts"), where))

    def allows(self, application: str, facility: str, address: str) -> bool:
        """MSH-3 (and MSH-4 when set) match, compared on their first component (HD.1)."""
        return (
            application.split("^")[0] == self.application.split("^")[0]
            and (not self.facility or facility.split("^")[0] == self.facility.split("^")[0])
            and (not self.hosts or _address_in(address, self.hosts))
        )


HL7_STATUS_FORMATS = ("ORM^O01", "OMI^O23")


@dataclass(frozen=True)
class HL7Destination:
    """An order placer (RIS) that gets the procedure status back over MLLP."""

    name: str
    host: str
    port: int
    format: str = "ORM^O01"  # or OMI^O23
    version: str = ""  # MSH-12; empty: 2.3.1 for ORM^O01, 2.5.1 for OMI^O23
    application: str = ""  # MSH-5 Receiving Application
    facility: str = ""  # MSH-6 Receiving Facility
    enabled: bool = True

    @classmethod
    def parse(cls, value: Any, where: str) -> HL7Destination:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: each destination is a mapping name/host/port/format")
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        try:
            dest = cls(
                name=str(value["name"]),
                host=str(value["host"]),
                port=int(value["port"]),
                format=str(value.get("format") or "ORM^O01").upper(),
                version=str(value.get("version") or ""),
                application=str(value.get("application") or ""),
                facility=str(value.get("facility") or ""),
                enabled=_coerce_bool(value.get("enabled", True)),
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not dest.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}: name {dest.name!r}: letters, digits, - and _ only")
        if not 1 <= dest.port <= 65535:
            raise ConfigError(f"{where}: port 1..65535")
        if dest.format not in HL7_STATUS_FORMATS:
            raise ConfigError(f"{where}: format {dest.format!r}: one of ORM^O01, OMI^O23")
        if dest.version and dest.version not in HL7_VERSIONS:
            raise ConfigError(
                f"{where}: version {dest.version!r}: one of {', '.join(HL7_VERSIONS)}"
            )
        return dest

    @property
    def hl7_version(self) -> str:
        return self.version or ("2.5.1" if self.format == "OMI^O23" else "2.3.1")


HL7_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6")
# the targets of hl7_field_map: the worklist attributes an order fills (README mapping table)
HL7_MAPPED_FIELDS = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "birth_date",
    "sex",
    "placer_order_number",
    "filler_order_number",
    "accession_number",
    "requested_procedure_id",
    "sps_id",
    "modality",
    "scheduled_station_ae_title",
    "sps_start",
    "requested_procedure_code",
    "requested_procedure_description",
    "requesting_physician",
    "referring_physician_name",
    "study_instance_uid",
    "requested_procedure_priority",
    "admission_id",
    "current_patient_location",
    "sps_description",
)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass
class Config:
    """Every setting of the server, with its documented default (see README)."""

    ae_title: str = field(default="WORKLISTS", metadata={"help": "AE title of the server"})
    port: int = field(default=5243, metadata={"help": "DICOM port"})
    bind: str = field(
        default="127.0.0.1",
        metadata={"help": "address the DICOM ports bind to (non-loopback needs devices)"},
    )
    database_url: str = field(
        default="sqlite:///data/worklist.db",
        metadata={"help": "SQLAlchemy URL; the default is a SQLite file under ./data/"},
    )
    database_password_file: str = field(
        default="",
        metadata={
            "help": "file holding the database password (Docker/systemd "
            "secret), put into database_url",
            "secret_file": "database_url",
        },
    )
    auto_migrate: bool | None = field(
        default=None,
        metadata={"help": "upgrade the schema at start; default: yes for SQLite, no otherwise"},
    )
    sqlite_synchronous: str = field(
        default="FULL", metadata={"help": "SQLite synchronous pragma (FULL, NORMAL)"}
    )
    load_sample_data: bool = field(
        default=True, metadata={"help": "load sample_file on first start (empty database)"}
    )
    sample_file: str = field(
        default=str(DEFAULT_SAMPLE), metadata={"help": "YAML worklist loaded on first start"}
    )
    uid_prefix: str = field(
        default="", metadata={"help": "root for generated UIDs; empty: UUID-derived 2.25.x"}
    )
    worklist_default_statuses: list[str] = field(
        default_factory=lambda: ["SCHEDULED", "IN PROGRESS"],
        metadata={"help": "step statuses returned when a query does not ask for a status"},
    )
    worklist_expire_after: float = field(
        default=0.0,
        metadata={
            "help": "days after its start a SCHEDULED step is DISCONTINUED (reason "
            "'expired'); 0: never"
        },
    )
    worklist_retention_days: float = field(
        default=0.0,
        metadata={"help": "days after it ended a finished step and its MPPS are deleted; 0: kept"},
    )
    lifecycle_interval: float = field(
        default=60.0, metadata={"help": "seconds between two expiry and purge passes"}
    )
    timezone_offset: str = field(
        default="",
        metadata={
            "help": "the server's Timezone Offset From UTC (0008,0201), +HHMM or -HHMM; "
            "empty: the machine's"
        },
    )
    worklist_filter_by_calling_ae: bool = field(
        default=False,
        metadata={"help": "return only items whose Scheduled Station AE Title is the caller's"},
    )
    devices: list[Device] = field(
        default_factory=list,
        metadata={"help": "known devices: ae_title, hosts, services; empty: any caller"},
    )
    require_called_ae_title: bool | None = field(
        default=None,
        metadata={
            "help": "reject a Called AE Title other than ae_title; default: yes "
            "when devices are configured"
        },
    )
    orthanc_url: str = field(
        default="", metadata={"help": "Orthanc REST API base URL; empty: no Orthanc hook"}
    )
    orthanc_username: str = field(default="", metadata={"help": "Orthanc user (basic auth)"})
    orthanc_password: str = field(
        default="", metadata={"help": "Orthanc password (never logged)", "secret": True}
    )
    orthanc_password_file: str = field(
        default="",
        metadata={
            "help": "file holding orthanc_password (Docker/systemd secret)",
            "secret_file": "orthanc_password",
        },
    )
    orthanc_study_timeout: float = field(
        default=21600.0,
        metadata={"help": "seconds to wait for an MPPS's study to appear in Orthanc"},
    )
    completeness_timeout: float = field(
        default=3600.0,
        metadata={"help": "seconds to re-check that every referenced image reached Orthanc"},
    )
    orthanc_emulate_mpps: bool = field(
        default=False,
        metadata={
            "help": "complete a step from its stable study in Orthanc when no MPPS came "
            "(modalities without MPPS; README: Orthanc as witness)"
        },
    )
    orthanc_emulate_mpps_delay: float = field(
        default=600.0,
        metadata={"help": "seconds after the study became stable to wait for a real MPPS"},
    )
    orthanc_match_by: str = field(
        default="study_instance_uid",
        metadata={
            "help": "how a stable study finds its item: study_instance_uid or accession_number"
        },
    )
    orthanc_changes_interval: float = field(
        default=5.0, metadata={"help": "seconds between two reads of Orthanc's /changes"}
    )
    forward_peers: list[ForwardPeer] = field(
        default_factory=list,
        metadata={"help": "downstream MPPS peers: name, host, port, ae_title, enabled"},
    )
    outbox_retry_min: float = field(
        default=2.0, metadata={"help": "first retry delay of a failed delivery (s)"}
    )
    outbox_retry_max: float = field(
        default=300.0, metadata={"help": "longest retry delay (s), doubling up to it"}
    )
    http_enabled: bool = field(
        default=True, metadata={"help": "serve DICOMweb, the REST API and /healthz"}
    )
    http_port: int = field(default=5244, metadata={"help": "HTTP port"})
    http_bind: str = field(
        default="127.0.0.1",
        metadata={"help": "address the HTTP port binds to (non-loopback needs authentication)"},
    )
    http_token: str = field(
        default="", metadata={"help": "bearer token required on HTTP (empty: none)", "secret": True}
    )
    http_token_file: str = field(
        default="",
        metadata={
            "help": "file holding http_token (Docker/systemd secret)",
            "secret_file": "http_token",
        },
    )
    http_username: str = field(default="", metadata={"help": "HTTP basic auth user"})
    http_password: str = field(
        default="", metadata={"help": "HTTP basic auth password", "secret": True}
    )
    http_password_file: str = field(
        default="",
        metadata={
            "help": "file holding http_password (Docker/systemd secret)",
            "secret_file": "http_password",
        },
    )
    tls_port: int = field(
        default=0, metadata={"help": "DICOM TLS port beside the plain one (0: no TLS)"}
    )
    tls_certificate: str = field(default="", metadata={"help": "server certificate (PEM)"})
    tls_private_key: str = field(default="", metadata={"help": "its private key (PEM)"})
    tls_ca_certificates: str = field(
        default="", metadata={"help": "CA certificates (PEM) that client certificates chain to"}
    )
    tls_require_client_certificate: bool = field(
        default=False, metadata={"help": "refuse TLS clients without a valid certificate"}
    )
    max_associations: int = field(default=32, metadata={"help": "concurrent associations"})
    network_timeout: float = field(
        default=60.0, metadata={"help": "an idle or stalled association is dropped after (s)"}
    )
    acse_timeout: float = field(
        default=10.0, metadata={"help": "a connection must request an association within (s)"}
    )
    dimse_timeout: float = field(
        default=60.0, metadata={"help": "wait for a DIMSE message at most (s)"}
    )
    max_pdu_size: int = field(
        default=16382, metadata={"help": "largest PDU received (bytes; 0: unlimited)"}
    )
    max_message_size: int = field(
        default=16 * 1024 * 1024,
        metadata={
            "help": "largest DIMSE message (command and data set) received (bytes; "
            "larger ones get 0x0213/0xA700 unread; 0: unlimited)"
        },
    )
    handshake_timeout: float = field(
        default=5.0,
        metadata={"help": "a connection must complete TLS and its A-ASSOCIATE-RQ within (s)"},
    )
    dimse_fast_path: bool = field(
        default=True,
        metadata={
            "help": "event-driven association threads and direct C-FIND response "
            "encoding (false: pynetdicom's own polling reactors and encoding; "
            "the protective limits apply either way)"
        },
    )
    max_pending_connections: int = field(
        default=64,
        metadata={"help": "connections not yet associated, beside max_associations (0: unlimited)"},
    )
    max_connections_per_address: int = field(
        default=16, metadata={"help": "connections from one source address (0: unlimited)"}
    )
    max_find_results: int = field(
        default=5000, metadata={"help": "a C-FIND matching more is refused with 0xA700 (0: no cap)"}
    )
    shutdown_grace: float = field(
        default=30.0, metadata={"help": "on SIGTERM, wait this long for associations (s)"}
    )
    http_max_body: int = field(
        default=10_000_000, metadata={"help": "largest HTTP request body (bytes)"}
    )
    http_allowed_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Host header names served besides localhost, 127.0.0.1, [::1] and "
            "the http_bind address (other Hosts: 421)"
        },
    )
    http_cors_origins: list[str] = field(
        default_factory=list,
        metadata={
            "help": "browser origins (scheme://host[:port]) allowed cross-origin "
            "requests; empty: cross-origin writes are refused (403)"
        },
    )
    http_header_timeout: float = field(
        default=10.0, metadata={"help": "an HTTP client must send its request head within (s)"}
    )
    http_body_timeout: float = field(
        default=60.0,
        metadata={"help": "an HTTP client must send its request body within (s of its head)"},
    )
    http_max_connections: int = field(
        default=1000,
        metadata={
            "help": "concurrent HTTP connections (beyond: the oldest "
            "one still sending its head is dropped)"
        },
    )
    http_session_hours: float = field(
        default=12.0,
        metadata={"help": "an operator page login lasts this long (hours; one shift)"},
    )
    ui_refresh_seconds: float = field(
        default=5.0,
        metadata={"help": "the operator page asks for changed rows this often (s)"},
    )
    orthanc_explorer_url: str = field(
        default="",
        metadata={
            "help": "Orthanc Explorer 2 base URL as a browser reaches it (the page links "
            "studies there); empty: no links"
        },
    )
    hl7_enabled: bool = field(
        default=False, metadata={"help": "receive HL7 v2 orders over MLLP (README: order feed)"}
    )
    hl7_port: int = field(default=2575, metadata={"help": "MLLP port of the order feed"})
    hl7_bind: str = field(
        default="127.0.0.1",
        metadata={"help": "address the MLLP port binds to (non-loopback needs hl7_senders)"},
    )
    hl7_senders: list[HL7Sender] = field(
        default_factory=list,
        metadata={
            "help": "systems allowed to send orders: application (MSH-3), facility "
            "(MSH-4), hosts; empty: any sender (loopback only)"
        },
    )
    hl7_max_message_size: int = field(
        default=1_048_576, metadata={"help": "largest HL7 message received (bytes)"}
    )
    hl7_idle_timeout: float = field(
        default=60.0,
        metadata={"help": "an MLLP connection silent, or stalled mid-message, this long is closed"},
    )
    hl7_max_connections: int = field(
        default=32, metadata={"help": "concurrent MLLP connections (beyond: refused)"}
    )
    hl7_application: str = field(
        default="WORKLIST-MPPS",
        metadata={"help": "our MSH-3 Sending Application in ACKs and status messages"},
    )
    hl7_facility: str = field(
        default="", metadata={"help": "our MSH-4 Sending Facility in ACKs and status messages"}
    )
    hl7_default_charset: str = field(
        default="",
        metadata={
            "help": "character set of messages whose MSH-18 is empty but whose bytes are "
            "not ASCII (e.g. 8859/1, UNICODE UTF-8); empty: such messages are refused"
        },
    )
    hl7_field_map: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "per-site mapping overrides: worklist field -> HL7 location(s), "
            "e.g. {accession_number: OBR-3} (README mapping table)"
        },
    )
    hl7_procedure_modalities: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "procedure code (OBR-4.1) -> modality, used when OBR-24 is empty"},
    )
    hl7_destinations: list[HL7Destination] = field(
        default_factory=list,
        metadata={
            "help": "order placers that get the procedure status back: name, host, port, "
            "format (ORM^O01 or OMI^O23), version, application, facility, enabled"
        },
    )
    hl7_ack_timeout: float = field(
        default=30.0, metadata={"help": "wait this long for a destination's ACK (s)"}
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})

    def validate(self) -> None:
        """Check values that have a type but also a range."""
        if not (1 <= len(self.ae_title.strip()) <= 16):
            raise ConfigError(f"ae_title: must be 1 to 16 characters, got {self.ae_title!r}")
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"port: must be 0..65535, got {self.port}")
        if self.max_associations < 1:
            raise ConfigError(f"max_associations: must be >= 1, got {self.max_associations}")
        for name in (
            "network_timeout",
            "acse_timeout",
            "dimse_timeout",
            "shutdown_grace",
            "handshake_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in (
            "max_pdu_size",
            "max_find_results",
            "http_max_body",
            "max_message_size",
            "max_pending_connections",
            "max_connections_per_address",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level: unknown level {self.log_level!r}")
        for name in (
            "orthanc_study_timeout",
            "completeness_timeout",
            "outbox_retry_min",
            "outbox_retry_max",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.orthanc_url and not self.orthanc_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"orthanc_url: must start with http:// or https://, got {self.orthanc_url!r}"
            )
        if not (0 <= self.tls_port <= 65535):
            raise ConfigError(f"tls_port: must be 0..65535, got {self.tls_port}")
        if self.tls_port:
            for name in ("tls_certificate", "tls_private_key"):
                if not getattr(self, name):
                    raise ConfigError(f"{name}: required with tls_port")
            for name in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
                value = getattr(self, name)
                if value and not Path(value).is_file():
                    raise ConfigError(f"{name}: no such file {value!r}")
            if self.tls_require_client_certificate and not self.tls_ca_certificates:
                raise ConfigError("tls_require_client_certificate: needs tls_ca_certificates")
        if not (0 <= self.http_port <= 65535):
            raise ConfigError(f"http_port: must be 0..65535, got {self.http_port}")
        if self.http_header_timeout <= 0:
            raise ConfigError(f"http_header_timeout: must be > 0, got {self.http_header_timeout}")
        if self.http_body_timeout <= 0:
            raise ConfigError(f"http_body_timeout: must be > 0, got {self.http_body_timeout}")
        if not (0 < self.http_session_hours <= 24 * 30):
            raise ConfigError(
                f"http_session_hours: must be > 0 and at most 720, got {self.http_session_hours}"
            )
        if not (1 <= self.ui_refresh_seconds <= 3600):
            raise ConfigError(f"ui_refresh_seconds: must be 1..3600, got {self.ui_refresh_seconds}")
        if self.orthanc_explorer_url and not self.orthanc_explorer_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(
                "orthanc_explorer_url: must start with http:// or https://, "
                f"got {self.orthanc_explorer_url!r}"
            )
        if self.http_max_connections < 1:
            raise ConfigError(
                f"http_max_connections: must be >= 1, got {self.http_max_connections}"
            )
        for host in self.http_allowed_hosts:
            if not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host):
                raise ConfigError(
                    f"http_allowed_hosts: {host!r} is not a host name or address "
                    "(no port; IPv6 in brackets)"
                )
        for origin in self.http_cors_origins:
            if not re.fullmatch(
                r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?", origin
            ):
                raise ConfigError(
                    f"http_cors_origins: {origin!r} is not an origin "
                    "(scheme://host[:port], no path, no '*')"
                )
        if bool(self.http_username) != bool(self.http_password):
            raise ConfigError("http_username and http_password: give both or neither")
        if self.http_enabled and not self.http_auth_configured and not is_loopback(self.http_bind):
            raise ConfigError(
                f"http_bind: {self.http_bind!r} is not a loopback address: set http_token "
                "or http_username/http_password (authentication is required off loopback)"
            )
        if self.http_enabled and not is_loopback(self.http_bind):
            for name in ("http_token", "http_password"):
                if 0 < len(getattr(self, name)) < MIN_SECRET_LENGTH:
                    raise ConfigError(
                        f"{name}: at least {MIN_SECRET_LENGTH} characters when http_bind "
                        f"({self.http_bind}) is not loopback (got {len(getattr(self, name))})"
                    )
        if not self.devices and not is_loopback(self.bind):
            # DICOM's only proof of who calls is the AE title and the address (PS3.8 7.1.1:
            # the A-ASSOCIATE-RQ carries no credentials): off loopback, name the callers
            raise ConfigError(
                f"bind: {self.bind!r} is not a loopback address: list the modalities allowed "
                "to call in devices (ae_title, hosts, services); the worklist answers with "
                "patient data and DICOM has no authentication of its own"
            )
        self._validate_hl7()
        if self.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite_synchronous: unknown value {self.sqlite_synchronous!r}")
        from worklist_mpps.db.models import (
            STEP_STATUSES,  # late import: models import nothing from here
        )

        if self.orthanc_match_by not in ("study_instance_uid", "accession_number"):
            raise ConfigError(
                "orthanc_match_by: study_instance_uid or accession_number, "
                f"got {self.orthanc_match_by!r}"
            )
        for name in (
            "orthanc_emulate_mpps_delay",
            "worklist_expire_after",
            "worklist_retention_days",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("orthanc_changes_interval", "lifecycle_interval"):
            if not (0 < getattr(self, name) <= 86400):
                raise ConfigError(
                    f"{name}: must be > 0 and at most 86400, got {getattr(self, name)}"
                )
        if self.timezone_offset and not re.fullmatch(
            r"[+-](0\d|1[0-4])[0-5]\d", self.timezone_offset
        ):
            raise ConfigError(
                f"timezone_offset: +HHMM or -HHMM (PS3.5 Table 6.2-1 DT), got "
                f"{self.timezone_offset!r}"
            )
        for status in self.worklist_default_statuses:
            if status not in STEP_STATUSES:
                raise ConfigError(
                    f"worklist_default_statuses: unknown status {status!r} "
                    f"(one of {', '.join(STEP_STATUSES)})"
                )

    def _validate_hl7(self) -> None:
        if not (0 <= self.hl7_port <= 65535):
            raise ConfigError(f"hl7_port: must be 0..65535, got {self.hl7_port}")
        for name in ("hl7_idle_timeout", "hl7_ack_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("hl7_max_message_size", "hl7_max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hl7_enabled and not self.hl7_senders and not is_loopback(self.hl7_bind):
            raise ConfigError(
                f"hl7_bind: {self.hl7_bind!r} is not a loopback address: list the systems "
                "allowed to send orders in hl7_senders (MLLP has no authentication of its own)"
            )
        for key in self.hl7_field_map:
            if key not in HL7_MAPPED_FIELDS:
                raise ConfigError(
                    f"hl7_field_map: unknown field {key!r} (one of {', '.join(HL7_MAPPED_FIELDS)})"
                )
        for key, where in self.hl7_field_map.items():
            for location in where.split(","):
                if not re.fullmatch(r"[A-Z][A-Z0-9]{2}-\d+(\.\d+){0,2}", location.strip()):
                    raise ConfigError(
                        f"hl7_field_map: {key}: {location.strip()!r} is not an HL7 location "
                        "such as OBR-3 or ORC-7.4 (several: comma-separated, first non-empty wins)"
                    )
        if self.hl7_default_charset:
            from worklist_mpps.hl7_charsets import python_codec  # late: config is light

            if python_codec(self.hl7_default_charset) is None:
                raise ConfigError(
                    f"hl7_default_charset: unknown HL7 character set {self.hl7_default_charset!r}"
                )

    @property
    def checks_called_ae_title(self) -> bool:
        if self.require_called_ae_title is None:
            return bool(self.devices)
        return self.require_called_ae_title

    @property
    def http_auth_configured(self) -> bool:
        return bool(self.http_token or self.http_username)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def migrate_on_start(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


# list entries with a structure of their own, and what must be unique among them
_ENTRY_TYPES: dict[type, str] = {
    ForwardPeer: "peer names",
    Device: "AE titles",
    HL7Sender: "application and facility pairs",
    HL7Destination: "destination names",
}


def _entry_key(entry: Any) -> Any:
    if isinstance(entry, Device):
        return entry.ae_title
    if isinstance(entry, HL7Sender):
        return (entry.application, entry.facility, entry.hosts)
    return entry.name


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Config)}


def _field_type(name: str) -> tuple[Any, bool]:
    """(base type, optional) of a Config field: ``bool | None`` -> (bool, True)."""
    hint = typing.get_type_hints(Config)[name]
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return (item, False) if item in _ENTRY_TYPES else (list, False)
    if typing.get_origin(hint) is dict:
        return dict, False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the type of field ``name``; strings are parsed."""
    kind, optional = _field_type(name)
    where = f"{name} (from {source})"
    if optional and (value is None or str(value).strip().lower() in ("", "auto")):
        return None
    if value is None:
        raise ConfigError(f"{where}: a value is required")
    if kind in _ENTRY_TYPES:
        if isinstance(value, str):  # from the environment or a flag: JSON
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not JSON: {exc}") from None
        if not isinstance(value, list):
            raise ConfigError(f"{where}: a list of mappings")
        entries = [kind.parse(v, f"{where}[{n}]") for n, v in enumerate(value)]
        keys = [_entry_key(e) for e in entries]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{where}: {_ENTRY_TYPES[kind]} must be unique")
        return entries
    if kind is dict:
        if isinstance(value, str):  # from the environment or a flag: JSON
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: a mapping of names to values")
        return {str(k): str(v) for k, v in value.items()}
    try:
        if kind is bool:
            return _coerce_bool(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if kind is float:
            return float(value)
        if kind is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list):
                return [str(v) for v in value]
            raise ValueError(f"not a list: {value!r}")
        if isinstance(value, (dict, list)):
            raise ValueError(f"not a string: {value!r}")
        return str(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from YAML file, environment and explicit overrides."""
    env = os.environ if env is None else env
    known = _fields()
    values: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: must be a mapping of keys to values")
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"config file {path}: unknown key {key!r}")
            values[key] = _coerce(key, value, str(path))
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in known:
            raise ConfigError(f"environment variable {var}: unknown key {key!r}")
        values[key] = _coerce(key, value, var)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise ConfigError(f"unknown key {key!r}")
        values[key] = _coerce(key, value, "--" + key.replace("_", "-"))
    config = Config(**values)
    read_secret_files(config)
    config.validate()
    return config


def read_secret_files(config: Config) -> None:
    """Fill each secret from its ``*_file`` setting (Docker/systemd secrets), so that no
    secret needs to be on a command line: the file's content, trailing newline stripped.
    A secret given both ways, or a file that cannot be read, is a ConfigError."""
    for name, f in _fields().items():
        target, path = f.metadata.get("secret_file"), getattr(config, name)
        if not target or not path:
            continue
        try:
            value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{name}: {path!r} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{name}: {path!r} is empty")
        if target == "database_url":
            from sqlalchemy.engine import make_url  # late import: config stays light
            from sqlalchemy.exc import ArgumentError

            try:
                url = make_url(config.database_url)
            except ArgumentError:
                raise ConfigError(
                    f"database_url: not a database URL: {redact_url(config.database_url)!r}"
                ) from None
            if url.get_backend_name() == "sqlite" or url.password:
                raise ConfigError(
                    f"{name}: database_url must name a server database without "
                    "a password of its own"
                )
            config.database_url = url.set(password=value).render_as_string(hide_password=False)
        elif getattr(config, target):
            raise ConfigError(f"{name}: {target} is set as well: give one of them")
        else:
            setattr(config, target, value)


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one ``--<key>`` flag per configuration key."""
    parser.add_argument("--config", help="YAML configuration file")
    for name, f in _fields().items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar="VALUE",
            help=f.metadata.get("help", ""),
        )


def config_from_args(args: argparse.Namespace) -> Config:
    """A command's configuration; the process's server offset follows it (timezone.py)."""
    overrides = {name: getattr(args, name, None) for name in _fields()}
    cfg = load_config(getattr(args, "config", None), overrides=overrides)
    from worklist_mpps import timezone

    timezone.configure(cfg.timezone_offset)
    return cfg


def describe_defaults() -> list[tuple[str, str, str]]:
    """(key, default, help) rows, for the README table and ``--help``."""
    cfg = Config()
    return [
        (name, repr(getattr(cfg, name)), f.metadata.get("help", ""))
        for name, f in _fields().items()
    ]


def is_secret(name: str) -> bool:
    return bool(_fields()[name].metadata.get("secret"))


def shown_value(name: str, value: Any) -> str:
    """How ``worklist-mpps config`` shows a value: secrets and URL passwords masked."""
    if is_secret(name) and value:
        return repr(MASK)
    return redact_url(repr(value)) if isinstance(value, str) else repr(value)
