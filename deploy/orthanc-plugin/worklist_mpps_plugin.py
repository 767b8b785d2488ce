"""Orthanc's PythonScript for worklist-mpps (docs/deploy-orthanc-plugin.md).

Debian's orthanc-python runs this file in its embedded Python (Debian's python3). It puts
the site-packages of the virtualenv worklist-mpps is installed in first on sys.path (so
its locked dependencies win over any python3-* package of the system), then imports the
plugin, which reads MPPSAet, DicomPortMPPS and WorklistMpps from Orthanc's configuration.

The virtualenv is /opt/worklist-mpps unless orthanc.json says otherwise:
    "WorklistMppsVenv": "/opt/worklist-mpps"
It must be made with the Python orthanc-python is built against (Debian 12: python3.11).
"""

import json
import os
import site
import sys

import orthanc

venv = json.loads(orthanc.GetConfiguration()).get("WorklistMppsVenv", "/opt/worklist-mpps")
packages = os.path.join(
    venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages"
)
if not os.path.isdir(packages):
    orthanc.LogError(
        f"worklist-mpps: no {packages}: create the virtualenv with the Python Orthanc runs "
        f"({sys.version.split()[0]}), see docs/deploy-orthanc-plugin.md"
    )
else:
    before = list(sys.path)
    site.addsitedir(packages)  # also reads its .pth files
    sys.path[:] = [p for p in sys.path if p not in before] + before
    import worklist_mpps.orthanc_plugin.entry  # noqa: F401 - registers the callbacks
