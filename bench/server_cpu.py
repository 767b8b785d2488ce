"""The server's own CPU per operation (issue 18), side by side with DCMTK wlmscpfs and
Orthanc's worklist plugin.

CPU is read from /proc/PID/stat (utime + stime, clock ticks) before and after a batch
of N operations sent by one pynetdicom client process (bench/cpu_client.py, so its
CPU is not the server's), divided by N; the figure is the median over the batches.
For wlmscpfs, which forks a child per association, the parent's own time + its reaped
children's (cutime + cstime) + every child still alive or not yet reaped (a zombie's
stat keeps its times), read consistently (tree_cpu). For PostgreSQL, the backends
whose application_name is the server's are read the same way and reported apart.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cpu_servers import Server

TICK = os.sysconf("SC_CLK_TCK")
CLIENT = Path(__file__).resolve().parent / "cpu_client.py"
# the 8-client rate's load generator: a pynetdicom client spends ~10 ms of CPU a query,
# three times the server, so 8 of them would saturate 2 cores themselves (raw_client.py)
RATE_CLIENT = Path(__file__).resolve().parent / "raw_client.py"
OPS = {  # operation -> (label, needs an open association of this kind)
    "echo_assoc": ("association with one C-ECHO", None),
    "find_open": ("selective query, open association", "find"),
    "find_assoc": ("one-query association (selective)", None),
    "broad_open": ("broad query (all of today), open association", "find"),
    "mpps": ("MPPS cycle (N-CREATE, N-SET, N-SET COMPLETED)", "mpps"),
}


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 = index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def own_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds (proc(5) fields 14, 15)."""
    f = stat_fields(pid)
    return (int(f[11]) + int(f[12])) / TICK


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(stat_fields(int(entry))[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError):
                continue
    return out


def tree_cpu(pid: int, tries: int = 20) -> float:
    """A forking server's CPU: its own, its reaped children's (cutime + cstime, fields 16,
    17) and its unreaped children's (alive or zombie); read again if a child was reaped
    between the readings (cutime moved), so that no child counts twice or not at all."""
    for _ in range(tries):
        f = stat_fields(pid)
        reaped = (int(f[13]) + int(f[14])) / TICK
        live = 0.0
        for child in children_of(pid):
            try:
                live += own_cpu(child)
            except OSError:
                continue
        g = stat_fields(pid)
        if g[13:15] == f[13:15]:
            return (int(g[11]) + int(g[12])) / TICK + reaped + live
    raise RuntimeError(f"children of {pid} kept being reaped while read")


def server_cpu(server: Server) -> float:
    return tree_cpu(server.pid) if server.forks else own_cpu(server.pid)


class Backends:
    """CPU of the PostgreSQL backends serving one server (pg_stat_activity by
    application_name; their /proc/PID/stat, same host)."""

    def __init__(self, app_name: str) -> None:
        from sqlalchemy import create_engine

        from cpu_servers import PG_BASE

        self.app_name = app_name
        self.engine = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")

    def cpu(self) -> float:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"),
                {"a": self.app_name},
            ).scalars()
            total = 0.0
            for pid in pids:
                try:
                    total += own_cpu(pid)
                except OSError:
                    continue
        return total

    def close(self) -> None:
        self.engine.dispose()


class ClientProc:
    """One bench/cpu_client.py process, driven over its stdin/stdout."""

    def __init__(
        self, server: Server, day: str, called: str = "WORKLISTS", script: Path | None = None
    ) -> None:
        cmd = [*server.client_prefix(), sys.executable, str(script or CLIENT)]
        cmd += ["127.0.0.1", str(server.port), called, day]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.ask_answer()  # ready

    def send(self, **command) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def ask_answer(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark client exited ({self.proc.poll()})")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"benchmark client: {answer.get('error')}")
        return answer

    def ask(self, **command) -> dict:
        self.send(**command)
        return self.ask_answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Figure:
    """Median server (and database) CPU ms per operation over the batches; the client's
    latencies (median, and the worst over every batch minus that median)."""

    server_ms: float
    db_ms: float | None
    batches: list[float]
    n: int
    matches: int
    latency_ms: float
    worst_extra_ms: float


def measure(
    client: ClientProc,
    server: Server,
    op: str,
    max_n: int,
    batches: int,
    backends: Backends | None = None,
    batch_cpu_s: float = 0.5,
) -> Figure:
    """Server CPU per ``op``: ``batches`` batches of n, medians. One operation warms up,
    then one (ten if one is too few clock ticks) sizes n so that a batch takes about
    ``batch_cpu_s`` of server CPU (50 ticks), at most ``max_n``; a warm-up costing over
    twice that (a peer reading every file) sizes n itself, and 3 batches do. The
    association is opened outside the measured batches where the operation needs one."""
    kind = OPS[op][1]
    if kind:
        client.ask(cmd="open", kind=kind)
    try:
        cpu0 = server_cpu(server)
        client.ask(cmd="batch", op=op, n=1)  # warm-up: first use of each code path
        spent, probed = server_cpu(server) - cpu0, 1
        if spent <= 2 * batch_cpu_s:  # not a peer's seconds-long query: probe once warm
            cpu0 = server_cpu(server)
            client.ask(cmd="batch", op=op, n=1)
            spent = server_cpu(server) - cpu0
        if spent < 5 / TICK:  # too few clock ticks to size the batch: 9 more
            client.ask(cmd="batch", op=op, n=9)
            spent, probed = server_cpu(server) - cpu0, 10
        probe = max(spent, 1 / TICK) / probed
        n = max(1, min(max_n, int(batch_cpu_s / probe)))
        if probe > 2 * batch_cpu_s:
            batches = min(batches, 3)  # a peer reading every file: seconds per query
        per_op, per_db, medians, worst, matches = [], [], [], 0.0, 0
        for _ in range(batches):
            db0 = backends.cpu() if backends else 0.0
            cpu0 = server_cpu(server)
            answer = client.ask(cmd="batch", op=op, n=n)
            cpu1 = server_cpu(server)
            db1 = backends.cpu() if backends else 0.0
            per_op.append((cpu1 - cpu0) * 1000 / n)
            per_db.append((db1 - db0) * 1000 / n)
            medians.append(answer["median_ms"])
            worst = max(worst, answer["max_ms"])
            matches = answer["matches"]
    finally:
        if kind:
            client.ask(cmd="close")
    latency = statistics.median(medians)
    return Figure(
        statistics.median(per_op),
        statistics.median(per_db) if backends else None,
        per_op,
        n,
        matches,
        latency,
        worst - latency,
    )


def rate(server: Server, day: str, clients: int, seconds: float) -> tuple[float, float]:
    """Selective queries per second from ``clients`` client processes, each on its own
    open association, all started together; and the server's CPU ms per query."""
    procs = [ClientProc(server, day, script=RATE_CLIENT) for _ in range(clients)]
    try:
        for c in procs:
            c.ask(cmd="open", kind="find")
            c.ask(cmd="batch", op="find_open", n=1)
        cpu0, t0 = server_cpu(server), time.monotonic()
        for c in procs:
            c.send(cmd="run", op="find_open", seconds=seconds)
        done = sum(c.ask_answer()["done"] for c in procs)
        elapsed, cpu1 = time.monotonic() - t0, server_cpu(server)
        for c in procs:
            c.ask(cmd="close")
    finally:
        for c in procs:
            c.close()
    return done / elapsed, (cpu1 - cpu0) * 1000 / max(1, done)


# the pause phases' client mix (issue 18's "8 clients"): raw-socket queries, and
# pynetdicom clients for what the raw client does not speak
PAUSE_MIX = (
    *(("find_open", True),) * 4,
    *(("broad_open", True),) * 2,
    ("mpps", False),
    ("echo_assoc", False),
)


def pause_phase(server: Server, day: str, op: str | None, seconds: float) -> dict:
    """The pause watchdog's figures (bench/pause_watch.py) over ``seconds`` of ``op``
    from one pynetdicom client (None: the server idle; "mixed": PAUSE_MIX, 8 client
    processes at once), with the server's CPU and the operations done meanwhile. A
    phase of its own, after the CPU figures: those are taken with the watchdog off."""
    assert server.pauses is not None
    if op is None:
        cpu0 = server_cpu(server)
        server.pauses.start()
        time.sleep(seconds)
        figures = server.pauses.stop()
        return {**figures, "done": 0, "cpu_s": server_cpu(server) - cpu0}
    mix = PAUSE_MIX if op == "mixed" else ((op, False),)
    procs = [ClientProc(server, day, script=RATE_CLIENT if raw else None) for _, raw in mix]
    try:
        for c, (o, _) in zip(procs, mix, strict=True):
            if OPS[o][1]:
                c.ask(cmd="open", kind=OPS[o][1])
            c.ask(cmd="batch", op=o, n=1)
        cpu0 = server_cpu(server)
        server.pauses.start()
        for c, (o, _) in zip(procs, mix, strict=True):
            c.send(cmd="run", op=o, seconds=seconds)
        done = sum(c.ask_answer()["done"] for c in procs)
        figures = server.pauses.stop()
        cpu = server_cpu(server) - cpu0
        for c, (o, _) in zip(procs, mix, strict=True):
            if OPS[o][1]:
                c.ask(cmd="close")
    finally:
        for c in procs:
            c.close()
    return {**figures, "done": done, "cpu_s": cpu}
