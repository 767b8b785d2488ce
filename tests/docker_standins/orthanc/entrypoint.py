#!/usr/bin/env python3
"""Stand-in for orthancteam/orthanc's entrypoint (tests only).

Like the real image (orthanc-builder, docker/orthanc/generateConfiguration.py): every
/etc/orthanc/*.json is read with ${VAR} replaced from the environment, merged into
/tmp/orthanc.json, and Orthanc runs on it as PID 1, so SIGTERM stops it. The merged file
holds the credentials: it is readable by root only. Replacement is done on the parsed
strings (a password with a quote stays valid JSON).
"""

import glob
import json
import os
import re
import sys

VARIABLE = re.compile(r"\$\{(\w+)\}")


def substitute(value):
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, list):
        return [substitute(v) for v in value]
    if isinstance(value, dict):
        return {substitute(k): substitute(v) for k, v in value.items()}
    return value


def main() -> None:
    config: dict = {}
    for path in sorted(glob.glob("/etc/orthanc/*.json")):
        with open(path, encoding="utf-8") as f:
            config.update(substitute(json.load(f)))
    if not config:
        sys.exit("no configuration in /etc/orthanc/*.json")
    fd = os.open("/tmp/orthanc.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.execv("/usr/sbin/Orthanc", ["Orthanc", "/tmp/orthanc.json", *sys.argv[1:]])


if __name__ == "__main__":
    main()
