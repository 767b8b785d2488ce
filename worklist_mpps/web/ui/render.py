"""Rendering the operator page: Jinja2 templates (autoescaped), its security headers,
the session every page holds (for its CSRF token) and the form posts.

Stack (issue 15): server-rendered HTML from the package's templates, plain form posts
with redirect-after-post, and one vendored script, htmx (web/static/vendor), for the
rows that refresh themselves. Nothing is built at install time and nothing is loaded
from another site: the Content-Security-Policy allows this origin only.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from worklist_mpps import __version__
from worklist_mpps.services import web_sessions
from worklist_mpps.web.auth import COOKIE
from worklist_mpps.web.context import web_context
from worklist_mpps.web.errors import HTTPProblem

FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 200
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
NAV = (("today", "/", "Today"), ("problems", "/ui/problems", "Problems"), ("docs", "/docs", "API"))

templates = Environment(
    loader=PackageLoader("worklist_mpps.web", "templates"),
    autoescape=select_autoescape(("html",), default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def dicom_name(value: str | None) -> str:
    """A DICOM PN for people: family^given^middle^prefix^suffix, alphabetic group first
    (PS3.5 6.2.1.2); the ideographic/phonetic groups follow in brackets."""
    if not value:
        return ""
    groups = value.split("=")

    def one(group: str) -> str:
        parts = group.split("^")
        family, given = ([*parts, "", ""])[:2]
        rest = " ".join(p for p in parts[2:] if p)
        first = " ".join(x for x in (given, rest) if x)
        # "Family, Given" in Latin script; CJK names are written family first, no comma
        joint = " " if any(ord(c) >= 0x2E80 for c in family) else ", "
        return joint.join(p for p in (family, first) if p)

    first = one(groups[0]) or next((one(g) for g in groups[1:] if g), "")
    others = [one(g) for g in groups[1:] if g and one(g) != first]
    return first + (f" ({' / '.join(others)})" if others else "")


def dicom_date(value: str | None) -> str:
    """YYYYMMDD as YYYY-MM-DD (ISO 8601), anything else as given."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def dicom_time(value: str | None) -> str:
    """HHMM[SS[.F]] as HH:MM[:SS]."""
    if not value or not value[:4].isdigit():
        return value or ""
    text = f"{value[:2]}:{value[2:4]}"
    return text + (f":{value[4:6]}" if len(value) >= 6 and value[4:6] != "00" else "")


def dicom_datetime(value: str | None) -> str:
    """YYYYMMDDHHMM[SS] as YYYY-MM-DD HH:MM[:SS]."""
    if not value:
        return ""
    return f"{dicom_date(value[:8])} {dicom_time(value[8:])}".strip()


templates.filters.update(
    {"pn": dicom_name, "da": dicom_date, "tm": dicom_time, "dt": dicom_datetime}
)


def ensure_login(request: Request) -> tuple[web_sessions.Login, str | None]:
    """The request's login, and a new cookie token when it had none: a page reached with
    the Authorization header, or with no authentication configured (loopback), gets a
    session too, so its forms carry a CSRF token like every other."""
    login = getattr(request.state, "login", None)
    if login is not None:
        return login, None
    ctx = web_context(request)
    user = request.state.user or "local"
    client = request.client.host if request.client else None
    token, login = web_sessions.create(ctx.db, user, client, ctx.config.http_session_hours)
    request.state.login = login
    return login, token


def set_session_cookie(request: Request, response: Any, token: str) -> None:
    """HttpOnly (no script reads it), SameSite=Strict (no other site's request carries
    it), Secure behind HTTPS; it lasts as long as the session."""
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(web_context(request).config.http_session_hours * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A whole page: the layout (base.html) around ``template``."""
    login, token = ensure_login(request)
    cfg = web_context(request).config
    html = templates.get_template(template).render(
        user=request.state.user or login.user,
        csrf=login.csrf,
        nav=NAV,
        path=request.url.path,
        today=date.today().strftime("%Y%m%d"),
        version=__version__,
        refresh_seconds=cfg.ui_refresh_seconds,
        auth_configured=cfg.http_auth_configured,
        **values,
    )
    response = HTMLResponse(html, status, headers=PAGE_HEADERS)
    if token:
        set_session_cookie(request, response, token)
    return response


def fragment(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """Part of a page (htmx swaps it in): no layout, no new session."""
    html = templates.get_template(template).render(**values)
    return HTMLResponse(html, status, headers=PAGE_HEADERS)


def redirect(location: str) -> RedirectResponse:
    """Redirect after a successful post (303: the browser follows with a GET)."""
    return RedirectResponse(location, 303, headers={"Cache-Control": "no-store"})


def local_path(target: str | None, default: str = "/") -> str:
    """A redirect target that stays on this site (a path, never //host or a scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return quote(target, safe="/?=&%:+,;@-._~")


async def form(request: Request) -> dict[str, str]:
    """A form post's fields, after its CSRF token is checked against the session's.

    The middleware has already refused another origin (403) and any other Content-Type
    (415); the token stops what those checks cannot see (OWASP: synchronizer token).
    """
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise HTTPProblem(400, "the form is not UTF-8") from None
    except ValueError:
        raise HTTPProblem(400, f"the form has more than {MAX_FORM_FIELDS} fields") from None
    fields = dict(pairs)
    login = getattr(request.state, "login", None)
    if not web_sessions.csrf_ok(login, fields.get("csrf") or request.headers.get("x-csrf-token")):
        raise HTTPProblem(
            403, "the form's CSRF token is missing or not this session's: reload the page"
        )
    return fields


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A refusal or error on a page path, as a page with the message (not JSON)."""
    html = templates.get_template("error.html").render(
        status=status,
        message=message,
        nav=NAV,
        user=None,
        path=request.url.path,
        csrf="",
        version=__version__,
        refresh_seconds=0,
        auth_configured=False,
        today=date.today().strftime("%Y%m%d"),
    )
    return HTMLResponse(html, status, headers=PAGE_HEADERS)
