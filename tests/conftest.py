"""Shared fixtures: databases (SQLite, and PostgreSQL where it answers) and live servers."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from worklist_mpps.db import migrate
from worklist_mpps.db.engine import Database

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "worklist.yaml"
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_BASE = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float = 30.0, interval: float = 0.2):
    """Poll ``check`` until it returns a truthy value (bounded in time): that value, else
    AssertionError naming the check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    if value := check():
        return value
    raise AssertionError(f"not within {timeout} s: {check}")


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return port_open(PG_HOST, PG_PORT)


def _pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema of database 'test', dropped afterwards."""
    if not port_open(PG_HOST, PG_PORT):
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} (trust auth, db 'test')")
    schema = "wm_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """Each database test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'worklist.db'}"
    else:
        yield from _pg_schema_url()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _pg_schema_url()


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request, tmp_path) -> Iterator[str]:
    """One database for every server of a test: a SQLite file, or a fresh PostgreSQL
    schema migrated first (``serve`` migrates SQLite only)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    pg = request.getfixturevalue("pg_url")
    upgrade = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "db", "upgrade", "--database-url", pg],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    yield pg


@pytest.fixture
def db(db_url) -> Iterator[Database]:
    database = Database(db_url)
    migrate.upgrade(database.engine)
    yield database
    database.dispose()


# --- live servers ---------------------------------------------------------------------


# pynetdicom installs console scripts named like DCMTK's tools (findscu, echoscu,
# storescu...) into the venv's bin: with the venv activated they come first on PATH and
# answer a DCMTK command line with an argparse error. Tests call DCMTK, so the venv's bin
# leaves PATH here, for every test and subprocess (the server and dicom-mpps run as
# ``sys.executable -m ...``); dcmtk() below also refuses anything but DCMTK's own tool.
VENV_BIN = Path(sys.executable).parent
os.environ["PATH"] = os.pathsep.join(
    p
    for p in os.environ.get("PATH", "").split(os.pathsep)
    if p and Path(p).resolve() != VENV_BIN.resolve()
)


@functools.cache
def _find_dcmtk(name: str) -> str | None:
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = Path(folder) / name
        if (
            not candidate.is_file()
            or not os.access(candidate, os.X_OK)
            or candidate.resolve().parent == VENV_BIN.resolve()
        ):
            continue
        try:
            said = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, timeout=10
            )
        except OSError:
            continue
        if "dcmtk" in (said.stdout + said.stderr).lower():
            return str(candidate)
    return None


def dcmtk(name: str) -> str:
    """The absolute path of DCMTK's ``name`` (never pynetdicom's script of that name)."""
    path = _find_dcmtk(name)
    if path is None:
        pytest.skip(
            f"DCMTK {name} not installed (Debian package dcmtk; 'make test' installs it as root)"
        )
    return path


def require_tool(name: str) -> str:
    """A DCMTK tool the test needs (skips without it): see dcmtk()."""
    return dcmtk(name)


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--dimse-fast-path",
        choices=("on", "off"),
        default="on",
        help="off: every live server runs with --dimse-fast-path false (pynetdicom's own "
        "reactors and encoding); make test runs the dimse-marked tests both ways",
    )


def pytest_configure(config) -> None:
    LiveServer.fast_path = config.getoption("--dimse-fast-path") == "on"


class LiveServer:
    """A ``worklist-mpps serve`` subprocess on a loopback port, stopped by PID."""

    fast_path = True  # --dimse-fast-path=off: every server starts with dimse_fast_path false

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        *extra: str,
        env: dict | None = None,
        port: int | None = None,
    ):
        self.workdir = workdir
        self.database_url = database_url
        self.extra = list(extra)
        self.env = env or {}
        self.port = port or free_port()
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.hl7_port = free_port()  # the MLLP port, with --hl7-enabled true
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"serve-{self.port}.log"

    def start(self, timeout: float = 20.0) -> LiveServer:
        cmd = [
            sys.executable,
            "-m",
            "worklist_mpps",
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http-bind",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--database-url",
            self.database_url,
            *self.extra,
        ]
        if "--hl7-enabled" in self.extra and "--hl7-port" not in self.extra:
            cmd += ["--hl7-bind", "127.0.0.1", "--hl7-port", str(self.hl7_port)]
        if not self.fast_path and "--dimse-fast-path" not in self.extra:
            cmd += ["--dimse-fast-path", "false"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKLIST_MPPS_")}
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            if self._ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not listen within {timeout}s:\n{self.log()}")

    def _ready(self) -> bool:
        """/healthz reports the DICOM listener without taking one of its association
        slots (a bare TCP connection holds one until the ACSE timeout)."""
        if "--http-enabled" in self.extra:
            return port_open("127.0.0.1", self.port, 0.2)
        if not port_open("127.0.0.1", self.http_port, 0.2):
            return False
        import urllib.request

        try:
            with urllib.request.urlopen(self.http_url + "/healthz", timeout=2) as rsp:
                return rsp.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # a server that does not stop: its threads' stacks into its log first
            # (serve registers SIGUSR1 with faulthandler), then SIGKILL
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(1)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def live_server(tmp_path) -> Iterator:
    """Factory: live_server(database_url=None, *extra_flags) -> started LiveServer."""
    servers: list[LiveServer] = []

    def start(
        database_url: str | None = None,
        *extra: str,
        env: dict | None = None,
        port: int | None = None,
    ) -> LiveServer:
        url = database_url or f"sqlite:///{tmp_path / 'live.db'}"
        server = LiveServer(tmp_path, url, *extra, env=env, port=port)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@contextlib.contextmanager
def module_server(tmp_path_factory, name: str, *extra: str) -> Iterator[LiveServer]:
    """A server on its own SQLite file for a whole test module, stopped at the end."""
    workdir = tmp_path_factory.mktemp(name)
    live = LiveServer(workdir, f"sqlite:///{workdir / (name + '.db')}", *extra)
    live.start()
    try:
        yield live
    finally:
        live.stop()


# --- the operator page's browser (tests/browser.py) -------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """One Chromium for the session; each test takes its own context (cookies apart)."""
    from browser import CHROMIUM_FLAGS, chromium_path

    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh browser context (no cookies) at 1366x768, English, the machine's zone."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-GB")
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def wheelhouse() -> Iterator[Path]:
    """scripts/build-wheelhouse.sh's folder (the locked dependencies and this checkout's
    wheel, for offline installs), built once per test run inside the checkout (the Docker
    build context; .dockerignore lets build/wheelhouse* in) and removed afterwards. The
    three deployment tests install from it; skipped when no package index answers."""
    folder = ROOT / "build" / f"wheelhouse-test-{os.getpid()}"
    started = time.monotonic()
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-wheelhouse.sh"), str(folder)],
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if built.returncode != 0:
        pytest.skip(
            f"the wheelhouse cannot be built here (no package index?): {built.stderr[-400:]}"
        )
    print(f"\n[wheelhouse] built in {time.monotonic() - started:.1f} s")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory):
    """A database holding the sample data (tests/data), for a module's tests that read it."""
    from worklist_mpps.db import migrate
    from worklist_mpps.db.engine import Database
    from worklist_mpps.services.loader import load_file

    db = Database(f"sqlite:///{tmp_path_factory.mktemp('sample') / 'w.db'}")
    migrate.upgrade(db.engine)
    load_file(db, SAMPLE)
    yield db
    db.dispose()
