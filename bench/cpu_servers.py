"""The servers bench/server_cpu.py measures, each started on loopback and stopped by PID.

- worklist-mpps (`python -m worklist_mpps serve`) on a SQLite file or on a fresh
  PostgreSQL schema of database `test` (127.0.0.1:5432, trust); its PostgreSQL
  connections carry application_name so their backends can be found. It is started
  through bench/pause_watch.py, which calls the same CLI entry point with the same
  arguments and adds an idle thread that runs the pause watchdog only when told
  (Server.pauses: start / stop around the bench's pause phases).
- DCMTK `wlmscpfs` on the .wl files bench/run.py exports, in its default fork mode
  (one child process per association: its CPU is counted, see server_cpu.tree_cpu).
- Orthanc 1.10 (Debian) with its ModalityWorklists plugin on the same .wl files.
  Orthanc 1.10 has no bind-address option, so it runs in a network namespace the
  bench makes (`ip netns add`, loopback up) and its client runs in it too: nothing
  outside the namespace can reach it. Namespace removed afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pause_watch import PauseControl

ROOT = Path(__file__).resolve().parent.parent
AET = "WORKLISTS"
PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
ORTHANC_PORT = 4242  # inside the bench's own network namespace


@dataclass
class Server:
    """One started server: where its client connects and whose CPU is read."""

    name: str
    pid: int
    port: int
    forks: bool = False  # one child process per association (wlmscpfs)
    netns: str | None = None  # the client runs in this network namespace
    app_name: str | None = None  # PostgreSQL application_name of its connections
    procs: list[subprocess.Popen] = field(default_factory=list)
    pauses: PauseControl | None = None  # worklist-mpps: its pause watchdog

    def client_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []


def stop_proc(proc: subprocess.Popen | None) -> None:
    """SIGTERM by PID, SIGKILL after 20 s."""
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` sees a TCP socket listening on ``port`` (its own network
    namespace's /proc/PID/net/tcp and tcp6; state 0A = LISTEN)."""
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[1].rsplit(":", 1)[1] == f"{port:04X}" and parts[3] == "0A":
                return True
    return False


def wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {tail(log)}")
        if listening(proc.pid, port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s: {tail(log)}")


def tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-600:]
    except OSError:
        return ""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_url(schema: str) -> str:
    """A URL on ``schema`` whose connections say application_name=wmbench-<schema>."""
    return f"{PG_BASE}?options=-csearch_path%3D{schema}&application_name=wmbench-{schema}"


def new_pg_schema() -> str:
    """A fresh schema; first the schemas of earlier runs that were killed before they
    could drop theirs (no backend of theirs still connected), so none piles up in
    database ``test``, which the test suite shares."""
    from sqlalchemy import create_engine, text

    schema = "wmbench_" + uuid.uuid4().hex[:10]
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        stale = conn.execute(
            text(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'wmbench\\_%' "
                "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                "WHERE application_name = 'wmbench-' || nspname)"
            )
        ).scalars()
        for name in list(stale):
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return schema


def drop_pg_schema(schema: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def start_ours(name: str, url: str, folder: Path, app_name: str | None = None) -> Server:
    port = free_port()
    log = folder / f"{name}.log"
    control_r, control_w = os.pipe()
    answer_r, answer_w = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "pause_watch.py"),
            *(str(control_r), str(answer_w)),
            "serve",
            *("--bind", "127.0.0.1", "--port", str(port), "--database-url", url),
            *("--http-enabled", "false", "--load-sample-data", "false"),
            *("--log-level", "WARNING", "--max-associations", "64"),
            *("--max-connections-per-address", "0"),
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
        pass_fds=(control_r, answer_w),
    )
    os.close(control_r)
    os.close(answer_w)
    pauses = PauseControl(control_w, answer_r)
    server = Server(name, proc.pid, port, app_name=app_name, procs=[proc], pauses=pauses)
    try:
        wait_listening(proc, port, log)
    except Exception:
        stop(server)
        raise
    return server


def start_wlmscpfs(wl_folder: Path, folder: Path) -> Server:
    port = free_port()
    log = folder / "wlmscpfs.log"
    proc = subprocess.Popen(
        ["wlmscpfs", "-dfp", str(wl_folder), str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )
    wait_listening(proc, port, log)
    return Server("wlmscpfs", proc.pid, port, forks=True, procs=[proc])


def orthanc_config(wl_dir: Path, storage: Path) -> dict:
    """Orthanc's DICOM server on ORTHANC_PORT, the worklist plugin on ``wl_dir``."""
    return {
        "Name": "wmbench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": AET,
        "DicomPort": ORTHANC_PORT,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowFind": True,
        "DicomModalities": {"bench": ["BENCHSCU", "127.0.0.1", 104]},  # worklist C-FIND
        "HttpServerEnabled": False,
        "RemoteAccessAllowed": False,
        "Plugins": [str(ORTHANC_PLUGIN)],
        "Worklists": {"Enable": True, "Database": str(wl_dir)},
    }


def start_orthanc(wl_dir: Path, folder: Path) -> Server:
    """Orthanc in a fresh network namespace (Orthanc 1.10 binds every address)."""
    if not ORTHANC_PLUGIN.exists():
        raise RuntimeError(f"{ORTHANC_PLUGIN} missing (Debian package orthanc)")
    netns = "wmbench" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        config = folder / "orthanc-bench.json"
        config.write_text(json.dumps(orthanc_config(wl_dir, folder / "orthanc-db"), indent=2))
        log = folder / "orthanc.log"
        # `ip netns exec` execs Orthanc: the Popen's PID is Orthanc's own
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "Orthanc", str(config)],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "w"),
        )
        server = Server("orthanc", proc.pid, ORTHANC_PORT, netns=netns, procs=[proc])
        try:
            wait_listening(proc, ORTHANC_PORT, log)
        except Exception:
            stop(server)
            raise
        return server
    except Exception:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        raise


def stop(server: Server) -> None:
    for proc in server.procs:
        stop_proc(proc)
    if server.pauses is not None:
        server.pauses.close()
    if server.netns:
        subprocess.run(["ip", "netns", "del", server.netns], check=False)
