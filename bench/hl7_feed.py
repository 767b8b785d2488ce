"""The order-feed figure of `make bench` (issue 14): HL7 orders per second over 4 MLLP
connections, each order committed before its ACK, with the ACK latency (median, p95) at
N existing items; and C-FIND latency (a selective findscu, run back to back) while the feed
runs again, against the same query when idle, with the feed's rate under that load. The
reference is python-hl7's own MLLP server answering AA without storing anything
(bench/reference_mllp.py), measured in the same run.

    .venv/bin/python bench/hl7_feed.py --items 100000      # standalone, prints the figures

bench/run.py calls :func:`measure` for each N with the server it started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SB, EB = b"\x0b", b"\x1c\x0d"
MODALITIES = ["CT", "MR", "US", "CR"]
_serial = itertools.count(1)


def order(run: str, n: int, day: dt.date) -> bytes:
    """One v2.3.1 ORM^O01 new order (ORC-1 NW) with a unique control ID and order."""
    modality = MODALITIES[n % len(MODALITIES)]
    hour = 7 + n % 12
    obr = ["OBR", "1", f"P{run}{n}", f"F{run}{n}", "CTHEAD^CT Head^L"] + [""] * 20
    obr[18], obr[19], obr[20], obr[24] = f"A{run}{n % 10**6}", f"RP{n % 10**6}", f"S{n}", modality
    segments = [
        f"MSH|^~\\&|BENCHRIS|HOSP|WORKLIST-MPPS|HOSP|{day:%Y%m%d}080000||ORM^O01|"
        f"{run}{n}|P|2.3.1||||||8859/1",
        f"PID|1||B{run}{n}^^^HOSP||Müller^Jürgen {n}||19700101|M",
        "PV1|1|O|RAD^^^HOSP",
        f"ORC|NW|P{run}{n}|F{run}{n}||SC||^^^{day:%Y%m%d}{hour:02d}{n % 60:02d}00",
        "|".join(obr),
    ]
    return ("\r".join(segments) + "\r").encode("iso-8859-1")


class Sender:
    """One MLLP connection sending orders one after another (original mode)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(SB + message + EB)
        while EB not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the ACK")
            self.buffer += chunk
        ack, self.buffer = self.buffer.split(EB, 1)
        return ack.lstrip(SB)

    def close(self) -> None:
        self.sock.close()


def feed(port: int, connections: int, seconds: float) -> dict:
    """Orders per second from ``connections`` senders for ``seconds``; ACK latencies."""
    run = uuid.uuid4().hex[:5].upper()
    day = dt.date.today()
    latencies: list[list[float]] = [[] for _ in range(connections)]
    refused = [0] * connections
    deadline = time.monotonic() + seconds

    def loop(i: int) -> None:
        sender = Sender(port)
        try:
            while time.monotonic() < deadline:
                message = order(run, next(_serial), day)
                start = time.perf_counter()
                ack = sender.send(message)
                latencies[i].append((time.perf_counter() - start) * 1000)
                if b"MSA|AA|" not in ack and b"MSA|CA|" not in ack:
                    refused[i] += 1
        finally:
            sender.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    every = sorted(x for lat in latencies for x in lat)
    return {
        "orders": len(every),
        "rate": len(every) / elapsed,
        "median": statistics.median(every),
        "p95": every[int(len(every) * 0.95) - 1],
        "refused": sum(refused),
    }


def query_times(find_cmd: list[str], seconds: float, env: dict) -> list[float]:
    """findscu runs one after another for ``seconds``: each one's wall-clock ms."""
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        proc = subprocess.run(find_cmd, env=env, capture_output=True, timeout=120)
        times.append((time.perf_counter() - start) * 1000)
        if proc.returncode != 0:
            raise RuntimeError(f"findscu failed: {proc.stderr.decode()[-300:]}")
    return times


def measure(
    hl7_port: int,
    reference_port: int,
    find_cmd: list[str],
    env: dict,
    seconds: float = 10.0,
    connections: int = 4,
) -> dict:
    """The figures for one server: the feed alone (orders/s, ACK latency), its reference,
    then the feed again while findscu queries run back to back (C-FIND during the feed
    against idle; the orders/s under that load too: the findscu processes take about one
    of the two cores)."""
    idle = query_times(find_cmd, seconds / 2, env)
    ours = feed(hl7_port, connections, seconds)
    during: list[float] = []
    query = threading.Thread(
        target=lambda: during.extend(query_times(find_cmd, seconds * 0.8, env))
    )
    query.start()
    loaded = feed(hl7_port, connections, seconds)
    query.join()
    reference = feed(reference_port, connections, seconds)
    return {
        "ours": ours,
        "loaded": loaded,
        "reference": reference,
        "find_idle": statistics.median(idle),
        "find_during": statistics.median(during),
    }


def describe(result: dict) -> str:
    ours, ref = result["ours"], result["reference"]
    return (
        f"orders/s over 4 connections: ours {ours['rate']:.0f} (ACK median {ours['median']:.1f}"
        f" ms, p95 {ours['p95']:.1f} ms, {ours['refused']} not AA), reference "
        f"{ref['rate']:.0f} (ratio {ours['rate'] / ref['rate']:.2f}); C-FIND median idle "
        f"{result['find_idle']:.1f} ms, during the feed {result['find_during']:.1f} ms "
        f"(x{result['find_during'] / result['find_idle']:.2f}), the feed meanwhile "
        f"{result['loaded']['rate']:.0f} orders/s (p95 {result['loaded']['p95']:.1f} ms)"
    )


def main() -> int:
    import generate  # bench/generate.py
    from run import AET, CLIENT_ENV, find_cmd, free_port, stop, wait_port
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "work" / "hl7"))
    parser.add_argument("--from-db", help="start from a copy of this SQLite file (its items)")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    url = f"sqlite:///{work / 'worklist.db'}"
    if args.from_db:
        shutil.copy(args.from_db, work / "worklist.db")
    else:
        db = Database(url)
        migrate.upgrade(db.engine)
        generate.load(db, generate.make_items(args.items, dt.date.today()))
        db.dispose()
    port, hl7_port, ref_port = free_port(), free_port(), free_port()
    ours = ref = None
    try:
        ours = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worklist_mpps",
                "serve",
                *("--bind", "127.0.0.1", "--port", str(port), "--database-url", url),
                *("--http-enabled", "false", "--load-sample-data", "false"),
                *("--hl7-enabled", "true", "--hl7-port", str(hl7_port), "--log-level", "WARNING"),
            ],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "serve.log", "w"),
        )
        ref = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "reference_mllp.py"), str(ref_port)]
        )
        wait_port(port, ours)
        wait_port(hl7_port, ours)
        wait_port(ref_port, ref)
        day = dt.date.today().strftime("%Y%m%d")
        cmd = find_cmd(
            port,
            "(0040,0100)[0].Modality=CT",
            "(0040,0100)[0].ScheduledStationAETitle=CT01",
            f"(0040,0100)[0].ScheduledProcedureStepStartDate={day}",
        )
        print(
            f"N={args.items:,} ({AET}): "
            + describe(measure(hl7_port, ref_port, cmd, CLIENT_ENV, args.seconds))
        )
    finally:
        stop(ours)
        stop(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
