"""The operator page's login, session cookie, CSRF protection and offline assets (issue 15
deliverable 1), over plain HTTP and in Debian's headless chromium.

- the page answers at / in the HTTP listener; without a session: the login form (303);
- the login form takes the configured credentials and sets an HttpOnly, SameSite=Strict
  cookie; a logout ends the session on the server;
- every form post carries the session's CSRF token; a cross-site form post is refused;
- the cookie never authenticates the API or DICOMweb (they keep needing Authorization);
- /docs and every asset load from this server only (works on a network with no internet).
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from browser import (
    PASSWORD,
    USER,
    log_in,
    login_env,
    screenshot,
)
from conftest import LiveServer

TIMEOUT = 10
VENDOR = Path(__file__).resolve().parent.parent / "worklist_mpps" / "web" / "static" / "vendor"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("ui-auth")
    live = LiveServer(workdir, f"sqlite:///{workdir / 'ui.db'}", env=login_env())
    live.start()
    try:
        yield live
    finally:
        live.stop()


def session_for(server: LiveServer) -> tuple[requests.Session, str]:
    """A logged-in HTTP client and its CSRF token (read from the page, as a browser does)."""
    client = requests.Session()
    rsp = client.post(
        server.http_url + "/ui/login",
        data={"username": USER, "password": PASSWORD, "next": "/"},
        timeout=TIMEOUT,
    )
    assert rsp.status_code == 200, rsp.text[:300]  # followed the 303 to /
    match = re.search(r'name="csrf" value="([^"]+)"', rsp.text)
    assert match, rsp.text[:500]
    return client, match.group(1)


def test_without_a_session_the_page_is_the_login_form(server):
    rsp = requests.get(
        server.http_url + "/?date=2026-12-01", allow_redirects=False, timeout=TIMEOUT
    )
    assert rsp.status_code == 303
    assert rsp.headers["location"] == "/ui/login?next=/%3Fdate%3D2026-12-01"
    for path in ("/ui/problems", "/docs", "/ui/items/1"):
        rsp = requests.get(server.http_url + path, allow_redirects=False, timeout=TIMEOUT)
        assert rsp.status_code == 303, path
    login = requests.get(server.http_url + "/ui/login", timeout=TIMEOUT)
    assert login.status_code == 200
    assert 'id="password"' in login.text
    assert "default-src 'self'" in login.headers["content-security-policy"]
    # a write without a session: refused, nothing done
    rsp = requests.post(
        server.http_url + "/ui/logout", data={"csrf": "x"}, allow_redirects=False, timeout=TIMEOUT
    )
    assert rsp.status_code == 401


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(server):
    rsp = requests.post(
        server.http_url + "/ui/login",
        data={"username": USER, "password": PASSWORD, "next": "/?date=2026-12-02"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert rsp.status_code == 303
    assert rsp.headers["location"] == "/?date=2026-12-02"
    cookie = rsp.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    token = rsp.cookies["wm_session"]
    page_ = requests.get(server.http_url + "/", cookies={"wm_session": token}, timeout=TIMEOUT)
    assert page_.status_code == 200
    assert USER in page_.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page_.text).group(1)
    out = requests.post(
        server.http_url + "/ui/logout",
        data={"csrf": csrf},
        cookies={"wm_session": token},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert out.status_code == 303
    # the old cookie is worth nothing now, on this and every instance (the row is gone)
    again = requests.get(
        server.http_url + "/", cookies={"wm_session": token}, allow_redirects=False, timeout=TIMEOUT
    )
    assert again.status_code == 303
    assert "login" in server.log()


def test_wrong_credentials_are_refused_and_the_form_is_throttled(tmp_path):
    server = LiveServer(tmp_path, f"sqlite:///{tmp_path / 'throttle.db'}", env=login_env()).start()
    try:
        _throttled(server)
    finally:
        server.stop()


def _throttled(server: LiveServer) -> None:
    client = requests.Session()
    wrong = client.post(
        server.http_url + "/ui/login",
        data={"username": USER, "password": "not-the-password"},
        timeout=TIMEOUT,
    )
    assert wrong.status_code == 401
    assert "Wrong user name, password or token" in wrong.text
    assert "wm_session" not in client.cookies
    for _ in range(12):
        last = client.post(
            server.http_url + "/ui/login", data={"username": "x", "password": "y"}, timeout=TIMEOUT
        )
    assert last.status_code == 429
    # now even the right password waits: the form is no faster an oracle than the header
    right = client.post(
        server.http_url + "/ui/login",
        data={"username": USER, "password": PASSWORD},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert right.status_code == 429
    # the API with the header is not throttled, and the server keeps serving
    api = requests.get(
        server.http_url + "/api/worklist-items", auth=(USER, PASSWORD), timeout=TIMEOUT
    )
    assert api.status_code == 200


def test_login_redirect_stays_on_this_site(server):
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        rsp = requests.post(
            server.http_url + "/ui/login",
            data={"username": USER, "password": PASSWORD, "next": target},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        assert rsp.status_code == 303
        assert rsp.headers["location"] == "/", target


def test_form_posts_need_the_sessions_csrf_token(tmp_path):
    live = LiveServer(tmp_path, f"sqlite:///{tmp_path / 'csrf.db'}", env=login_env()).start()
    try:
        client, csrf = session_for(live)
        url = live.http_url + "/ui/logout"
        for data in ({"other": "1"}, {"csrf": ""}, {"csrf": csrf[:-2] + "xx"}, {"csrf": "é" * 40}):
            rsp = client.post(url, data=data, allow_redirects=False, timeout=TIMEOUT)
            assert rsp.status_code == 403, data
            assert "CSRF" in rsp.text
        # another origin: refused before any route, token or not
        rsp = client.post(
            url,
            data={"csrf": csrf},
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        assert rsp.status_code == 403
        # a form post must be a form: JSON or text to /ui/ is 415
        rsp = client.post(url, json={"csrf": csrf}, allow_redirects=False, timeout=TIMEOUT)
        assert rsp.status_code == 415
        # still logged in after all that; the right token logs out
        assert (
            client.get(live.http_url + "/", allow_redirects=False, timeout=TIMEOUT).status_code
            == 200
        )
        rsp = client.post(url, data={"csrf": csrf}, allow_redirects=False, timeout=TIMEOUT)
        assert rsp.status_code == 303
        assert "Traceback" not in live.log()
    finally:
        live.stop()


def test_the_cookie_does_not_authenticate_the_api_or_dicomweb(server):
    client, _ = session_for(server)
    for path in ("/api/worklist-items", "/modality-scheduled-procedure-steps"):
        rsp = client.get(server.http_url + path, timeout=TIMEOUT)
        assert rsp.status_code == 401, path
    # the OpenAPI document is the page's (the /docs Swagger UI reads it with the cookie)
    assert client.get(server.http_url + "/openapi.json", timeout=TIMEOUT).status_code == 200


def test_basic_auth_header_also_opens_the_page(server):
    rsp = requests.get(server.http_url + "/", auth=(USER, PASSWORD), timeout=TIMEOUT)
    assert rsp.status_code == 200
    assert "wm_session" in rsp.cookies  # its forms need a CSRF token, so a session
    bad = requests.get(server.http_url + "/", auth=(USER, "wrong"), timeout=TIMEOUT)
    assert bad.status_code == 401


def test_hostile_form_bodies_and_cookies_get_4xx(server):
    client, csrf = session_for(server)
    url = server.http_url + "/ui/logout"
    not_utf8 = client.post(
        url, data=b"csrf=\xff\xfe", headers=FORM, allow_redirects=False, timeout=TIMEOUT
    )
    assert not_utf8.status_code == 400
    many = "&".join(f"f{i}=1" for i in range(1000)) + f"&csrf={csrf}"
    rsp = client.post(url, data=many, headers=FORM, allow_redirects=False, timeout=TIMEOUT)
    assert rsp.status_code == 400
    assert "more than" in rsp.text
    for cookie in ("x" * 4000, "\x7f", "a;b", ""):
        rsp = requests.get(
            server.http_url + "/",
            headers={"Cookie": f"wm_session={cookie}"},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        assert rsp.status_code == 303, cookie[:20]
    assert client.get(server.http_url + "/", timeout=TIMEOUT).status_code == 200
    assert "Traceback" not in server.log()


def test_sessions_expire(tmp_path):
    live = LiveServer(
        tmp_path,
        f"sqlite:///{tmp_path / 'exp.db'}",
        "--http-session-hours",
        "0.0005",  # 1.8 s
        env=login_env(),
    ).start()
    try:
        client, _ = session_for(live)
        deadline = time.monotonic() + 15
        status = 200
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get(
                live.http_url + "/", allow_redirects=False, timeout=TIMEOUT
            ).status_code
        assert status == 303
    finally:
        live.stop()


def test_loopback_without_authentication_still_guards_forms(tmp_path):
    """No credentials configured (the loopback default): the page opens directly, and its
    forms still carry a per-session CSRF token."""
    live = LiveServer(tmp_path, f"sqlite:///{tmp_path / 'open.db'}").start()
    try:
        client = requests.Session()
        rsp = client.get(live.http_url + "/", timeout=TIMEOUT)
        assert rsp.status_code == 200
        assert "wm_session" in client.cookies
        assert (
            client.get(
                live.http_url + "/ui/login", allow_redirects=False, timeout=TIMEOUT
            ).status_code
            == 303
        )
        rsp = client.post(live.http_url + "/ui/logout", data={"csrf": "guess"}, timeout=TIMEOUT)
        assert rsp.status_code == 403
    finally:
        live.stop()


def test_vendored_assets_are_the_pinned_files():
    """scripts/vendor-assets.sh wrote them from the npm registry; nothing is fetched at
    install or run time, and the files are the ones SHA256SUMS names."""
    listed = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    assert {
        "htmx/htmx.min.js",
        "swagger-ui/swagger-ui-bundle.js",
        "swagger-ui/swagger-ui.css",
    } <= set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    versions = (VENDOR / "VERSIONS").read_text()
    assert "htmx.org 2." in versions


# --- in the browser ---------------------------------------------------------------------


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """Another site's page that posts a form to the server as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<html><body><form id="f" method="post" action="{self.target}">'
            '<input name="csrf" value="guessed"></form>'
            '<script>document.getElementById("f").submit()</script></body></html>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_browser_logs_in_and_a_cross_site_form_post_is_refused(server, page):
    log_in(page, server.http_url)
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["wm_session"]["httpOnly"] is True
    assert cookies["wm_session"]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script can read the session

    _AttackerPage.target = server.http_url + "/ui/logout"
    attacker = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _AttackerPage)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        # 127.0.0.2 is another site than 127.0.0.1 (a host, not a registrable domain)
        # only the forged POST: the logged-in page's own late requests (its favicon) are
        # answered too, and must not be taken for it
        forged = _AttackerPage.target
        with page.expect_response(
            lambda r: r.url == forged and r.request.method == "POST"
        ) as answer:
            page.goto(f"http://127.0.0.2:{attacker.server_address[1]}/")
        assert answer.value.status == 403
    finally:
        attacker.shutdown()
        attacker.server_close()
    # still logged in: the forged logout did nothing
    page.goto(server.http_url + "/")
    assert page.url == server.http_url + "/"
    assert page.locator("form.who").inner_text().strip().startswith(USER)


def test_docs_load_nothing_from_other_sites(server, page):
    log_in(page, server.http_url)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server.http_url + "/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    assert "worklist-mpps" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() > 10  # the API's operations are listed
    foreign = [u for u in requested if not u.startswith((server.http_url, "data:"))]
    assert foreign == []
    screenshot(page, "docs")


def test_the_page_loads_nothing_from_other_sites(server, page):
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server.http_url + "/")  # the login form
    page.wait_for_selector("#password")
    screenshot(page, "login")
    log_in(page, server.http_url)
    page.wait_for_load_state("networkidle")
    foreign = [u for u in requested if not u.startswith((server.http_url, "data:"))]
    assert foreign == []
    assert any(u.endswith("/static/vendor/htmx/htmx.min.js") for u in requested)
    assert page.evaluate("typeof htmx") == "object"


def test_sessions_are_bounded(db, monkeypatch):
    """Clients that never keep their cookie cannot grow the sessions table without end:
    beyond MAX_SESSIONS the oldest sessions go (their users log in again)."""
    from worklist_mpps.services import web_sessions

    monkeypatch.setattr(web_sessions, "MAX_SESSIONS", 5)
    tokens = [web_sessions.create(db, f"u{i}", "127.0.0.1", 1 + i / 100)[0] for i in range(8)]
    alive = [t for t in tokens if web_sessions.lookup(db, t) is not None]
    assert alive == tokens[3:]
    web_sessions.end(db, tokens[-1])
    assert web_sessions.lookup(db, tokens[-1]) is None
    assert web_sessions.lookup(db, "x" * 500) is None
