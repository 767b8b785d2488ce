"""Server CPU per DIMSE operation, measured from the server process's own CPU time
(/proc/PID/stat utime + stime) while this process drives it with pynetdicom (issue 18):
C-ECHO associations, selective queries on an open association, and selective queries
per second from 8 client processes on persistent associations. A probe for the figures
of README-netcpu.md, not a test: figures are noisy on a shared machine (run it a few
times, compare medians).

    python tests/netcpu_probe.py [--items 10000] [--echo 300] [--queries 300] [--seconds 5]
        [--fast-path false] [--only echo|query|rate] [--wrapper SCRIPT]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pydicom import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification  # noqa: E402

from dicom_clients import associate, worklist_query  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def selective() -> Dataset:
    ds = worklist_query()
    item = Dataset()
    item.Modality = "CT"
    item.ScheduledStationAETitle = "CT01"
    item.ScheduledProcedureStepStartDate = dt.date.today().strftime("%Y%m%d")
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def echo_associations(port: int, n: int) -> None:
    for _ in range(n):
        assoc = associate(port, Verification)
        assoc.send_c_echo()
        assoc.release()


def queries(port: int, n: int) -> int:
    assoc = associate(port, ModalityWorklistInformationFind)
    done = 0
    try:
        while done < n:
            for _status, _ds in assoc.send_c_find(selective(), ModalityWorklistInformationFind):
                pass
            done += 1
    finally:
        assoc.release()
    return done


def measured(pid: int, run) -> tuple[float, float]:
    """(server CPU seconds, wall seconds) of ``run()``."""
    c0, t0 = cpu_of(pid), time.perf_counter()
    run()
    return cpu_of(pid) - c0, time.perf_counter() - t0


def client_main(port: int, seconds: float) -> None:
    """One of the 8 clients: selective queries on one association for ``seconds``; prints
    how many were answered in that time."""
    assoc = associate(port, ModalityWorklistInformationFind)
    done, deadline = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for _status, _ds in assoc.send_c_find(selective(), ModalityWorklistInformationFind):
                pass
            done += 1
    finally:
        assoc.release()
    print(done)


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        client_main(int(sys.argv[2]), float(sys.argv[3]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--echo", type=int, default=300)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fast-path", default="true")
    p.add_argument("--only", choices=("echo", "query", "rate"), help="one figure only")
    p.add_argument(
        "--wrapper", help="a script run in place of -m worklist_mpps (a profiler's wrapper)"
    )
    args = p.parse_args()

    from conftest import free_port, port_open
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database

    sys.path.insert(0, str(ROOT / "bench"))
    import generate

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/probe.db"
        db = Database(url)
        migrate.upgrade(db.engine)
        generate.load(db, generate.make_items(args.items, dt.date.today()))
        db.engine.dispose()
        port = free_port()
        main_args = [args.wrapper] if args.wrapper else ["-m", "worklist_mpps"]
        server = subprocess.Popen(
            [
                sys.executable,
                *main_args,
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--database-url",
                url,
                "--http-enabled",
                "false",
                "--load-sample-data",
                "false",
                "--log-level",
                "WARNING",
                "--max-associations",
                "64",
                "--max-connections-per-address",
                "0",
                "--dimse-fast-path",
                args.fast_path,
            ],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "serve.log", "w"),
        )
        try:
            deadline = time.monotonic() + 90
            while not port_open("127.0.0.1", port, 0.2) and time.monotonic() < deadline:
                time.sleep(0.1)
            echo_associations(port, 20)  # warm up
            queries(port, 20)
            echo_ms, query_ms, rates, rate_cpu = [0.0], [0.0], [0.0], [0.0]
            for _ in range(args.rounds):
                if args.only in (None, "echo"):
                    cpu, _wall = measured(server.pid, lambda: echo_associations(port, args.echo))
                    echo_ms.append(cpu / args.echo * 1000)
                if args.only in (None, "query"):
                    cpu, _wall = measured(server.pid, lambda: queries(port, args.queries))
                    query_ms.append(cpu / args.queries * 1000)
                if args.only not in (None, "rate"):
                    continue
                c0 = cpu_of(server.pid)
                procs = [
                    subprocess.Popen(
                        [sys.executable, __file__, "--client", str(port), str(args.seconds)],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    for _ in range(8)
                ]
                done = sum(int(p.communicate(timeout=args.seconds + 60)[0]) for p in procs)
                rates.append(done / args.seconds)
                rate_cpu.append((cpu_of(server.pid) - c0) / max(done, 1) * 1000)
            echo_ms, query_ms = echo_ms[1:] or [0], query_ms[1:] or [0]
            rates, rate_cpu = rates[1:] or [0], rate_cpu[1:] or [0]
            print(
                f"server CPU per C-ECHO association: {statistics.median(echo_ms):.2f} ms "
                f"{[round(x, 2) for x in echo_ms]}\n"
                f"server CPU per selective query (open association): "
                f"{statistics.median(query_ms):.2f} ms {[round(x, 2) for x in query_ms]}\n"
                f"selective queries/s, 8 client processes: "
                f"{statistics.median(rates):.0f} {[round(x) for x in rates]}, server CPU "
                f"{statistics.median(rate_cpu):.2f} ms per query"
            )
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
