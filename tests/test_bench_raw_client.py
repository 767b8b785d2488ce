"""bench/raw_client.py, the load generator of the 8-client rate (issue 18): against a real
worklist-mpps server it finds exactly what the pynetdicom client finds."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import cpu_servers
import generate
import raw_client
import server_cpu
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database


def test_raw_client_matches_what_pynetdicom_finds(tmp_path, monkeypatch):
    today = dt.date.today()
    day = today.strftime("%Y%m%d")
    db_file = tmp_path / "raw.sqlite"
    db = Database(f"sqlite:///{db_file}")
    migrate.upgrade(db.engine)
    generate.load(db, generate.make_items(400, today))
    db.dispose()
    server = cpu_servers.start_ours("raw", f"sqlite:///{db_file}", tmp_path)
    try:
        found = {}
        for client in (server_cpu.CLIENT, Path(raw_client.__file__)):
            monkeypatch.setattr(server_cpu, "CLIENT", client)
            proc = server_cpu.ClientProc(server, day)
            try:
                proc.ask(cmd="open", kind="find")
                for op in ("find_open", "broad_open"):
                    answer = proc.ask(cmd="batch", op=op, n=3)
                    assert answer["done"] == 3
                    found[client.name, op] = answer["matches"]
                assert proc.ask(cmd="run", op="find_open", seconds=0.3)["done"] > 0
                proc.ask(cmd="close")
            finally:
                proc.close()
        assert found["raw_client.py", "find_open"] == found["cpu_client.py", "find_open"] > 0
        assert found["raw_client.py", "broad_open"] == found["cpu_client.py", "broad_open"]
        assert found["raw_client.py", "broad_open"] > found["raw_client.py", "find_open"]
    finally:
        cpu_servers.stop_proc(server.procs[0])


def test_status_of_reads_the_command_set_status():
    command = raw_client.find_command(7)
    assert raw_client.status_of(command) is None  # a request has no Status
    rsp = command + raw_client._element(0, 0x0900, b"\x00\xff")
    assert raw_client.status_of(rsp) == 0xFF00
