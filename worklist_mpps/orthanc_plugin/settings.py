"""The plugin's configuration, read from Orthanc's (``orthanc.GetConfiguration()``).

The shape of the original Orthanc MPPS sample is kept: ``"MPPSAet"`` is our ``ae_title``
and ``"DicomPortMPPS"`` our ``port``. Everything else sits in a ``"WorklistMpps"``
section whose keys are the project's configuration keys (README "Configuration"), e.g.
``database_url``. The values go through the project's one loader, ``load_config`` (the
environment's ``WORKLIST_MPPS_*`` first, then these, as flags would be), so that a key or
value is checked exactly as for ``worklist-mpps serve``.

What differs from ``serve``, because the process is Orthanc:

- ``orthanc_url`` is Orthanc itself (``http://127.0.0.1:<HttpPort>``, naming it in logs
  and the audit trail); the study metadata is written in-process (client.py), so
  ``orthanc_url``, ``orthanc_username`` and ``orthanc_password`` in the section are
  refused;
- ``database_url`` must be given: Orthanc's working directory is no place for it;
- the HTTP side (``http_enabled``) and the sample worklist (``load_sample_data``) are off
  unless the section turns them on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from worklist_mpps.config import Config, ConfigError, load_config

SECTION = "WorklistMpps"
AE_KEY = "MPPSAet"  # the original sample's names (Orthanc Book, Python worklist + MPPS)
PORT_KEY = "DicomPortMPPS"
# keys the plugin sets itself: the in-process client needs neither a URL nor credentials
REFUSED = ("orthanc_url", "orthanc_username", "orthanc_password", "orthanc_password_file")
PLUGIN_DEFAULTS = {"http_enabled": False, "load_sample_data": False}


def plugin_config(orthanc: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """The Config of the plugin from Orthanc's configuration (its parsed JSON); a wrong key
    or value is a ConfigError naming where it is in orthanc.json."""
    section = orthanc.get(SECTION, {})
    if not isinstance(section, dict):
        raise ConfigError(f"orthanc.json {SECTION}: must be an object of configuration keys")
    for key in REFUSED:
        if key in section:
            raise ConfigError(
                f"orthanc.json {SECTION}.{key}: not used inside Orthanc (the study metadata "
                "is written in-process, with no URL and no credentials): remove it"
            )
    values: dict[str, Any] = {**PLUGIN_DEFAULTS, **section}
    for key, name in ((AE_KEY, "ae_title"), (PORT_KEY, "port")):
        if key in orthanc:
            if name in section:
                raise ConfigError(
                    f"orthanc.json: {key} and {SECTION}.{name} are both set: give one of them"
                )
            values[name] = orthanc[key]
    if not values.get("database_url"):
        raise ConfigError(
            f"orthanc.json {SECTION}.database_url: required inside Orthanc, e.g. "
            '"sqlite:////var/lib/orthanc/worklist-mpps/worklist.db" or a PostgreSQL URL'
        )
    values["orthanc_url"] = f"http://127.0.0.1:{orthanc.get('HttpPort', 8042)}"
    try:
        return load_config(None, os.environ if env is None else env, values)
    except ConfigError as exc:
        # load_config names a value's source as its flag (--key): say where it is here
        raise ConfigError(f"orthanc.json ({AE_KEY}, {PORT_KEY}, {SECTION}): {exc}") from None
