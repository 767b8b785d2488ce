"""Issue 18's figures: server CPU per operation for each server and N, ratios, targets.

Called by bench/run.py (``make bench``); the servers are measured one after the
other on the same items (bench/generate.py): worklist-mpps on SQLite ("sqlite") and
on PostgreSQL ("postgres"), DCMTK wlmscpfs and Orthanc's worklist plugin on the same
.wl files (peers only up to --peer-max-n: each of their queries reads every file).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import cpu_servers
import generate
import machine
import server_cpu
from cpu_servers import AET, Server
from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database

SERVERS = ("sqlite", "postgres", "wlmscpfs", "orthanc")
NAMES = {
    "sqlite": "worklist-mpps, SQLite",
    "postgres": "worklist-mpps, PostgreSQL",
    "wlmscpfs": "wlmscpfs (fork)",
    "orthanc": "Orthanc 1.10 worklist plugin",
}
PEER_OPS = ("echo_assoc", "find_open", "find_assoc", "broad_open")
OUR_OPS = (*PEER_OPS, "mpps")
# bench/pause_watch.py's phases, after the CPU figures: the server idle, each
# operation from one client, then 8 clients at once (server_cpu.PAUSE_MIX)
PAUSE_PHASES = ("idle", *OUR_OPS, "mixed")


def measure_pauses(server: Server, args, day: str) -> dict:
    """{phase: the watchdog's figures} over ``args.pause_s`` seconds each (0: none)."""
    seconds = getattr(args, "pause_s", 5.0)
    out: dict = {}
    if not seconds or server.pauses is None:
        return out
    for phase in PAUSE_PHASES:
        fig = server_cpu.pause_phase(server, day, None if phase == "idle" else phase, seconds)
        out[phase] = fig
        print(
            f"    {server.name} pauses, {phase}: longest {fig['pause_max_ms']:.1f} ms "
            f"(late {fig['late_max_ms']:.1f} ms, in-process {fig['in_process_max_ms']:.1f} "
            f"ms), p99.9 {fig['pause_p999_ms']:.2f} ms, longest GC pass "
            f"{max(fig['gc_max_ms'].values()):.1f} ms",
            flush=True,
        )
    return out


def load_postgres(pairs: list) -> tuple[str, str, float]:
    """(schema, url, seconds) of a fresh schema loaded in bulk (COPY), ending with the
    ANALYZE the YAML loader runs after a bulk load (services/loader.py)."""
    schema = cpu_servers.new_pg_schema()
    url = cpu_servers.pg_url(schema)
    t0 = time.perf_counter()
    db = Database(url)
    migrate.upgrade(db.engine)
    generate.bulk_load(db, pairs)
    db.dispose()
    return schema, url, time.perf_counter() - t0


def pg_analyzed(schema: str) -> bool:
    """Whether worklist_items has statistics yet (pg_stat_user_tables)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(cpu_servers.PG_BASE)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL "
                "FROM pg_stat_user_tables WHERE schemaname = :s AND relname = 'worklist_items'"
            ),
            {"s": schema},
        ).scalar()
    engine.dispose()
    return bool(row)


def pg_cancel(app_name: str) -> None:
    """Cancel the statements the server's backends are still running (pg_cancel_backend)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(cpu_servers.PG_BASE, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :a AND state = 'active'"
            ),
            {"a": app_name},
        )
    engine.dispose()


def pg_analyze(schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(cpu_servers.PG_BASE, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'ANALYZE "{schema}".worklist_items'))
        conn.execute(text(f'ANALYZE "{schema}".patients'))
    engine.dispose()


def reusable(wl: Path, n: int, today: dt.date) -> bool:
    """Whether bench/run.py's end-to-end run left the same n items' .wl files, written
    today (their dates are relative to the day they were made)."""
    lock = wl / AET / "lockfile"
    if not lock.exists() or dt.date.fromtimestamp(lock.stat().st_mtime) != today:
        return False
    return sum(1 for _ in (wl / AET).glob("*.wl")) == n


def measure_server(server: Server, ops: tuple[str, ...], args, day: str, out: dict) -> None:
    """Every operation of ``ops`` into ``out`` (op -> Figure), then the 8-client rate."""
    backends = server_cpu.Backends(server.app_name) if server.app_name else None
    client = server_cpu.ClientProc(server, day)
    try:
        if "idle" not in out:  # what the server spends with no client at all, per second
            cpu0, t0 = server_cpu.server_cpu(server), time.monotonic()
            time.sleep(args.idle_s)
            idle = server_cpu.server_cpu(server) - cpu0
            out["idle"] = idle * 1000 / (time.monotonic() - t0)
        for op in ops:
            fig = server_cpu.measure(
                client, server, op, args.cpu_max_n, args.cpu_batches, backends, args.cpu_batch_s
            )
            out[op] = fig
            print(f"    {server.name} {op}: {fig.server_ms:.2f} ms", end="", flush=True)
            print(f" + DB {fig.db_ms:.2f} ms" if fig.db_ms is not None else "", end="")
            print(f" (n={fig.n}, matches {fig.matches})", flush=True)
    finally:
        client.close()
        if backends:
            backends.close()


def run_size(n: int, args, work: Path) -> dict:
    """Figures of every selected server at ``n`` items: {server: {op: Figure, ...}}."""
    today = dt.date.today()
    day = today.strftime("%Y%m%d")
    folder = work / f"cpu-n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    pairs = generate.make_items(n, today)
    result: dict = {"n": n, "skipped": {}, "load_s": {}}
    print(f"CPU N={n}: {n:,} items made in {time.perf_counter() - t0:.1f} s", flush=True)
    servers = [s for s in args.servers.split(",") if s]
    peers = [s for s in servers if s in ("wlmscpfs", "orthanc")]
    if peers and n > args.peer_max_n:
        for s in peers:
            result["skipped"][s] = (
                f"N > {args.peer_max_n:,}: each query reads every .wl file "
                "(seconds of CPU per query at 100,000)"
            )
        peers = []
    wl = folder / "wl"
    if peers:
        t0 = time.perf_counter()
        if not reusable(work / f"n{n}" / "wl", n, today):
            generate.export_wl(pairs, wl / AET)
        else:
            wl = work / f"n{n}" / "wl"
        result["load_s"]["wl"] = time.perf_counter() - t0
    for name in servers:
        if name in result["skipped"]:
            continue
        figures: dict = {}
        server = None
        schema = None
        try:
            if name == "sqlite":
                url = f"sqlite:///{folder / 'worklist.db'}"
                t0 = time.perf_counter()
                db = Database(url)
                migrate.upgrade(db.engine)
                generate.bulk_load(db, pairs)
                db.dispose()
                result["load_s"][name] = time.perf_counter() - t0
                server = cpu_servers.start_ours(name, url, folder)
            elif name == "postgres":
                schema, url, result["load_s"][name] = load_postgres(pairs)
                server = cpu_servers.start_ours(name, url, folder, app_name=f"wmbench-{schema}")
                figures["analyzed_before"] = pg_analyzed(schema)
            elif name == "wlmscpfs":
                server = cpu_servers.start_wlmscpfs(wl, folder)
            elif name == "orthanc":
                server = cpu_servers.start_orthanc(wl / AET, folder)
            else:
                raise SystemExit(f"unknown server {name!r}; choose among {', '.join(SERVERS)}")
            took = result["load_s"].get(name, result["load_s"].get("wl", 0.0))
            print(f"  {NAMES[name]} (items loaded / .wl files written in {took:.1f} s)", flush=True)
            # how fast the machine is right now: it drifts within a run (bench/machine.py)
            figures["machine_ms"] = machine.reference_ms()
            print(f"    machine: reference workload {figures['machine_ms']:.1f} ms", flush=True)
            if name == "postgres" and schema:
                # right after the bulk load (which ends with the loader's ANALYZE), then
                # after a manual ANALYZE (issue 18); a plan that never ends is a figure
                # too: the server drops the association at its network timeout
                fresh: dict = {"idle": 0.0}
                try:
                    measure_server(server, ("find_open",), args, day, fresh)
                    figures["find_open_fresh"] = fresh["find_open"]
                except RuntimeError as exc:
                    figures["find_open_fresh"] = f"failed ({exc})"[:200]
                    print(f"    postgres fresh selective query: {exc}", flush=True)
                    pg_cancel(f"wmbench-{schema}")  # its statement may still be running
                pg_analyze(schema)
            ops = OUR_OPS if name in ("sqlite", "postgres") else PEER_OPS
            measure_server(server, ops, args, day, figures)
            if name in ("sqlite", "postgres"):
                figures["pauses"] = measure_pauses(server, args, day)
            if name in ("sqlite", "postgres") and args.clients:
                figures["qps"] = server_cpu.rate(server, day, args.clients, args.cpu_seconds)
                print(
                    f"    {name}: {figures['qps'][0]:.0f} q/s with {args.clients} clients "
                    f"({figures['qps'][1]:.2f} ms server CPU per query)",
                    flush=True,
                )
        except Exception as exc:  # noqa: BLE001 - one server failing keeps the others' figures
            result["skipped"][name] = f"failed: {type(exc).__name__}: {exc}"[:300]
            print(f"  {name}: {result['skipped'][name]}", flush=True)
        finally:
            if server is not None:
                cpu_servers.stop(server)
            if schema and not args.keep_schema:
                cpu_servers.drop_pg_schema(schema)
        result[name] = figures
    return result
