"""Headless Chromium for the operator page tests: Debian's ``chromium`` driven by
Playwright's Python API (``executable_path``; Playwright's own browser download is never
used), and a server with a login.

Tests that need the browser skip with the reason when Debian's chromium is missing
(``make test`` installs it as root: scripts/install-system-tools.sh).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent
USER = "frontdesk"
PASSWORD = "correct-horse-battery-staple"  # >= 16 characters, like a real deployment
# README screenshots: `make screenshots` sets WM_SCREENSHOTS=docs/screenshots
SCREENSHOTS = Path(os.environ.get("WM_SCREENSHOTS") or ROOT / "build" / "screenshots")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # root in CI; the page under test is our own
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no connection attempts to Google's hosts
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """One Chromium for the session; each test takes its own context (cookies apart)."""
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


def login_env() -> dict[str, str]:
    """The server's credentials, from the environment (never on a command line)."""
    return {"WORKLIST_MPPS_HTTP_USERNAME": USER, "WORKLIST_MPPS_HTTP_PASSWORD": PASSWORD}


def start_ui_server(workdir: Path, database_url: str | None = None, *extra: str) -> LiveServer:
    """A server with a login (user name and password) and no sample data unless asked."""
    url = database_url or f"sqlite:///{workdir / 'ui.db'}"
    return LiveServer(workdir, url, *extra, env=login_env()).start()


def log_in(page, base_url: str, user: str = USER, password: str = PASSWORD) -> None:
    """Through the login form, as a person would; lands on Today."""
    page.goto(base_url + "/")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")


def screenshot(page, name: str) -> Path:
    """A PNG of the page for the README (docs/screenshots with `make screenshots`)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
