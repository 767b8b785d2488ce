"""The plugin inside Orthanc: the one module that imports ``orthanc`` (orthanc-python).

Imported by the ``PythonScript`` (deploy/orthanc-plugin/worklist_mpps_plugin.py) while
Orthanc loads its plugins, it

- reads the configuration from Orthanc's (settings.py) and routes the project's logging
  to Orthanc's log (``LogInfo`` / ``LogWarning`` / ``LogError``: INFO lines show with
  Orthanc's ``--verbose-plugins``);
- registers the worklist callback of Orthanc's own DICOM port (worklist.py) and a change
  callback: on ``ORTHANC_STARTED`` it starts what ``worklist-mpps serve`` runs
  (cli/runtime.py: the DICOM AE for worklist and MPPS on ``DicomPortMPPS``, the outbox,
  the witness follower, HTTP / MLLP where configured) as threads of Orthanc's process,
  with the Orthanc target writing the study metadata in-process (client.py); on
  ``ORTHANC_STOPPED`` it stops them (associations and messages in flight finished and
  committed, threads joined, the database disposed) before Orthanc goes on stopping.

A configuration or start-up failure is one ``LogError`` line and the plugin stays idle:
Orthanc itself keeps storing images (its worklist callback then refuses every query).
Callbacks must be registered while Orthanc loads plugins, hence at import.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

import orthanc

from worklist_mpps.cli.main import setup_logging
from worklist_mpps.cli.runtime import Runtime, StartupError
from worklist_mpps.config import Config, ConfigError
from worklist_mpps.orthanc_plugin import settings
from worklist_mpps.orthanc_plugin import worklist as plugin_worklist
from worklist_mpps.orthanc_plugin.client import InProcessClient


class OrthancLogHandler(logging.Handler):
    """Python logging into Orthanc's log: one Orthanc line per record (with its
    traceback, if any), at Orthanc's level for the record's."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if record.levelno >= logging.ERROR:
                orthanc.LogError(line)
            elif record.levelno >= logging.WARNING:
                orthanc.LogWarning(line)
            else:
                orthanc.LogInfo(line)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


log = logging.getLogger("worklist_mpps.orthanc_plugin")


class Plugin:
    """The runtime's life inside Orthanc, driven by Orthanc's callbacks."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.runtime: Runtime | None = None
        self.lock = threading.Lock()

    def configure(self) -> None:
        """Read the configuration and set up logging; one LogError line when wrong."""
        handler = OrthancLogHandler()
        handler.setFormatter(logging.Formatter("worklist-mpps %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            self.config = settings.plugin_config(json.loads(orthanc.GetConfiguration()))
        except ConfigError as exc:
            orthanc.LogError(f"worklist-mpps: not started: {exc}")
            return
        from worklist_mpps import timezone

        timezone.configure(self.config.timezone_offset)
        root.setLevel(self.config.log_level.upper())
        setup_logging(self.config.log_level)  # root has a handler: only the noisy loggers
        # as serve does (cli/main.py): a DIMSE thread waits at most 1 ms for the GIL
        sys.setswitchinterval(0.001)

    def on_change(self, change_type: int, _level: int, _resource: str) -> None:
        if change_type == orthanc.ChangeType.ORTHANC_STARTED:
            self.start()
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            self.stop()

    def start(self) -> None:
        if self.config is None:
            return
        runtime = Runtime(self.config, lambda: InProcessClient(orthanc))
        try:
            runtime.start()
        except (StartupError, ConfigError) as exc:
            orthanc.LogError(f"worklist-mpps: not started: {exc}")
            return
        except Exception as exc:
            log.exception("not started: %s", exc.__class__.__name__)
            return
        with self.lock:
            self.runtime = runtime
        orthanc.LogWarning(runtime.banner() + " (inside Orthanc)")

    def stop(self) -> None:
        with self.lock:
            runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.stop()
            orthanc.LogWarning("worklist-mpps: stopped")

    def on_worklist(self, answers: Any, query: Any, calling: str, called: str) -> None:
        """orthanc.RegisterWorklistCallback: answer from the same database and code."""
        with self.lock:
            runtime = self.runtime
        if runtime is None or runtime.db is None or self.config is None:
            raise plugin_worklist.Refused(0xC001, "worklist-mpps is not running")
        for buffer in plugin_worklist.answer(
            runtime.db, self.config, query.WorklistGetDicomQuery(), calling, called
        ):
            answers.WorklistAddAnswer(query, buffer)


PLUGIN = Plugin()
PLUGIN.configure()
orthanc.RegisterWorklistCallback(PLUGIN.on_worklist)
orthanc.RegisterOnChangeCallback(PLUGIN.on_change)
