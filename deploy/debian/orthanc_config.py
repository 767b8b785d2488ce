"""Merge worklist-mpps's settings into Debian's Orthanc configuration folder /etc/orthanc/.

Debian's service runs ``Orthanc /etc/orthanc/``, which merges every ``*.json`` there; a
top-level key defined in two files stops Orthanc ("The configuration section X is defined
in 2 different configuration files"). So:

- keys no file defines go to our own fragment ``worklist-mpps.json`` (e.g.
  ``AuthenticationEnabled``, commented out in Debian's orthanc.json);
- ``UserMetadata`` (Debian's orthanc.json) and ``RegisteredUsers`` (Debian's
  credentials.json) get our entries inserted into the file that defines them, as a
  minimal text edit (comments kept), the file saved first as ``NAME.before-worklist-mpps``
  (not ``*.json``: Orthanc does not read it); where no file defines them, into the fragment.

Idempotent: entries already there are kept (an existing metadata number or user password
is not changed). Orthanc's files are JSON with ``//`` and ``/* */`` comments. Standard
library only: run with Debian's /usr/bin/python3. Prints one line per change.

    usage: orthanc_config.py ORTHANC_DIR TEMPLATE USER PASSWORD_FILE
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

FRAGMENT = "worklist-mpps.json"
BACKUP = ".before-worklist-mpps"
MERGED = (
    "UserMetadata",
    "RegisteredUsers",
    "DicomModalities",
)  # objects we add entries to, wherever defined


def strip_comments(text: str) -> str:
    """``text`` with its comments blanked (same length, so offsets stay valid)."""
    out, i, n = list(text), 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for j in range(i, end):
                if out[j] != "\n":
                    out[j] = " "
            i = end
        else:
            i += 1
    return "".join(out)


def load(path: Path) -> dict:
    return json.loads(strip_comments(path.read_text(encoding="utf-8")) or "{}")


def object_start(text: str, key: str) -> int:
    """Offset just after the ``{`` of top-level ``"key": {`` in comment-free ``text``."""
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = i + 1
            while text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if depth == 1 and json.loads(text[i : end + 1]) == key:
                rest = text[end + 1 :].lstrip()
                if rest.startswith(":") and rest[1:].lstrip().startswith("{"):
                    return text.index("{", end) + 1
            i = end + 1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        i += 1
    raise ValueError(f"no top-level object {key!r}")


def insert_entries(path: Path, key: str, entries: dict) -> None:
    """Add ``entries`` at the start of the top-level object ``key`` of ``path``."""
    original = path.read_text(encoding="utf-8")
    clean = strip_comments(original)
    start = object_start(clean, key)
    empty = clean[start : clean.index("}", start)].strip() == ""
    lines = [f"    {json.dumps(k)} : {json.dumps(v)}" for k, v in entries.items()]
    added = ",\n".join(lines) + ("\n" if empty else ",")
    text = original[:start] + "\n    // added by worklist-mpps (install-system.sh)\n"
    text += added + original[start:]
    merged = json.loads(strip_comments(text))[key]
    assert all(merged.get(k) == v for k, v in entries.items()), "insertion not as expected"
    backup = path.with_name(path.name + BACKUP)
    if not backup.exists():
        shutil.copy2(path, backup)
    stat = path.stat()
    tmp = path.with_name(path.name + ".tmp-worklist-mpps")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, stat.st_mode & 0o7777)
    os.chown(tmp, stat.st_uid, stat.st_gid)
    tmp.replace(path)
    print(f"  {path}: {key} += {', '.join(entries)} (backup {backup.name})")


def merge(folder: Path, template: dict, user: str, password_file: str) -> dict:
    """Edit the folder's files for ``template``; the fragment's content (to write)."""
    others = sorted(p for p in folder.glob("*.json") if p.name != FRAGMENT)
    defined: dict[str, Path] = {}
    for path in others:
        for key in load(path):
            if key in defined:
                raise SystemExit(f"{path}: {key} is defined in {defined[key]} too already")
            defined[key] = path
    password = Path(password_file).read_text(encoding="utf-8").strip()
    wanted = dict(template)
    wanted["RegisteredUsers"] = {user: password}
    fragment: dict = {}
    for key, value in wanted.items():
        if key not in defined:
            fragment[key] = value
        elif key in MERGED:
            present = load(defined[key]).get(key) or {}
            missing = {k: v for k, v in value.items() if k not in present}
            if key == "UserMetadata":  # a number another name already has: the next free
                taken = set(present.values())
                for name in missing:
                    while missing[name] in taken:
                        missing[name] += 1
                    taken.add(missing[name])
            if key == "RegisteredUsers" and present.get(user, password) != password:
                print(
                    f"  WARNING: {defined[key]}: user {user} has another password than "
                    f"{password_file}: make them the same (docs/deploy-debian.md)"
                )
            if missing:
                insert_entries(defined[key], key, missing)
            else:
                print(f"  {defined[key]}: {key} already has ours")
        else:
            print(f"  {key}: set in {defined[key].name}, left as it is there")
    return fragment


def main(argv: list[str]) -> int:
    folder, template_path, user, password_file = Path(argv[0]), argv[1], argv[2], argv[3]
    template = json.loads(strip_comments(Path(template_path).read_text(encoding="utf-8")))
    template.pop("_comment", None)
    fragment = merge(folder, template, user, password_file)
    target = folder / FRAGMENT
    body = json.dumps(fragment, indent=2) + "\n"
    header = "// worklist-mpps: written by install-system.sh (docs/deploy-debian.md)\n"
    if not target.exists() or target.read_text(encoding="utf-8") != header + body:
        target.write_text(header + body, encoding="utf-8")
        print(f"  {target}: {', '.join(fragment) or 'nothing to add'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
