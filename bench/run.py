"""worklist-mpps benchmark: our server against DCMTK wlmscpfs, in one run.

    make bench                      # N = 1,000 / 10,000 / 100,000, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --sizes 1000 --repeat 10 --duration 5
    .venv/bin/python bench/run.py --no-e2e --cpu-sizes 10000 --servers ours,orthanc

For each N: generate realistic items (bench/generate.py), load them into a
fresh SQLite database (the embedded default) and export the same items as .wl
files; start `worklist-mpps serve` and `wlmscpfs` on 127.0.0.1; measure with
DCMTK echoscu/findscu as external client processes (TCP_NODELAY=1 in their
environment, as DCMTK documents): C-ECHO, a selective query (modality +
station + today), a broad query (all of today), selective queries per second
from 8 concurrent clients; MPPS full cycles (N-CREATE, N-SET, N-SET COMPLETED)
per second from 8 concurrent pynetdicom client processes against our server
and against the in-memory reference SCP (bench/reference_mpps_scp.py); the
server's resident memory; at the largest N, the Today view's server time for a day of
1,000 items (bench/ui_today.py). Medians and p95 over repeated runs. Everything
started is stopped.

Then (issue 18, bench/cpu_run.py) the servers' own CPU per operation from
/proc/PID/stat with one pynetdicom client process: worklist-mpps on SQLite and
PostgreSQL, wlmscpfs and Orthanc's worklist plugin, at --cpu-sizes; ratios and the
issue's targets (bench/cpu_report.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cpu_client  # noqa: E402
import cpu_report  # noqa: E402
import cpu_run  # noqa: E402
import cpu_servers  # noqa: E402
import generate  # noqa: E402
import hl7_feed  # noqa: E402
import machine  # noqa: E402
import ui_today  # noqa: E402
from worklist_mpps.db import migrate  # noqa: E402
from worklist_mpps.db.engine import Database  # noqa: E402

CLIENT_ENV = {**os.environ, "TCP_NODELAY": "1"}
AET = "WORKLISTS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


stop = cpu_servers.stop_proc  # SIGTERM by PID, SIGKILL after 20 s


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- DCMTK clients ------------------------------------------------------------------------------


def echo_cmd(port: int) -> list[str]:
    return ["echoscu", "-aec", AET, "127.0.0.1", str(port)]


def find_cmd(port: int, *match: str) -> list[str]:
    # the same return keys as the server-CPU client's query (PS3.4 K.6.1.2)
    keys = [*cpu_client.TOP_KEYS, *(f"(0040,0100)[0].{k}" for k in cpu_client.SPS_KEYS)]
    given = {m.split("=")[0] for m in match}
    args = ["findscu", "-W", "-aec", AET]
    for key in keys:
        if key not in given:
            args += ["-k", key]
    for m in match:
        args += ["-k", m]
    return [*args, "127.0.0.1", str(port)]


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=CLIENT_ENV, capture_output=True, timeout=300)
        times.append((time.perf_counter() - start) * 1000)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-300:]}")
    return times


def interleaved(
    commands: dict[str, list[str]], repeats: dict[str, int]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time the servers' commands in turn, run after run, so that both see the same machine
    (a shared 2-core machine drifts over minutes); a server with fewer repeats runs on
    every k-th turn. Also the client process's own CPU milliseconds per run."""
    rounds = max(repeats.values())
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(rounds):
        for name, cmd in commands.items():
            if i % max(1, rounds // repeats[name]) == 0 and len(times[name]) < repeats[name]:
                before = children_cpu()
                times[name] += timed(cmd, 1)
                cpu[name].append((children_cpu() - before) * 1000)
    return times, cpu


def count_responses(cmd: list[str]) -> int:
    out = subprocess.run(
        [*cmd[:1], "-v", *cmd[1:]], env=CLIENT_ENV, capture_output=True, timeout=300
    )
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    if "Final Find Response (Success)" not in text:
        raise RuntimeError(f"query did not succeed: {text[-500:]}")
    return text.count("Find Response:") - text.count("Final Find Response")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children so far
    (/proc/PID/stat; wlmscpfs forks a child per association)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the DCMTK clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def concurrent_rate(
    cmd: list[str], clients: int, seconds: float, server_pid: int | None = None
) -> tuple[float, float, float]:
    """Queries per second from ``clients`` client processes at once, with the server's
    and the clients' CPU milliseconds per query (the clients share the cores with it)."""
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    children0 = children_cpu()
    done = [0] * clients
    deadline = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < deadline:
            subprocess.run(cmd, env=CLIENT_ENV, capture_output=True, timeout=300)
            done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, queries = time.monotonic() - started, max(1, sum(done))
    server_ms = ((cpu_seconds(server_pid) - server0) * 1000 / queries) if server_pid else 0.0
    client_ms = (children_cpu() - children0) * 1000 / queries
    return queries / elapsed, server_ms, client_ms


# --- MPPS clients -------------------------------------------------------------------------------

MPPS_TIMEOUT = 30  # seconds: connection, association, each response, idle


def _mpps_worker(port: int, called: str, seconds: float, index: int, out) -> None:
    """Full MPPS cycles (PS3.4 F.7: N-CREATE IN PROGRESS, N-SET, N-SET COMPLETED), one
    association each, until ``seconds`` have passed: (cycles, failures) on ``out``. Each
    step is checked before the next is sent (cpu_client.run_mpps_steps); a failed cycle
    is reported on stderr. pynetdicom's AE with its requestor race fixed
    (client/pynetdicom_race.py); connection, association and each response bounded by
    MPPS_TIMEOUT."""
    from pydicom.uid import generate_uid
    from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

    from worklist_mpps.client.messages import (
        Instance,
        ScheduledStep,
        Series,
        n_create,
        n_set_completed,
        n_set_progress,
    )
    from worklist_mpps.client.pynetdicom_race import RequestorAE

    ae = RequestorAE(ae_title=f"MOD{index:02d}")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = MPPS_TIMEOUT
    ae.connection_timeout = MPPS_TIMEOUT
    ae.add_requested_context(MPPS)
    cycles, failures = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        uid, study, series = generate_uid(), generate_uid(), generate_uid()
        images = [Instance("1.2.840.10008.5.1.4.1.1.2", generate_uid()) for _ in range(3)]
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            failures += 1
            print(f"MPPS client MOD{index:02d}: association refused", file=sys.stderr)
            continue
        create = n_create(
            [ScheduledStep(study, f"X{index}")],
            modality="CT",
            station_ae_title=f"MOD{index:02d}",
            patient_name="Müller^Hans",
        )
        failed = None
        try:
            cpu_client.run_mpps_steps(
                assoc,
                uid,
                create,
                n_set_progress([Series(series, images[:1])]),
                n_set_completed([Series(series, images)]),
            )
        except RuntimeError as exc:
            failed = str(exc)
        if assoc.is_established:
            assoc.release()
        if failed:
            failures += 1
            print(f"MPPS client MOD{index:02d} to {called}: {failed}", file=sys.stderr)
        else:
            cycles += 1
    out.put((cycles, failures))


def mpps_cycles(port: int, called: str, clients: int, seconds: float) -> tuple[int, int]:
    """(full cycles, failures) from ``clients`` processes each cycling for ``seconds`` (the
    clock starts in each worker, after its start-up)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_mpps_worker, args=(port, called, seconds, i, queue))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def mpps_rates(
    servers: dict[str, tuple[int, str]], clients: int, seconds: float, rounds: int = 3
) -> dict[str, tuple[float, int]]:
    """MPPS cycles per second and failures of each server, measured in turn over
    ``rounds`` slices so that both see the same machine (disk latency drifts)."""
    totals = {name: [0, 0] for name in servers}
    for _ in range(rounds):
        for name, (port, called) in servers.items():
            cycles, failures = mpps_cycles(port, called, clients, seconds / rounds)
            totals[name][0] += cycles
            totals[name][1] += failures
    return {name: (cycles / seconds, failures) for name, (cycles, failures) in totals.items()}


# --- one size -----------------------------------------------------------------------------------


def stats(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def run_size(n: int, args: argparse.Namespace, work: Path) -> dict:
    today = dt.date.today()
    folder = work / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pairs = generate.make_items(n, today)
    url = f"sqlite:///{folder / 'worklist.db'}"
    t0 = time.perf_counter()
    db = Database(url)
    migrate.upgrade(db.engine)
    generate.bulk_load(db, pairs)
    db.dispose()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate.export_wl(pairs, folder / "wl" / AET)
    export_s = time.perf_counter() - t0
    print(f"N={n}: loaded in {load_s:.1f} s, .wl files in {export_s:.1f} s", flush=True)

    ours_port, wl_port, ref_port = free_port(), free_port(), free_port()
    hl7_port, mllp_ref_port = free_port(), free_port()
    feed = args.hl7 and n == max(int(x) for x in args.sizes.split(","))  # at the largest N
    ours = wl = ref = mllp_ref = None
    result: dict = {"n": n, "load_s": load_s}
    try:
        ours = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worklist_mpps",
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                str(ours_port),
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
                *(("--hl7-enabled", "true", "--hl7-port", str(hl7_port)) if feed else ()),
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "serve.log", "w"),
        )
        wl = subprocess.Popen(
            ["wlmscpfs", "-dfp", str(folder / "wl"), str(wl_port)],
            env=CLIENT_ENV,
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(ours_port, ours)
        wait_port(wl_port, wl)
        day = today.strftime("%Y%m%d")
        selective = (
            "(0040,0100)[0].Modality=CT",
            "(0040,0100)[0].ScheduledStationAETitle=CT01",
            f"(0040,0100)[0].ScheduledProcedureStepStartDate={day}",
        )
        broad = (f"(0040,0100)[0].ScheduledProcedureStepStartDate={day}",)
        wl_repeat = args.repeat if n <= 10_000 else max(3, args.repeat // 10)
        ports = {"ours": ours_port, "wlmscpfs": wl_port}
        pids = {"ours": ours.pid, "wlmscpfs": wl.pid}
        repeats = {"ours": args.repeat, "wlmscpfs": wl_repeat}
        for port in ports.values():
            timed(echo_cmd(port), 3)  # warm up
        for figure, make in (
            ("echo", echo_cmd),
            ("selective", lambda port: find_cmd(port, *selective)),
            ("broad", lambda port: find_cmd(port, *broad)),
        ):
            times, cpu = interleaved({name: make(port) for name, port in ports.items()}, repeats)
            for name in ports:
                result[f"{name}_{figure}"] = stats(times[name])
                result[f"{name}_{figure}_client_cpu"] = statistics.median(cpu[name])
        for name, port in ports.items():
            result[f"{name}_selective_count"] = count_responses(find_cmd(port, *selective))
            result[f"{name}_broad_count"] = count_responses(find_cmd(port, *broad))
            seconds = args.duration if name == "ours" or n <= 10_000 else args.duration / 2
            result[f"{name}_qps"], result[f"{name}_server_cpu"], result[f"{name}_client_cpu"] = (
                concurrent_rate(find_cmd(port, *selective), args.clients, seconds, pids[name])
            )
            print(
                f"  {name}: {result[f'{name}_echo'][0]:.1f} ms echo, "
                f"{result[f'{name}_selective'][0]:.1f} ms selective "
                f"({result[f'{name}_selective_count']}), {result[f'{name}_broad'][0]:.1f} ms "
                f"broad ({result[f'{name}_broad_count']}), {result[f'{name}_qps']:.1f} q/s "
                f"(CPU per query: server {result[f'{name}_server_cpu']:.1f} ms, client "
                f"{result[f'{name}_client_cpu']:.1f} ms)",
                flush=True,
            )
        result["rss_mb"] = rss_mb(ours.pid)
        stop(wl)
        wl = None
        if args.mpps:
            ref = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "reference_mpps_scp.py"), str(ref_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_port(ref_port, ref)
            rates = mpps_rates(
                {"ours": (ours_port, AET), "ref": (ref_port, "REFMPPS")},
                args.clients,
                args.duration,
            )
            result["ours_mpps"], result["ref_mpps"] = rates["ours"], rates["ref"]
            print(
                f"  MPPS cycles/s: ours {result['ours_mpps'][0]:.1f} (failures "
                f"{result['ours_mpps'][1]}), in-memory reference {result['ref_mpps'][0]:.1f}",
                flush=True,
            )
        if feed:
            mllp_ref = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "reference_mllp.py"), str(mllp_ref_port)]
            )
            wait_port(mllp_ref_port, mllp_ref)
            result["feed"] = hl7_feed.measure(
                hl7_port, mllp_ref_port, find_cmd(ours_port, *selective), CLIENT_ENV, args.duration
            )
            print("  " + hl7_feed.describe(result["feed"]), flush=True)
        result["rss_mb_after"] = rss_mb(ours.pid)
    finally:
        for proc in (ours, wl, ref, mllp_ref):
            stop(proc)
    if args.ui and n == max(int(x) for x in args.sizes.split(",")):
        # the Today view (issue 15) on this database, once the figures above are taken:
        # 1,000 of its items moved to one day, some with MPPS
        day = ui_today.bench_day()
        facts = ui_today.prepare(url, day)
        result["ui"] = {**ui_today.measure(url, folder, day), **facts}
        print("  " + ui_today.describe(result["ui"]), flush=True)
    return result


# --- report -------------------------------------------------------------------------------------


def header(args: argparse.Namespace) -> str:
    echoscu = subprocess.run(["echoscu", "--version"], capture_output=True, text=True)
    dcmtk_version = echoscu.stdout.splitlines()[0]
    lines = [
        "# Benchmark results",
        "",
        f"- date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- DCMTK: {dcmtk_version}",
        f"- workload: {generate.PER_DAY} steps/day on {len(generate.STATIONS)} stations; N items "
        "= N/200 days (40 % past); selective = modality CT + station CT01 + today; broad = "
        "all of today",
        f"- repeats: {args.repeat} per figure, the two servers measured in turn "
        "(wlmscpfs at 100,000: a tenth); concurrency: "
        f"{args.clients} clients for {args.duration:g} s; clients with TCP_NODELAY=1",
        f"- command: `python bench/run.py {' '.join(sys.argv[1:])}` (`make bench`: "
        f"`--write bench/RESULTS.md`); end-to-end N: {args.sizes}; server-CPU N: "
        f"{args.cpu_sizes}, servers {args.servers}",
    ]
    return "\n".join(lines)


def report(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        header(args),
        "",
        "| N | server | C-ECHO median / p95 ms | selective median / p95 ms (matches) "
        "| broad median / p95 ms (matches) | selective q/s, 8 clients |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for name in ("ours", "wlmscpfs"):
            e, s, b = r[f"{name}_echo"], r[f"{name}_selective"], r[f"{name}_broad"]
            lines.append(
                f"| {r['n']:,} | {'worklist-mpps' if name == 'ours' else 'wlmscpfs'} "
                f"| {e[0]:.1f} / {e[1]:.1f} | {s[0]:.1f} / {s[1]:.1f} "
                f"({r[name + '_selective_count']}) | {b[0]:.1f} / {b[1]:.1f} "
                f"({r[name + '_broad_count']}) | {r[name + '_qps']:.1f} |"
            )
    lines += [
        "",
        "| N | selective / own C-ECHO | selective / wlmscpfs C-ECHO | broad: wlmscpfs / "
        "ours | C-ECHO ours / wlmscpfs | MPPS cycles/s ours / reference (ratio) "
        "| RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mpps = r.get("ours_mpps"), r.get("ref_mpps")
        mpps_text = (
            f"{mpps[0][0]:.1f} / {mpps[1][0]:.1f} ({mpps[0][0] / mpps[1][0]:.2f})"
            if all(mpps)
            else "-"
        )
        lines.append(
            f"| {r['n']:,} | {r['ours_selective'][0] / r['ours_echo'][0]:.2f} "
            f"| {r['ours_selective'][0] / r['wlmscpfs_echo'][0]:.2f} "
            f"| {r['wlmscpfs_broad'][0] / r['ours_broad'][0]:.1f}x "
            f"| {r['ours_echo'][0] / r['wlmscpfs_echo'][0]:.2f} | {mpps_text} "
            f"| {max(r['rss_mb'], r['rss_mb_after']):.0f} |"
        )
    lines += [
        "",
        "The client's own CPU per run (median ms; DCMTK start-up, then reading and "
        "printing the responses): the part of each figure no server can remove.",
        "",
        "| N | server | C-ECHO | selective | broad |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for name in ("ours", "wlmscpfs"):
            lines.append(
                f"| {r['n']:,} | {'worklist-mpps' if name == 'ours' else 'wlmscpfs'} | "
                + " | ".join(
                    f"{r[f'{name}_{fig}_client_cpu']:.0f}" for fig in ("echo", "selective", "broad")
                )
                + " |"
            )
    lines += [
        "",
        "CPU per selective query during the 8-client run: the server's, and the DCMTK "
        "client processes' (start-up included), which share the cores with it. The "
        "clients alone cap the rate at cores x 1000 / client ms.",
        "",
        "| N | server | server CPU ms / query | client CPU ms / query | client-bound ceiling q/s |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for name in ("ours", "wlmscpfs"):
            ceiling = (
                (os.cpu_count() or 1) * 1000 / r[f"{name}_client_cpu"]
                if r[f"{name}_client_cpu"]
                else float("nan")
            )
            lines.append(
                f"| {r['n']:,} | {'worklist-mpps' if name == 'ours' else 'wlmscpfs'} "
                f"| {r[name + '_server_cpu']:.1f} | {r[name + '_client_cpu']:.1f} "
                f"| {ceiling:.0f} |"
            )
    feeds = [r for r in results if r.get("feed")]
    if feeds:
        lines += [
            "",
            "HL7 order feed (issue 14): new orders (ORM^O01 NW) from 4 MLLP connections, each "
            "committed before its ACK; the reference is python-hl7's own MLLP server answering "
            "AA without storing; C-FIND = the selective findscu, alone and back to back during "
            "a second run of the feed (whose rate under that load is the last column: the "
            "findscu processes take about one of the two cores).",
            "",
            "| N | orders/s ours | ACK median / p95 ms | orders/s reference (ratio) "
            "| C-FIND idle / during feed ms (ratio) | orders/s, p95 ms during the C-FIND run |",
            "|---|---|---|---|---|---|",
        ]
        for r in feeds:
            f, o, ref = r["feed"], r["feed"]["ours"], r["feed"]["reference"]
            lines.append(
                f"| {r['n']:,} | {o['rate']:.0f} | {o['median']:.1f} / {o['p95']:.1f} "
                f"| {ref['rate']:.0f} ({o['rate'] / ref['rate']:.2f}) "
                f"| {f['find_idle']:.1f} / {f['find_during']:.1f} "
                f"({f['find_during'] / f['find_idle']:.2f}) "
                f"| {f['loaded']['rate']:.0f}, {f['loaded']['p95']:.1f} |"
            )
    lines += [
        "",
        "## Targets (issues 7, 14 and 15), from this run",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for text, value, ok in targets(results):
        lines.append(f"| {text} | {value} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines) + "\n"


def targets(results: list[dict]) -> list[tuple[str, str, bool]]:
    by_n = {r["n"]: r for r in results}
    out = []
    if 100_000 in by_n:
        r = by_n[100_000]
        floor = min(r["ours_echo"][0], r["wlmscpfs_echo"][0])
        ratio = r["ours_selective"][0] / floor
        out.append(
            (
                "selective query at 100,000 <= 1.5 x the C-ECHO floor (fastest C-ECHO of the run)",
                f"{r['ours_selective'][0]:.1f} ms = {ratio:.2f} x {floor:.1f} ms",
                ratio <= 1.5,
            )
        )
        out.append(
            (
                ">= 60 selective queries/s, 8 clients, 100,000 items",
                f"{r['ours_qps']:.1f} q/s",
                r["ours_qps"] >= 60,
            )
        )
    if 10_000 in by_n:
        r = by_n[10_000]
        ratio = r["wlmscpfs_broad"][0] / r["ours_broad"][0]
        out.append(
            ("broad query at 10,000 >= 10 x faster than wlmscpfs", f"{ratio:.1f} x", ratio >= 10)
        )
    for n, r in sorted(by_n.items()):
        ratio = r["ours_echo"][0] / r["wlmscpfs_echo"][0]
        out.append((f"C-ECHO <= 1.2 x wlmscpfs's (N={n:,})", f"{ratio:.2f} x", ratio <= 1.2))
        if r.get("ours_mpps") and r.get("ref_mpps"):
            ratio = r["ours_mpps"][0] / r["ref_mpps"][0]
            out.append(
                (
                    f"MPPS cycles/s >= 0.8 x in-memory reference (N={n:,})",
                    f"{ratio:.2f} x",
                    ratio >= 0.8,
                )
            )
        if f := r.get("feed"):
            o = f["ours"]
            out += [
                (
                    f">= 200 orders/s over 4 MLLP connections (issue 14, N={n:,})",
                    f"{o['rate']:.0f} /s ({o['refused']} not AA)",
                    o["rate"] >= 200 and not o["refused"],
                ),
                (f"ACK p95 < 50 ms (N={n:,})", f"{o['p95']:.1f} ms", o["p95"] < 50),
                (
                    f"C-FIND during the feed <= 1.5 x idle (N={n:,})",
                    f"{f['find_during'] / f['find_idle']:.2f} x",
                    f["find_during"] <= 1.5 * f["find_idle"],
                ),
            ]
        if u := r.get("ui"):
            out.append(
                (
                    f"Today view, {u['rows']:,} rows of {u['items']:,} items: server time "
                    f"< {ui_today.TARGET_MS:.0f} ms (issue 15; median of {u['repeat']})",
                    f"median {u['server'][0]:.0f} ms (p95 {u['server'][1]:.0f} ms)",
                    u["server"][0] < ui_today.TARGET_MS,
                )
            )
        rss = max(r["rss_mb"], r["rss_mb_after"])
        out.append((f"resident memory < 200 MB (N={n:,})", f"{rss:.0f} MB", rss < 200))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--no-mpps", dest="mpps", action="store_false")
    parser.add_argument("--no-hl7", dest="hl7", action="store_false", help="no order-feed figure")
    parser.add_argument("--no-ui", dest="ui", action="store_false", help="no Today view figure")
    parser.add_argument(
        "--no-e2e", dest="e2e", action="store_false", help="no DCMTK end-to-end figures"
    )
    parser.add_argument("--no-cpu", dest="cpu", action="store_false", help="no server-CPU figures")
    parser.add_argument(
        "--cpu-sizes",
        default="10000,100000,1000000",
        help="N for the server-CPU figures (1000000: about 14 min, half of it the two loads)",
    )
    parser.add_argument(
        "--servers",
        default="sqlite,postgres,wlmscpfs,orthanc",
        help="server-CPU servers (ours = sqlite,postgres)",
    )
    parser.add_argument("--cpu-batches", type=int, default=5, help="batches per figure")
    parser.add_argument("--cpu-max-n", type=int, default=300, help="most operations per batch")
    parser.add_argument(
        "--cpu-batch-s", type=float, default=0.5, help="server CPU seconds a batch aims at"
    )
    parser.add_argument(
        "--peer-max-n", type=int, default=100_000, help="largest N for wlmscpfs and Orthanc"
    )
    parser.add_argument(
        "--idle-s", type=float, default=3.0, help="seconds of idle CPU read per server"
    )
    parser.add_argument("--keep-schema", action="store_true", help="keep PostgreSQL schemas")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "work"))
    parser.add_argument("--write", metavar="FILE", help="write the tables (bench/RESULTS.md)")
    args = parser.parse_args()
    args.servers = ",".join(
        dict.fromkeys(
            part
            for name in args.servers.split(",")
            for part in (("sqlite", "postgres") if name == "ours" else (name,))
        )
    )
    args.cpu_seconds = args.duration
    # a TERM (or an INT, ignored by background jobs otherwise) unwinds: servers stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for tool in ("echoscu", "findscu", "wlmscpfs"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} missing: install DCMTK (make system-tools)", file=sys.stderr)
            return 2
    started = time.monotonic()
    work = Path(args.workdir)
    text = ""
    if args.e2e:
        results = [run_size(int(n), args, work) for n in args.sizes.split(",")]
        text = report(results, args)
    if args.cpu:
        t0 = time.monotonic()
        section = machine.Section()
        section.start()
        cpu = [cpu_run.run_size(int(n), args, work) for n in args.cpu_sizes.split(",")]
        reading = section.stop()
        if not text:
            text = header(args) + "\n"
        text += "\n" + cpu_report.report(cpu, time.monotonic() - t0, args.clients, reading)
    text += f"\nWhole run: {(time.monotonic() - started) / 60:.1f} min.\n"
    print()
    print(text)
    if args.write:
        Path(args.write).write_text(text + RESULTS_NOTES)
    return 0


RESULTS_NOTES = """
## Reading the figures

- Server CPU per operation (issue 18): utime + stime of the server process from
  /proc/PID/stat around batches of operations sent by one pynetdicom client process
  (bench/cpu_client.py), divided by the batch size, median of the batches; wlmscpfs's
  forked children included (reaped or not), PostgreSQL backends apart ("DB"). Clock
  ticks are 10 ms, so a batch aims at 0.5 s of server CPU. CPU time still varies
  with what else the machine runs (shared caches and cores).
- End-to-end tables: every figure is a whole client process. `echoscu` / `findscu`
  start-up (loading the DICOM dictionary) is most of a C-ECHO; the server's own share
  is a few milliseconds. The two servers are timed in turn, run after run, so that a
  shared machine's drift touches both alike.
- Our queries do not grow with N: one indexed SQL query, while wlmscpfs reads every
  .wl file on every query (x10 per x10 N).
- The C-FIND responses leave through a fast path (worklist_mpps/dimse/pynetdicom_ext/wire.py): each
  response is encoded from the row straight to one P-DATA-TF PDU and written in batches,
  instead of pydicom encoding a command set and an identifier per response. A broad query
  is then mostly the client's own work: findscu reads and decodes every response.
- pynetdicom's association threads wait for work instead of polling
  (worklist_mpps/dimse/pynetdicom_ext/reactor.py): no 1 ms poll per PDU hop, no idle CPU.
- Queries per second from 8 concurrent clients are bounded by the 2 cores that the 8
  DCMTK client processes share with the server: the CPU table gives each side's cost
  per query and the ceiling the clients alone allow. Our server is one Python process
  (one core at a time for Python code); wlmscpfs forks a process per association.
- Today view (issue 15): the server's own log line for `GET /?date=...` (from the
  request's arrival to its response, the session lookup included), 20 requests after 3 to
  warm up, one logged-in session; 1,000 of the run's items moved to one day, 400 of them
  with MPPS (bench/ui_today.py). Three SQL queries whatever the number of rows; most of
  the time is the template drawing 1,000 rows.
- MPPS: each cycle is one association with N-CREATE, N-SET (progress), N-SET
  COMPLETED; ours commits every change with `synchronous=FULL` before answering, the
  reference keeps a dict.
"""

if __name__ == "__main__":
    sys.exit(main())
