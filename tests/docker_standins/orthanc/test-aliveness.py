#!/usr/bin/env python3
"""Stand-in for orthancteam/orthanc's /probes/test-aliveness.py (tests only).

Like the real probe: HTTP port and the first registered user come from the merged
/tmp/orthanc.json; GET /changes?last (it reads the database) must answer 200.
"""

import base64
import json
import sys
import urllib.request

with open("/tmp/orthanc.json", encoding="utf-8") as f:
    config = json.load(f)
request = urllib.request.Request(f"http://localhost:{config.get('HttpPort', 8042)}/changes?last")
if config.get("AuthenticationEnabled") and config.get("RegisteredUsers"):
    user, password = next(iter(config["RegisteredUsers"].items()))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", "Basic " + token)
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    sys.exit(f"Orthanc not alive: {exc}")
